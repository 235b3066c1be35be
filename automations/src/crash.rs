//! Failpoints: where the evaluator stops as if killed, right after one step of a firing
//! (`crate::lease` names the steps). They exist for the crash tests only:
//!
//! - in-process (`tests/tests/automations.rs`): the round returns [`Crashed`] and the test
//!   drops the evaluator;
//! - process-level (`tests/tests/automations_process.rs`): `flowhouse automations serve` reads
//!   [`CRASH_AT_VAR`] once at start and calls `std::process::abort()` at that step, so that
//!   nothing of the process survives but what it wrote to ClickHouse and sent to the receiver.
//!
//! Unset (always, outside those tests), no failpoint exists and nothing here runs.

/// `decided`, `sent` or `acknowledged`: `flowhouse automations serve` aborts right after that
/// step of its first firing (for the crash test).
pub const CRASH_AT_VAR: &str = "FLOWHOUSE_AUTOMATIONS_CRASH_AT";

/// A step of a firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashAt {
    /// The decision (state with the pending delivery) is written; nothing sent.
    Decided,
    /// The actions are sent; the acknowledgement is not written.
    Sent,
    /// The acknowledgement is written.
    Acknowledged,
}

impl CrashAt {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "decided" => CrashAt::Decided,
            "sent" => CrashAt::Sent,
            "acknowledged" => CrashAt::Acknowledged,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("crashed on purpose at {0:?}")]
pub struct Crashed(pub CrashAt);

/// A failpoint at one step: the round returns [`Crashed`] (in-process) or the process aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failpoint {
    pub at: CrashAt,
    pub abort: bool,
}

impl Failpoint {
    pub fn in_process(at: CrashAt) -> Self {
        Self { at, abort: false }
    }

    /// The process-level failpoint of [`CRASH_AT_VAR`], if set; an unknown step is an error
    /// (a crash test that silently never crashes would prove nothing).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(CRASH_AT_VAR) {
            Err(_) => Ok(None),
            Ok(text) => match CrashAt::parse(&text) {
                Some(at) => Ok(Some(Self { at, abort: true })),
                None => {
                    anyhow::bail!("{CRASH_AT_VAR}={text:?}: expected decided, sent or acknowledged")
                }
            },
        }
    }

    /// Whether the evaluator stops after `step`: true for an in-process failpoint there; a
    /// process-level one never returns.
    pub fn reached(failpoint: Option<Self>, step: CrashAt) -> bool {
        match failpoint {
            Some(f) if f.at == step && f.abort => {
                eprintln!("{CRASH_AT_VAR}: aborting after {step:?}");
                std::process::abort()
            }
            Some(f) => f.at == step,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_by_name_and_only_the_chosen_step_stops_an_in_process_evaluator() {
        assert_eq!(CrashAt::parse("sent"), Some(CrashAt::Sent));
        assert_eq!(CrashAt::parse("Sent"), None);
        let f = Some(Failpoint::in_process(CrashAt::Sent));
        assert!(Failpoint::reached(f, CrashAt::Sent));
        assert!(!Failpoint::reached(f, CrashAt::Decided));
        assert!(!Failpoint::reached(None, CrashAt::Acknowledged));
    }
}
