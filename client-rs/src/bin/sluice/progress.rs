//! Progress bars, drawn on stderr only when stderr is a terminal, so that
//! scripts and logs never see control sequences.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Transfers smaller than this finish before a bar would tell anything.
const LARGE_TRANSFER: u64 = 16 << 20;

/// A byte-count bar of `total` bytes labelled `label`.
pub fn bytes_bar(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// A bar for a single transfer: hidden below [`LARGE_TRANSFER`].
pub fn transfer_bar(total: u64, label: &str) -> ProgressBar {
    if total < LARGE_TRANSFER {
        ProgressBar::hidden()
    } else {
        bytes_bar(total, label)
    }
}
