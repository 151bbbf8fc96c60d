use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::Bytes;
use tower::ServiceExt;

use super::*;
use crate::telemetry::metrics::Metrics;

/// A response body of given frames.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn trailers(code: i32) -> Frame<Bytes> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", code.to_string().parse().unwrap());
    Frame::trailers(t)
}

/// Calls `path` on a service answering `headers` + `frames`, reads the
/// body to its end (or drops it after `read` frames), and gives back the
/// metrics text.
async fn call(
    metrics: &Metrics,
    path: &str,
    status_in_headers: Option<i32>,
    frames: Vec<Frame<Bytes>>,
    read: usize,
) -> String {
    let frames = std::sync::Mutex::new(Some(frames));
    let inner = tower::service_fn(move |_req: http::Request<()>| {
        let mut response =
            http::Response::new(Frames(frames.lock().unwrap().take().unwrap().into()));
        if let Some(code) = status_in_headers {
            let headers = response.headers_mut();
            headers.insert("grpc-status", code.to_string().parse().unwrap());
        }
        async move { Ok::<_, Infallible>(response) }
    });
    let service = RpcLayer::new(metrics.rpc.clone(), false).layer(inner);
    let request = http::Request::builder().uri(path).body(()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    let mut body = Box::pin(response.into_body());
    for _ in 0..read {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        if frame.is_none() {
            break;
        }
    }
    drop(body);
    text(metrics)
}

fn text(metrics: &Metrics) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics.registry).unwrap();
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const READ: &str = "/sluice.v1.Sluice/Read";

#[tokio::test]
async fn a_stream_counts_with_the_code_of_its_trailers() {
    let m = Metrics::new();
    let data = || Frame::data(Bytes::from_static(b"x"));
    let t = call(&m, READ, None, vec![data(), data(), trailers(0)], 10).await;
    assert_eq!(
        value(&t, r#"sluice_rpc_requests_total{method="read",code="ok"}"#),
        1.0
    );
    assert_eq!(
        value(&t, r#"sluice_rpc_duration_seconds_count{method="read"}"#),
        1.0
    );
    assert_eq!(value(&t, r#"sluice_rpc_in_flight{method="read"}"#), 0.0);
    // Failed half-way: the trailers' code.
    let t = call(&m, READ, None, vec![data(), trailers(5)], 10).await;
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="read",code="not_found"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_call_that_failed_at_once_has_its_code_in_the_headers() {
    let m = Metrics::new();
    let t = call(&m, "/sluice.v1.Sluice/Stat", Some(3), vec![], 10).await;
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="stat",code="invalid_argument"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_body_dropped_before_its_status_is_cancelled() {
    let m = Metrics::new();
    let data = || Frame::data(Bytes::from_static(b"x"));
    let t = call(
        &m,
        "/sluice.v1.Sluice/Session",
        None,
        vec![data(), data(), trailers(0)],
        1,
    )
    .await;
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="session",code="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="session",code="ok"}"#
        ),
        0.0
    );
    assert_eq!(value(&t, r#"sluice_rpc_in_flight{method="session"}"#), 0.0);
}

#[tokio::test]
async fn a_call_in_progress_is_in_flight() {
    let m = Metrics::new();
    let inner = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(Frames(VecDeque::from([trailers(0)]))))
    });
    let service = RpcLayer::new(m.rpc.clone(), false).layer(inner);
    let request = http::Request::builder().uri(READ).body(()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(
        value(&text(&m), r#"sluice_rpc_in_flight{method="read"}"#),
        1.0
    );
    drop(response);
    assert_eq!(
        value(&text(&m), r#"sluice_rpc_in_flight{method="read"}"#),
        0.0
    );
}

#[tokio::test]
async fn paths_outside_the_service_count_as_unknown() {
    let m = Metrics::new();
    for path in [
        "/sluice.v1.Sluice/Nope",
        "/evil/../x",
        "/",
        "/grpc.health.v1.Health/Check",
    ] {
        call(&m, path, Some(12), vec![], 10).await;
    }
    let t = text(&m);
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="unknown",code="unimplemented"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &t,
            r#"sluice_rpc_requests_total{method="health",code="unimplemented"}"#
        ),
        1.0
    );
    assert!(!t.contains("Nope") && !t.contains("evil"), "{t}");
}

#[test]
fn server_faults_are_the_servers() {
    assert!(server_fault(tonic::Code::Internal));
    assert!(server_fault(tonic::Code::Unavailable));
    assert!(!server_fault(tonic::Code::NotFound));
    assert!(!server_fault(tonic::Code::Ok));
}
