//! Live progress bars on stderr (hidden when stderr is not a terminal, or when disabled).

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of bars drawn together.
#[derive(Clone, Debug)]
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    pub fn hidden() -> Self {
        Self::new(false)
    }

    /// A bar counting towards `total` (or a spinner counting up when the total is unknown),
    /// with its rate.
    pub fn counter(&self, label: &str, total: Option<u64>, unit: &str) -> ProgressBar {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>10}} [{{elapsed_precise}}] {{bar:30.cyan/blue}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>10}} [{{elapsed_precise}}] {{spinner}} {{human_pos}} {unit} ({{per_sec}}) {{msg}}"
                ))
                .expect("a valid template"),
            ),
        };
        let bar = self.multi.add(bar);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}
