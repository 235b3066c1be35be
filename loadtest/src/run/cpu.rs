//! CPU time of the services under test, from `/proc/<pid>/stat` (Linux): user plus system time
//! in clock ticks, read at a phase's start and end. Divided by the messages the phase handled it
//! is what one message costs each process, a figure that does not depend on what else shares
//! the machine (a rate does).

use std::collections::BTreeMap;

use super::rss::Service;

/// The processes a message passes through; the query API's CPU goes to the dashboards, not to
/// the messages, so it has no per-message figure.
const ON_THE_MESSAGE_PATH: [&str; 2] = ["ingest", "endpoint"];

/// `utime + stime` in clock ticks of each service that is running, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks(pub BTreeMap<String, u64>);

impl CpuTicks {
    /// Reads every service on the message path.
    pub fn read(services: &[Service]) -> Self {
        Self(
            services
                .iter()
                .filter(|s| ON_THE_MESSAGE_PATH.contains(&s.name.as_str()))
                .filter_map(|s| {
                    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid)).ok()?;
                    Some((s.name.clone(), parse_stat_ticks(&stat)?))
                })
                .collect(),
        )
    }

    /// Microseconds of CPU per message between `self` (the start) and `end`, for each service
    /// read at both ends; nothing when no message was handled.
    pub fn us_per_message(
        &self,
        end: &CpuTicks,
        ticks_per_sec: u64,
        messages: u64,
    ) -> BTreeMap<String, f64> {
        if messages == 0 || ticks_per_sec == 0 {
            return BTreeMap::new();
        }
        self.0
            .iter()
            .filter_map(|(name, &start)| {
                let used = end.0.get(name)?.checked_sub(start)?;
                let us = used as f64 * 1e6 / ticks_per_sec as f64;
                Some((name.clone(), us / messages as f64))
            })
            .collect()
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name come field 3 (state) ... field 13; utime is the 12th, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`); the kernel's USER_HZ, 100 on every Linux this
/// runs on, which is the fallback when `getconf` cannot be run.
pub fn ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(name: &str, utime: u64, stime: u64) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        format!("4242 ({name}) S 1 4242 4242 0 -1 4194560 900 0 3 0 {utime} {stime} 7 8 20 0 9")
    }

    #[test]
    fn reads_user_plus_system_ticks_past_an_awkward_name() {
        assert_eq!(
            parse_stat_ticks(&stat_line("flowhouse", 150, 50)),
            Some(200)
        );
        // A name with spaces and a ')' must not shift the fields.
        assert_eq!(parse_stat_ticks(&stat_line("a) b (c", 7, 3)), Some(10));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn microseconds_per_message_from_two_samples() {
        let start = CpuTicks(BTreeMap::from([
            ("ingest".to_string(), 1_000),
            ("endpoint".to_string(), 500),
        ]));
        // The endpoint is gone at the end: no figure for it rather than a wrong one.
        let end = CpuTicks(BTreeMap::from([("ingest".to_string(), 1_250)]));
        // 250 ticks at 100 per second = 2.5 s = 2,500,000 us over 10,000 messages = 250 us.
        let per = start.us_per_message(&end, 100, 10_000);
        assert_eq!(per.len(), 1);
        assert!((per["ingest"] - 250.0).abs() < 1e-9);
        // The same ticks at 1000 per second are ten times less CPU.
        assert!((start.us_per_message(&end, 1000, 10_000)["ingest"] - 25.0).abs() < 1e-9);
        assert!(start.us_per_message(&end, 100, 0).is_empty());
    }

    #[test]
    fn reads_this_process_and_skips_the_query_api() {
        let me = std::process::id();
        let services = [
            Service {
                name: "ingest".into(),
                pid: me,
            },
            Service {
                name: "query-api".into(),
                pid: me,
            },
        ];
        let ticks = CpuTicks::read(&services);
        assert_eq!(ticks.0.keys().collect::<Vec<_>>(), ["ingest"]);
        assert!(ticks_per_sec() > 0);
    }
}
