//! Progress bars for long work: indicatif bars with rate and ETA on a terminal, silent when
//! stderr is not a terminal (CI, logs, tests).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` units of `unit` (e.g. "img", "doc", "step"), titled `what`.
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!(
        "{{prefix:>8}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("static progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
