//! The `sluice` command-line tool as a child process.

use std::path::Path;
use std::process::Output;

use crate::daemon::bin;

/// Runs `sluice <args>` in `cwd` (this process's own when `None`), with no
/// `SLUICE_ADDRESS` from the environment; killed if the test drops it.
pub async fn sluice_in(cwd: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin("sluice"));
    cmd.args(args)
        .env_remove("SLUICE_ADDRESS")
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().await.expect("run sluice")
}

/// The stdout of a run that succeeded; fails the test, showing stderr,
/// if it did not.
pub fn stdout_of(output: Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "sluice failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// As [`stdout_of`], as text.
pub fn text_of(output: Output) -> String {
    String::from_utf8(stdout_of(output)).expect("utf-8 output")
}
