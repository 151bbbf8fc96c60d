//! Secrets stay secret: distinctive credential values are given to real
//! `sluiced` processes (environment and config file), a run hits each error
//! path — S3 refusing the signature, missing objects and buckets, bad
//! ranges, paths outside the roots, overlong URIs, malformed requests,
//! config errors — and no output stream of the daemon or of the `sluice`
//! CLI ever carries one of the values.

use std::process::{Command, Output, Stdio};

use sluice_tests::daemon::{DaemonProcess, bin};
use sluice_tests::s3server::{ACCESS_KEY, S3Server, SECRET_KEY};

/// A secret key the S3 server does not know: every signed request fails.
const WRONG_SECRET: &str = "wRoNgSeCrEt-7d41f0c2b9e8a6";
/// A session token: sent as a request header, so it must stay out of logs.
const SESSION_TOKEN: &str = "SeSsIoNtOkEn-3a9c5e7b1d2f48";

/// Runs the CLI against `daemon` and returns everything it printed.
fn sluice(daemon: &DaemonProcess, args: &[&str]) -> (bool, String) {
    let out: Output = Command::new(bin("sluice"))
        .arg("--address")
        .arg(daemon.address())
        .args(args)
        .env_remove("SLUICE_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} printed a secret:\n{text}");
    }
}

fn config_file(dir: &std::path::Path, s3: &S3Server, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sluiced.toml");
    let toml = format!(
        "[storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n\
         max_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n{extra}\n\
         [log]\nlevel = \"debug\"\n",
        s3.endpoint_url()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Every error path the CLI can reach, against one daemon.
fn exercise(daemon: &DaemonProcess, bucket: &str, secrets: &[&str]) -> Vec<(bool, String)> {
    let file = |rel: &str| format!("file://{}/{rel}", daemon.root.display());
    std::fs::write(daemon.root.join("ok"), b"local bytes").unwrap();
    let long = format!("s3://{bucket}/{}", "k".repeat(5000));
    let upload = daemon.root.join("upload.bin");
    std::fs::write(&upload, vec![7u8; 100_000]).unwrap();
    let runs: Vec<Vec<String>> = vec![
        vec!["cat".into(), format!("s3://{bucket}/present")],
        vec!["stat".into(), format!("s3://{bucket}/present")],
        vec!["stat".into(), format!("s3://{bucket}/missing")],
        vec!["cat".into(), format!("s3://no-such-bucket-here/x")],
        vec!["ls".into(), "-r".into(), format!("s3://{bucket}/")],
        vec![
            "get".into(),
            format!("s3://{bucket}/present"),
            "-".into(),
            "--offset".into(),
            "999999".into(),
            "--length".into(),
            "5".into(),
        ],
        vec![
            "put".into(),
            upload.display().to_string(),
            format!("s3://{bucket}/uploaded"),
        ],
        vec!["rm".into(), format!("s3://{bucket}/missing")],
        vec!["rm".into(), "-r".into(), format!("s3://{bucket}/")],
        vec!["cat".into(), long],
        vec!["cat".into(), "gopher://x/y".into()],
        vec!["cat".into(), "file:///etc/passwd".into()],
        vec!["cat".into(), file("missing")],
        vec!["cat".into(), file("ok")],
        vec![
            "cat".into(),
            "s3://169.254.169.254:80/latest/meta-data".into(),
        ],
    ];
    runs.iter()
        .map(|args| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, text) = sluice(daemon, &args);
            assert_clean(&format!("sluice {}", args.join(" ")), &text, secrets);
            (ok, text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_stream_carries_a_secret() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("secrets").await;
    let name = bucket.bucket().to_owned();
    let dir = tempfile::tempdir().unwrap();

    // The right credentials, from the environment: reads succeed; the
    // secret key must appear nowhere.
    let config = config_file(dir.path(), &s3, "");
    let config_arg = config.display().to_string();
    let good = DaemonProcess::spawn_with_env(
        &["--config", &config_arg, "--log-level", "debug"],
        &[
            ("SLUICE_STORAGE__S3__ACCESS_KEY_ID", ACCESS_KEY),
            ("SLUICE_STORAGE__S3__SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
    let present = format!("s3://{name}/present");
    std::fs::write(good.root.join("seed"), b"s3 bytes").unwrap();
    let (ok, text) = sluice(
        &good,
        &[
            "put",
            &good.root.join("seed").display().to_string(),
            &present,
        ],
    );
    assert!(ok, "{text}");
    let runs = exercise(&good, &name, &[SECRET_KEY]);
    assert!(
        runs[0].0,
        "the object is served with the right key: {}",
        runs[0].1
    );
    assert!(
        runs.iter().filter(|(ok, _)| !ok).count() >= 8,
        "error paths were hit"
    );
    good.signal(libc::SIGTERM);
    let mut good = good;
    good.wait_exit(std::time::Duration::from_secs(30));
    assert_clean("sluiced (right key)", &good.log(), &[SECRET_KEY]);

    // A wrong secret and a session token: every S3 request is refused with
    // the signature error, at debug log level.
    let config = config_file(
        dir.path(),
        &s3,
        &format!("secret_access_key = \"{WRONG_SECRET}\"\nsession_token = \"{SESSION_TOKEN}\""),
    );
    let config_arg = config.display().to_string();
    let bad = DaemonProcess::spawn_with_env(
        &["--config", &config_arg, "--log-level", "debug"],
        &[("SLUICE_STORAGE__S3__ACCESS_KEY_ID", ACCESS_KEY)],
    );
    let secrets = [WRONG_SECRET, SESSION_TOKEN];
    let runs = exercise(&bad, &name, &secrets);
    assert!(!runs[0].0, "a wrong secret cannot read");
    assert!(
        runs[0].1.to_lowercase().contains("permission denied")
            || runs[0].1.to_lowercase().contains("denied"),
        "{}",
        runs[0].1
    );
    let check = Command::new(bin("sluiced"))
        .args(["check-config", "--config", &config_arg])
        .env_remove("SLUICE_ADDRESS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("redacted"), "{text}");
    assert_clean("sluiced check-config", &text, &secrets);
    bad.signal(libc::SIGTERM);
    let mut bad = bad;
    bad.wait_exit(std::time::Duration::from_secs(30));
    let log = bad.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging was on"
    );
    assert_clean("sluiced (wrong key)", &log, &secrets);

    // Config errors about secret keys: wrong types, a TOML syntax error on
    // the secret's own line.
    for (toml, env) in [
        (
            format!("[storage.s3]\nsecret_access_key = [\"{WRONG_SECRET}\"]\n"),
            None,
        ),
        (
            format!("[storage.s3]\nsession_token = \"{SESSION_TOKEN}\nx = 1\n"),
            None,
        ),
        (
            String::new(),
            Some((
                "SLUICE_STORAGE__S3__SESSION_TOKEN",
                format!("[\"{SESSION_TOKEN}\"]"),
            )),
        ),
    ] {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &toml).unwrap();
        let mut cmd = Command::new(bin("sluiced"));
        cmd.args(["check-config", "--config"]).arg(&path);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                cmd.env_remove(key);
            }
        }
        if let Some((k, v)) = &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{toml}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("invalid configuration"), "{text}");
        assert_clean("sluiced config error", &text, &secrets);
    }
}
