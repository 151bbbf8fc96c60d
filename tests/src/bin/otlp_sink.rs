//! `otlp-sink [--quiet]`: an OTLP/gRPC trace receiver on a free loopback
//! port, for tests in other languages and for benchmarks. Prints
//! `listening http://127.0.0.1:PORT`, then one JSON object per span
//! received (`trace_id`, `span_id`, `parent_id`, `name`, `attributes`), or
//! with `--quiet` only a count every second. Runs until killed.

use std::time::Duration;

use sluice_tests::otlp::Receiver;

#[tokio::main]
async fn main() {
    let quiet = std::env::args().any(|a| a == "--quiet");
    let receiver = Receiver::start().await;
    println!("listening {}", receiver.endpoint());
    let mut printed = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spans = receiver.spans();
        if quiet {
            if spans.len() != printed {
                println!("spans {}", spans.len());
                printed = spans.len();
            }
            continue;
        }
        for s in &spans[printed..] {
            let attributes: serde_json::Map<String, serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let line = serde_json::json!({
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_id": s.parent_id,
                "name": s.name,
                "attributes": attributes,
            });
            println!("{line}");
        }
        printed = spans.len();
    }
}
