//! The RPC telemetry layer on a real daemon: every call — unary or
//! streamed, failed at once or half-way, refused, or abandoned by its
//! client — is counted once, with the code the client saw.

use std::time::{Duration, Instant};

use sluice_client::{Client, SessionOptions};
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{http_get, metric};

async fn series(d: &TestDaemon, s: &str) -> f64 {
    metric(&http_get(d.http(), "/metrics").await.1, s)
}

/// Waits until `s` reaches `want` (a stream's end is counted when the
/// transport takes its trailers, just after the client saw them).
async fn wait_series(d: &TestDaemon, s: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = series(d, s).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{s} = {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_counted_with_the_code_its_client_saw() {
    let d = TestDaemon::start().await;
    std::fs::write(d.root().join("a"), vec![1u8; 100_000]).unwrap();
    let client = Client::connect(&d.address()).await.unwrap();
    let missing = d.file_uri("missing");

    let e = client.stat(&missing).await.unwrap_err();
    assert!(e.is_not_found());
    let e = client.read_to_bytes(&missing, None).await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        client
            .read_to_bytes(&d.file_uri("a"), None)
            .await
            .unwrap()
            .len(),
        100_000
    );
    let bad = client.read_to_bytes("nope://x", None).await.unwrap_err();
    assert!(bad.is_invalid_argument());

    wait_series(
        &d,
        r#"sluice_rpc_requests_total{method="stat",code="not_found"}"#,
        1.0,
    )
    .await;
    wait_series(
        &d,
        r#"sluice_rpc_requests_total{method="read",code="not_found"}"#,
        1.0,
    )
    .await;
    wait_series(
        &d,
        r#"sluice_rpc_requests_total{method="read",code="ok"}"#,
        1.0,
    )
    .await;
    wait_series(
        &d,
        r#"sluice_rpc_requests_total{method="read",code="invalid_argument"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        series(
            &d,
            r#"sluice_rpc_requests_total{method="read",code="cancelled"}"#
        )
        .await,
        0.0
    );

    // A session is one call, in flight while open.
    let session = client.session(SessionOptions::default()).await.unwrap();
    session.fetch(&d.file_uri("a"), None).await.unwrap();
    wait_series(&d, r#"sluice_rpc_in_flight{method="session"}"#, 1.0).await;
    drop(session);
    wait_series(&d, r#"sluice_rpc_in_flight{method="session"}"#, 0.0).await;
    let mut ended = 0.0;
    for code in ["ok", "cancelled"] {
        let s = format!(r#"sluice_rpc_requests_total{{method="session",code="{code}"}}"#);
        ended += series(&d, &s).await;
    }
    assert_eq!(ended, 1.0);
    assert_eq!(
        series(&d, r#"sluice_rpc_duration_seconds_count{method="stat"}"#).await,
        1.0
    );
}
