//! One S3 store behind several gateways: three `s3s-fs` processes over the
//! same buckets. Requests spread over all three; one killed during a read
//! loop fails no read (its requests go to the others); it is probed back
//! and takes requests again when it returns.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_proto::v1;
use sluice_storage::s3::{S3Config, S3Endpoint};
use sluice_tests::daemon::TestDaemon;
use sluice_tests::grpc::{connect, http_get, metric, pattern};
use sluice_tests::s3server::S3Server;

const STORE: &str = "store.test:9000";
const OBJECTS: usize = 12;

/// Reads every object once, uncached, and checks the bytes.
async fn read_all(d: &TestDaemon, round: usize) {
    let mut client = connect(d.socket()).await;
    for i in 0..OBJECTS {
        let uri = format!("s3://{STORE}/shared/o{i}");
        let req = v1::ReadRequest {
            uri: uri.clone(),
            range: None,
            no_cache: true,
        };
        let mut stream = match client.read(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => panic!("round {round}: {uri}: {e:?}"),
        };
        let mut data = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.unwrap_or_else(|e| panic!("round {round}: {uri}: {e:?}"));
            data.extend_from_slice(&msg.data);
        }
        assert!(
            data == pattern(100_000 + i, i as u8),
            "round {round}: {uri} differs"
        );
    }
}

async fn gateway_metric(d: &TestDaemon, name: &str, gateway: &str) -> f64 {
    let (_, body) = http_get(d.http(), "/metrics").await;
    let series =
        format!("sluice_s3_gateway_{name}{{store=\"s3://{STORE}\",gateway=\"{gateway}\"}}");
    metric(&body, &series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_three_gateways_survives_one_going_away() {
    let a = S3Server::start().await;
    a.bucket("shared").await;
    let b = a.replica().await;
    let mut c = a.replica().await;
    for i in 0..OBJECTS {
        a.put("shared", &format!("o{i}"), pattern(100_000 + i, i as u8))
            .await;
    }
    let gateways = [a.endpoint(), b.endpoint(), c.endpoint()];
    let cfg = S3Config {
        endpoints: vec![S3Endpoint {
            address: STORE.into(),
            gateways: gateways.to_vec(),
            ..a.endpoint_config()
        }],
        gateway_backoff: Duration::from_millis(50),
        gateway_max_backoff: Duration::from_millis(200),
        ..a.config()
    };
    let d = TestDaemon::start_with(move |c| c.storage.s3 = cfg).await;

    read_all(&d, 1).await;
    for gw in &gateways {
        assert!(
            gateway_metric(&d, "requests_total", gw).await > 0.0,
            "{gw} took no request"
        );
        assert_eq!(gateway_metric(&d, "up", gw).await, 1.0, "{gw}");
    }

    // One gateway goes away: no read fails.
    c.kill();
    for round in 2..4 {
        read_all(&d, round).await;
    }
    assert_eq!(
        gateway_metric(&d, "up", &gateways[2]).await,
        0.0,
        "the dead gateway is out"
    );
    assert!(gateway_metric(&d, "failures_total", &gateways[2]).await >= 1.0);
    let taken = gateway_metric(&d, "requests_total", &gateways[2]).await;

    // It comes back: a probe finds it, and it takes requests again.
    c.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway_metric(&d, "up", &gateways[2]).await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway was not probed back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read_all(&d, 4).await;
    assert!(
        gateway_metric(&d, "requests_total", &gateways[2]).await > taken,
        "the returned gateway takes requests again"
    );
}
