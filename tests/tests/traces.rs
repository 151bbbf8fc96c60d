//! OpenTelemetry traces from a real `sluiced` to an OTLP receiver: the
//! caller's trace continues into the daemon, the spans nest as the read
//! runs (RPC → RangeEngine fetch → parts → backend requests; Session →
//! fetches), sampling follows the caller, and no span names an object.

use std::time::Duration;

use sluice_client::trace::{TraceContext, in_trace};
use sluice_client::{Client, SessionOptions};
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::otlp::{Receiver, Span};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";
const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn by_name<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_id == parent.span_id && s.name == name)
        .collect()
}

fn daemon(receiver: &Receiver, ratio: &str) -> DaemonProcess {
    DaemonProcess::spawn_with_env(
        &[],
        &[
            ("SLUICE_TRACES__ENABLED", "true"),
            ("SLUICE_TRACES__ENDPOINT", &receiver.endpoint()),
            ("SLUICE_TRACES__SAMPLE_RATIO", ratio),
            // Fixed 1 MiB parts: a 4 MiB object is four requests.
            ("SLUICE_ENGINE__PART_SIZE", "1MiB"),
            ("SLUICE_ENGINE__MIN_PART_SIZE", "1MiB"),
            ("SLUICE_ENGINE__ADAPTIVE_PART_SIZE", "false"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_continues_the_callers_trace() {
    let receiver = Receiver::start().await;
    // Ratio 0: only what the caller sampled is traced.
    let d = daemon(&receiver, "0");
    std::fs::write(d.root.join("secret-name.bin"), vec![7u8; 4 * MIB]).unwrap();
    std::fs::write(d.root.join("untraced.bin"), vec![1u8; 1000]).unwrap();
    let uri = format!("file://{}/secret-name.bin", d.root.display());
    let client = Client::connect(&d.address()).await.unwrap();
    let cx = TraceContext::new(&format!("00-{TRACE}-{CALLER}-01"), None).unwrap();
    let data = in_trace(cx, client.read_to_bytes(&uri, None))
        .await
        .unwrap();
    assert_eq!(data.len(), 4 * MIB);
    // Not sampled by the caller, and the ratio is 0: no spans.
    let other = format!("file://{}/untraced.bin", d.root.display());
    client.read_to_bytes(&other, None).await.unwrap();

    let spans = receiver
        .wait_for(WAIT, |s| by_name(s, "GET").len() >= 4)
        .await;
    let rpc = by_name(&spans, "sluice.v1.Sluice/Read");
    assert_eq!(rpc.len(), 1, "{spans:#?}");
    let rpc = rpc[0];
    assert_eq!(rpc.trace_id, TRACE);
    assert_eq!(rpc.parent_id, CALLER, "the caller's span is the parent");
    assert_eq!(rpc.service, "sluiced");
    assert_eq!(rpc.attr("rpc.grpc.status_code"), Some("ok"));
    let fetch = children(&spans, rpc, "RangeEngine fetch");
    assert_eq!(fetch.len(), 1, "{spans:#?}");
    let fetch = fetch[0];
    assert_eq!(fetch.attr("object.size"), Some("4194304"));
    assert_eq!(fetch.attr("backend"), Some("file"));
    // The first request is the fetch's own; the other three are parts.
    assert_eq!(children(&spans, fetch, "GET").len(), 1, "{spans:#?}");
    let parts = children(&spans, fetch, "RangeEngine part");
    assert_eq!(parts.len(), 3, "{spans:#?}");
    for part in parts {
        let requests = children(&spans, part, "GET");
        assert_eq!(requests.len(), 1, "{spans:#?}");
        assert_eq!(requests[0].attr("outcome"), Some("ok"));
    }
    for span in &spans {
        assert_eq!(span.trace_id, TRACE, "only the sampled call: {span:#?}");
        for (k, v) in &span.attributes {
            assert!(!v.contains("secret-name"), "{k}={v} names the object");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_fetches_are_spans_of_the_session() {
    let receiver = Receiver::start().await;
    // Ratio 1: every call is traced, as a root when the caller sent none.
    let d = daemon(&receiver, "1.0");
    std::fs::write(d.root.join("a"), vec![3u8; 1000]).unwrap();
    let uri = format!("file://{}/a", d.root.display());
    let client = Client::connect(&d.address()).await.unwrap();
    let session = client.session(SessionOptions::default()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(session.fetch(&uri, None).await.unwrap().len(), 1000);
    }
    drop(session);
    let missing = format!("file://{}/missing", d.root.display());
    assert!(client.stat(&missing).await.unwrap_err().is_not_found());
    let spans = receiver
        .wait_for(WAIT, |s| {
            !by_name(s, "sluice.v1.Sluice/Session").is_empty()
                && !by_name(s, "sluice.v1.Sluice/Stat").is_empty()
        })
        .await;
    let session = by_name(&spans, "sluice.v1.Sluice/Session")[0];
    assert!(session.parent_id.is_empty(), "a root span: {session:#?}");
    let fetches = children(&spans, session, "session fetch");
    assert_eq!(fetches.len(), 2, "{spans:#?}");
    let sources: Vec<_> = fetches.iter().map(|f| f.attr("fetch.source")).collect();
    assert!(
        sources.contains(&Some("backend")) && sources.contains(&Some("cache")),
        "{sources:?}"
    );
    let stat = by_name(&spans, "sluice.v1.Sluice/Stat")[0];
    assert_eq!(stat.attr("rpc.grpc.status_code"), Some("not_found"));
}
