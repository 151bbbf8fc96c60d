//! Requests are bounded: overlong URIs are refused with INVALID_ARGUMENT
//! before the daemon keeps them anywhere, messages above the gRPC limit are
//! refused, and a flood of huge URIs does not grow the daemon's memory.

use sluice_proto::v1;
use sluice_proto::v1::session_response::Msg as Out;
use sluice_storage::MAX_URI_LEN;
use sluice_tests::daemon::DaemonProcess;
use sluice_tests::grpc::{connect, pattern, read};
use sluice_tests::shm::RawSession;
use tonic::Code;

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

fn long_uri(len: usize) -> String {
    let mut uri = String::from("file:///");
    uri.extend(std::iter::repeat_n('a', len - uri.len()));
    uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_uris_are_refused_without_memory_growth() {
    // Peak RSS measures what the URIs cost; the arena made resident at
    // startup would be counted too.
    let daemon = DaemonProcess::spawn_with_env(&[], &[("SLUICE_CACHE__PREFAULT", "false")]);
    let pid = daemon.child.id();
    let data = pattern(10_000, 3);
    std::fs::write(daemon.root.join("ok"), &data).unwrap();
    let ok_uri = format!("file://{}", daemon.root.join("ok").display());
    let mut client = connect(&daemon.socket).await;
    assert_eq!(read(&mut client, &ok_uri, None).await.unwrap().1, data);
    let baseline = status_kib(pid, "VmHWM:");

    // Just over the limit, well under the message size: INVALID_ARGUMENT,
    // and the message names only the start of the URI.
    for len in [MAX_URI_LEN + 1, 7 << 20] {
        let uri = long_uri(len);
        let err = read(&mut client, &uri, None).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{len}: {}",
            err.message()
        );
        assert!(
            err.message().len() < 512,
            "error echoes the uri: {} bytes",
            err.message().len()
        );
        assert!(
            err.message().contains(&format!("{len} bytes")),
            "{}",
            err.message()
        );
        let err = client
            .stat(v1::StatRequest { uri: uri.clone() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = client
            .list(v1::ListRequest {
                prefix: uri.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    // An 8 MiB URI does not even fit in a request message.
    let err = read(&mut client, &long_uri(8 << 20), None)
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().len() < 512);

    // A session flooded with fetches of 1 MiB URIs: each is refused at once
    // rather than queued (the queue may hold max_outstanding fetches).
    const FLOOD: u64 = 400;
    let RawSession { tx, mut rx, .. } = RawSession::open(&mut client, true).await;
    let sender = tokio::spawn(async move {
        let uri = long_uri(1 << 20);
        for id in 0..FLOOD {
            let f = v1::FetchRequest {
                id,
                uri: uri.clone(),
                range: None,
            };
            let msg = v1::SessionRequest {
                msg: Some(v1::session_request::Msg::Fetch(f)),
            };
            tx.send(msg).await.unwrap();
        }
    });
    let mut refused = 0;
    while refused < FLOOD {
        match rx.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
                assert!(e.message.len() < 512);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sender.await.unwrap();
    let peak = status_kib(pid, "VmHWM:");
    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    // 400 MiB of URIs went through; the daemon held at most a few at a time.
    assert!(growth_mib < 128, "peak RSS grew by {growth_mib} MiB");

    // And it still serves.
    assert_eq!(read(&mut client, &ok_uri, None).await.unwrap().1, data);
}
