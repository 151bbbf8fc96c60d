//! A real Prometheus for tests: scrapes a daemon every second and answers
//! PromQL queries, so the Grafana dashboard's queries are checked against
//! what a scrape of `/metrics` really stores. Also `promtool check metrics`.
//!
//! The binaries are `$PROMETHEUS_BIN` and `$PROMTOOL_BIN`, else
//! `prometheus` and `promtool` on `PATH` (Debian's `prometheus` package;
//! `scripts/test.sh` installs it). Without them a test is skipped with a
//! message, except under `CI=true`, where it fails.
//!
//! Start-up binds `127.0.0.1:0` to pick a free port, releases it and starts
//! Prometheus there, then polls `/-/ready` (with a deadline, never a fixed
//! sleep); a start that lost the port to another process is tried again.
//! Data lives in a temporary directory; the process is killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long Prometheus may take to answer `/-/ready`.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Starts tried before giving up (a start fails when the port was taken).
const START_TRIES: usize = 3;

const INSTALL_HINT: &str = "install Debian's prometheus package \
     (apt-get install prometheus), or point PROMETHEUS_BIN and PROMTOOL_BIN at the binaries";

/// `prometheus` and `promtool`.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The server.
    pub prometheus: PathBuf,
    /// The checker.
    pub promtool: PathBuf,
}

/// The binaries; `None` (after saying so on stderr) when they are missing
/// and `CI` is not `true`. Under `CI=true` a missing binary panics.
pub fn binaries() -> Option<Binaries> {
    let found = find("PROMETHEUS_BIN", "prometheus").zip(find("PROMTOOL_BIN", "promtool"));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus or promtool not found (CI=true); {INSTALL_HINT}"
        );
        eprintln!("skipped: prometheus or promtool not found; {INSTALL_HINT}");
    }
    found.map(|(prometheus, promtool)| Binaries {
        prometheus,
        promtool,
    })
}

fn find(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return Some(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Rewrites an OpenMetrics exposition (what `/metrics` serves) in the
/// Prometheus text format, which `promtool check metrics` reads: no `# UNIT`
/// or `# EOF` lines, counter families named with their `_total` samples,
/// info families as gauges named `_info`. Samples are unchanged.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some([name, kind]) = line
            .strip_prefix("# TYPE ")
            .map(|rest| rest.splitn(2, ' ').collect::<Vec<_>>())
            .and_then(|v| <[&str; 2]>::try_from(v).ok())
        {
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let mut text = String::new();
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        let Some((prefix, rest)) = meta else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, tail) = match types.get(name).map(String::as_str) {
            Some("counter") => (format!("{name}_total"), tail),
            Some("info") if prefix == "# TYPE " => (format!("{name}_info"), "gauge"),
            Some("info") => (format!("{name}_info"), tail),
            _ => (name.to_owned(), tail),
        };
        text.push_str(&format!("{prefix}{name} {tail}\n"));
    }
    text
}

/// Runs `promtool check metrics` on a scrape in the text format; returns
/// its exit status and what it printed (the lint problems).
pub fn check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", promtool.display()));
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool finishes");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A running Prometheus scraping one target every second; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`)
    /// as job `sluice`. Panics, saying why, when it cannot.
    pub async fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let http = reqwest::Client::builder()
            .build()
            .expect("building the test http client");
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let dir = tempfile::tempdir().expect("creating the prometheus directory");
            let port = free_port();
            let mut child = spawn(binary, dir.path(), port, target);
            match wait_until_ready(&mut child, &http, port).await {
                Ok(()) => {
                    return Prometheus {
                        child,
                        port,
                        dir,
                        http,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("prometheus.log"))
                        .unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n{log}"));
                }
            }
        }
        panic!("prometheus did not start:\n{}", failures.join("\n"));
    }

    /// Evaluates `query` now: the result (an array of series; a scalar's
    /// `[time, value]`), or Prometheus's error message.
    pub async fn query(&self, query: &str) -> Result<serde_json::Value, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={}", form_encode(query)))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let body: serde_json::Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].clone())
    }

    /// Waits until the target is up and was scraped at least `scrapes`
    /// times; panics after `within`, with Prometheus's log.
    pub async fn wait_scraped(&self, scrapes: u32, within: Duration) {
        let query = r#"count_over_time(up{job="sluice"}[5m]) and up{job="sluice"} == 1"#;
        self.wait_until(query, f64::from(scrapes), within).await;
    }

    /// Waits until the first series of `query` is at least `min`; panics
    /// after `within`, with Prometheus's log.
    pub async fn wait_until(&self, query: &str, min: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(query).await.ok().and_then(|r| first_value(&r));
            if got.is_some_and(|v| v >= min) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{query} not at {min} after {within:?} (got {got:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first series of an instant-vector result.
pub fn first_value(result: &serde_json::Value) -> Option<f64> {
    result.get(0)?["value"][1].as_str()?.parse().ok()
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn spawn(binary: &Path, dir: &Path, port: u16, target: SocketAddr) -> Child {
    // Every second: a test waits for a few scrapes, not for minutes.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("writing the prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("creating the log");
    Command::new(binary)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", binary.display()))
}

async fn wait_until_ready(
    child: &mut Child,
    http: &reqwest::Client,
    port: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    let url = format!("http://127.0.0.1:{port}/-/ready");
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status}"));
        }
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {START_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_families_are_renamed_as_their_samples() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                  a_requests_total{m=\"x\"} 1\n# TYPE a_build info\na_build_info{v=\"1\"} 1\n\
                  # TYPE a_size_bytes gauge\n# UNIT a_size_bytes bytes\na_size_bytes 3\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{m=\"x\"} 1\n# TYPE a_build_info gauge\na_build_info{v=\"1\"} 1\n\
             # TYPE a_size_bytes gauge\na_size_bytes 3\n"
        );
        assert_eq!(form_encode("a b{c=\"$\"}"), "a%20b%7Bc%3D%22%24%22%7D");
    }
}
