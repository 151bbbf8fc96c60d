//! The daemon's metrics as operators consume them: `promtool check metrics`
//! finds no lint in a scrape, and a real Prometheus scraping the daemon
//! answers every query of the Grafana dashboard (`deploy/grafana/sluice.json`)
//! with data, after a workload that touches every panel: cold and warm
//! reads, a missing object, a write, sessions on shared memory (leases) and
//! on the stream, an epoch plan (prefetch) and a read back from the disk
//! tier.
//!
//! Needs `prometheus` and `promtool` (see `sluice_tests::prometheus`).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sluice_client::{Client, Delivery, Fetched, Session, SessionOptions};
use sluice_engine::ByteSize;
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{http_get, metric, pattern};
use sluice_tests::prometheus::{self, Prometheus};

const MIB: usize = 1 << 20;

/// What `$__rate_interval` becomes: Grafana's is at least four scrape
/// intervals; 15 s of 1 s scrapes leaves room for a slow scrape or two.
const RATE_INTERVAL: &str = "15s";

/// Scrapes of the workload's series the queries wait for: every rate needs
/// two samples in its window.
const SCRAPES: u32 = 3;

/// How long the target may take to be up and scraped that often.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_has_data_and_metrics_pass_promtool() {
    let Some(bins) = prometheus::binaries() else {
        return;
    };
    let disk = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(|c| {
        c.engine.part_size = ByteSize::mib(1);
        // Six objects of 3 MiB do not fit: the first is read back from disk.
        c.cache.memory_budget = ByteSize::mib(16);
        c.cache.segment_size = ByteSize::mib(16);
        c.cache.disk.dirs = vec![disk.path().to_path_buf()];
    })
    .await;
    let prom = Prometheus::start(&bins.prometheus, d.http()).await;
    prom.wait_scraped(2, SCRAPE_DEADLINE).await;
    let sessions = workload(&d).await;

    let scrape = http_get(d.http(), "/metrics").await.1;
    let text = prometheus::openmetrics_to_text(&scrape);
    let (ok, lint) = prometheus::check_metrics(&bins.promtool, &text);
    assert!(
        ok && lint.trim().is_empty(),
        "promtool check metrics:\n{lint}"
    );

    // The workload's last new series, scraped often enough for a rate.
    let born = r#"count_over_time(sluice_session_delivered_bytes_total{transport="stream"}[1m])"#;
    prom.wait_until(born, SCRAPES.into(), SCRAPE_DEADLINE).await;
    let dashboard = load_dashboard();
    let instances = check_variables(&prom, &dashboard).await;
    let queries = panel_queries(&dashboard);
    assert!(queries.len() > 40, "{} queries found", queries.len());
    for (title, expr) in &queries {
        let query = substitute(expr, &instances);
        match prom.query(&query).await {
            Ok(Value::Array(series)) if !series.is_empty() => {}
            Ok(other) => panic!("panel {title:?}: no data for\n  {expr}\n  (got {other})"),
            Err(e) => panic!("panel {title:?}: query failed: {e}\n  {expr}"),
        }
    }
    drop(sessions);
}

fn write_file(root: &Path, rel: &str, data: &[u8]) -> Vec<u8> {
    std::fs::write(root.join(rel), data).unwrap();
    data.to_vec()
}

/// Reads, writes and sessions that give every panel a series; returns the
/// sessions and a lease, kept while Prometheus scrapes.
async fn workload(d: &TestDaemon) -> (Session, Session, Fetched) {
    let client = Client::connect(&d.address()).await.unwrap();
    // A write (its part buffer takes the whole arena: before the reads).
    let data = Bytes::from(pattern(MIB, 2));
    client.put(&d.file_uri("written"), data).await.unwrap();
    // Read calls: cold (backend, in ranged parts), warm (cache), missing.
    let mut objects = Vec::new();
    for i in 0..6 {
        let want = write_file(d.root(), &format!("read-{i}"), &pattern(3 * MIB + i, 1));
        let uri = d.file_uri(&format!("read-{i}"));
        for _pass in 0..2 {
            let got = client.read_to_bytes(&uri, None).await.unwrap();
            assert!(got == want, "{uri}");
        }
        objects.push((uri, want));
    }
    let missing = client.read_to_bytes(&d.file_uri("missing"), None).await;
    assert!(missing.unwrap_err().is_not_found());
    // The first object, evicted from RAM by the others, comes back from
    // the disk tier once written there.
    wait_metric(d, "sluice_disk_writes_total", 6.0).await;
    let (uri, want) = &objects[0];
    assert!(client.read_to_bytes(uri, None).await.unwrap() == *want);
    wait_metric(d, "sluice_disk_hits_total", 1.0).await;

    // A shared-memory session with an epoch plan (prefetch), fetched twice.
    let plan: Vec<String> = (0..4)
        .map(|i| {
            write_file(d.root(), &format!("plan-{i}"), &pattern(MIB + i, 3));
            d.file_uri(&format!("plan-{i}"))
        })
        .collect();
    let shm = session(&client, Delivery::SharedMemory).await;
    assert!(shm.shared_memory());
    assert_eq!(
        shm.submit_plan(1, "epoch", plan.iter().map(String::as_str))
            .await
            .unwrap(),
        4
    );
    for uri in plan.iter().chain(&plan) {
        let fetched = shm.fetch(uri, None).await.unwrap();
        assert!(fetched.parts.iter().all(|p| p.is_mapped()));
    }
    // Stream delivery, cold: a data stall too.
    write_file(d.root(), "streamed", &pattern(2 * MIB, 4));
    let stream = session(&client, Delivery::Stream).await;
    stream.fetch(&d.file_uri("streamed"), None).await.unwrap();
    let held = shm.fetch(&plan[0], None).await.unwrap();
    (shm, stream, held)
}

async fn session(client: &Client, delivery: Delivery) -> Session {
    let options = SessionOptions {
        delivery,
        window: 8,
    };
    client.session(options).await.unwrap()
}

async fn wait_metric(d: &TestDaemon, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(&http_get(d.http(), "/metrics").await.1, series);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load_dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sluice.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "{}",
        dashboard["schemaVersion"]
    );
    dashboard
}

/// Checks the template variables (a Prometheus data source, instances from
/// `label_values`) and returns the instances Prometheus knows.
async fn check_variables(prom: &Prometheus, dashboard: &Value) -> Vec<String> {
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let definition = var("instance")["definition"].as_str().unwrap();
    let (metric, label) = definition
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(','))
        .unwrap_or_else(|| panic!("instance: {definition:?} is not label_values(metric, label)"));
    let result = prom.query(metric.trim()).await.unwrap();
    let instances: Vec<String> = result
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"][label.trim()].as_str().map(str::to_owned))
        .collect();
    assert!(
        !instances.is_empty(),
        "variable instance: {definition} has no values ({result})"
    );
    instances
}

/// Every query target of every panel, rows' nested panels included, with
/// its panel's title. Panels query the `$datasource` variable.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                (&panel["datasource"]["uid"], &target["datasource"]["uid"]),
                (&"${datasource}".into(), &"${datasource}".into()),
                "panel {title:?} queries another data source"
            );
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title:?}: a target without expr");
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    queries
}

/// Replaces the Grafana variables as Grafana would (a multi-value regex
/// variable becomes an alternation); nothing else may remain.
fn substitute(expr: &str, instances: &[String]) -> String {
    let instance = format!("({})", instances.join("|"));
    let query = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${instance}", &instance)
        .replace("$instance", &instance);
    assert!(
        !query.contains('$'),
        "a variable the test does not know: {expr}"
    );
    query
}
