//! Per-client data stall (`sluice_session_client_*`) through a real
//! in-process daemon: a session's cold fetch counts under the uid the
//! kernel reports for its Unix-socket peer, a cached fetch adds a fetch but
//! no stall, and a TCP client counts as `remote`.

use std::net::SocketAddr;

use sluice_client::{Client, Delivery, Session, SessionOptions};
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{http_get, metric, pattern};

async fn session(address: &str, delivery: Delivery) -> Session {
    let client = Client::connect(address).await.unwrap();
    let options = SessionOptions {
        delivery,
        window: 4,
    };
    client.session(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fetch_counts_under_its_clients_uid() {
    let d = TestDaemon::start_with(|c| {
        c.server.tcp = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.server.tcp_insecure = true;
    })
    .await;
    std::fs::write(d.root().join("a"), pattern(300_000, 1)).unwrap();
    std::fs::write(d.root().join("b"), pattern(200_000, 2)).unwrap();
    // SAFETY: geteuid(2) cannot fail. SO_PEERCRED reports the effective uid.
    let uid = unsafe { libc::geteuid() };
    let stall = format!("sluice_session_client_stall_seconds_total{{uid=\"{uid}\"}}");
    let fetches = format!("sluice_session_client_fetches_total{{uid=\"{uid}\"}}");

    let local = session(&d.address(), Delivery::SharedMemory).await;
    local.fetch(&d.file_uri("a"), None).await.unwrap();
    let body = http_get(d.http(), "/metrics").await.1;
    let stalled = metric(&body, &stall);
    assert!(stalled > 0.0, "a cold fetch stalls: {stall} = {stalled}");
    let all = metric(&body, "sluice_session_stall_seconds_sum");
    assert!(
        (stalled - all).abs() < 1e-9,
        "the only client has all the stall: {stalled} of {all}"
    );
    assert_eq!(metric(&body, &fetches), 1.0);

    local.fetch(&d.file_uri("a"), None).await.unwrap();
    let body = http_get(d.http(), "/metrics").await.1;
    assert_eq!(metric(&body, &stall), stalled, "a cache hit is no stall");
    assert_eq!(metric(&body, &fetches), 2.0);

    // Over TCP the daemon has no uid for its peer.
    let tcp = format!("http://{}", d.tcp().unwrap());
    let remote = session(&tcp, Delivery::Stream).await;
    remote.fetch(&d.file_uri("b"), None).await.unwrap();
    let body = http_get(d.http(), "/metrics").await.1;
    let series = "sluice_session_client_stall_seconds_total{uid=\"remote\"}";
    assert!(metric(&body, series) > 0.0, "{series} missing:\n{body}");
    assert_eq!(
        metric(&body, &stall),
        stalled,
        "the TCP client's stall is not counted as the local uid's"
    );
}
