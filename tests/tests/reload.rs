//! SIGHUP on a real `sluiced`: the configuration is read again; what can
//! change safely (the operation log on/off) is applied, the rest is
//! reported as needing a restart, and a broken file changes nothing.

use std::path::Path;
use std::time::Duration;

use sluice_client::Client;
use sluice_tests::daemon::DaemonProcess;

const WAIT: Duration = Duration::from_secs(20);

fn write_config(path: &Path, oplog: &Path, enabled: bool, extra: &str) {
    let text = format!(
        "[oplog]\nenabled = {enabled}\npath = \"{}\"\n{extra}",
        oplog.display()
    );
    std::fs::write(path, text).unwrap();
}

/// The `[oplog]` files' text, decompressed.
fn oplog_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".zst") {
            text.push_str(&sluice_oplog::read::to_string(&path).unwrap());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_what_it_can_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    let logs = dir.path().join("oplog");
    let oplog = logs.join("ops.csv.zst");
    write_config(&config, &oplog, false, "");
    let mut d = DaemonProcess::spawn(&["--config", config.to_str().unwrap()]);
    for name in ["before.bin", "after.bin"] {
        std::fs::write(d.root.join(name), vec![5u8; 10_000]).unwrap();
    }
    let uri = |name: &str| format!("file://{}/{name}", d.root.display());
    let client = Client::connect(&d.address()).await.unwrap();
    client
        .read_to_bytes(&uri("before.bin"), None)
        .await
        .unwrap();

    // The log on, and a key that needs a restart.
    write_config(
        &config,
        &oplog,
        true,
        "[cache]\nmemory_budget = \"96MiB\"\n",
    );
    d.signal(libc::SIGHUP);
    let log = d.wait_log("take effect only after a restart", WAIT);
    let applied = log
        .lines()
        .find(|l| l.contains("SIGHUP: applied"))
        .unwrap_or_else(|| panic!("no applied line: {log}"));
    assert!(applied.contains("oplog.enabled"), "{applied}");
    let restart = log
        .lines()
        .find(|l| l.contains("only after a restart"))
        .unwrap();
    assert!(restart.contains("cache.memory_budget"), "{restart}");
    assert!(!restart.contains("oplog.enabled"), "{restart}");
    client.read_to_bytes(&uri("after.bin"), None).await.unwrap();

    // A file that does not load changes nothing; the daemon serves on.
    std::fs::write(&config, "[cache]\nno_such_key = 1\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("the configuration does not load", WAIT);
    assert_eq!(client.stat(&uri("after.bin")).await.unwrap().size, 10_000);

    // Flushed at exit: the read after the reload is in the log, the one
    // before it is not.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(WAIT).success());
    let text = oplog_text(&logs);
    assert!(text.contains("after.bin"), "{text}");
    assert!(!text.contains("before.bin"), "{text}");
}
