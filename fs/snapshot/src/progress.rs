//! Progress bars with throughput, drawn only on a terminal (indicatif hides them otherwise).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `total` bytes of `what`.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
