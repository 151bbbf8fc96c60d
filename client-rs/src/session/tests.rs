//! Opening decisions of a session: which delivery, and whether the
//! daemon's answer fits what was asked and received.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use sluice_proto::fdpass::SegmentFd;
use sluice_proto::v1::ArenaSegment;

use super::*;

fn mappings(sizes: &[u64]) -> Mappings {
    let segments = sizes
        .iter()
        .enumerate()
        .map(|(id, &size)| {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&vec![0; size as usize]).unwrap();
            SegmentFd {
                id: id as u32,
                size,
                fd: OwnedFd::from(file),
            }
        })
        .collect();
    Mappings::map(segments).unwrap()
}

fn opened(shared_memory: bool, sizes: &[u64]) -> SessionOpened {
    SessionOpened {
        session_id: 1,
        shared_memory,
        lease_quota: 1 << 30,
        fd_socket: "/run/s.sock.fds".into(),
        segments: sizes
            .iter()
            .enumerate()
            .map(|(id, &size)| ArenaSegment {
                id: id as u32,
                size,
            })
            .collect(),
        batches: true,
        plans: true,
    }
}

fn fds() -> Option<PathBuf> {
    Some("/run/s.sock.fds".into())
}

#[test]
fn options_default_to_auto_and_a_window_of_64() {
    let options = SessionOptions::default();
    assert_eq!((options.delivery, options.window), (Delivery::Auto, 64));
}

#[test]
fn matching_segments_are_kept() {
    let kept = check_opened(
        "unix:///s",
        Delivery::Auto,
        fds(),
        Some(mappings(&[4096, 8192])),
        &opened(true, &[4096, 8192]),
    );
    assert!(kept.unwrap().is_some());
}

#[test]
fn a_differing_segment_table_is_an_error() {
    let error = check_opened(
        "unix:///s",
        Delivery::Auto,
        fds(),
        Some(mappings(&[4096])),
        &opened(true, &[8192]),
    )
    .unwrap_err();
    assert_eq!(error.code(), tonic::Code::DataLoss);
    assert!(error.to_string().contains("segment table"), "{error}");
}

#[test]
fn a_refusal_falls_back_unless_shared_memory_is_required() {
    let auto = check_opened(
        "unix:///s",
        Delivery::Auto,
        fds(),
        Some(mappings(&[4096])),
        &opened(false, &[]),
    );
    assert!(auto.unwrap().is_none(), "mappings dropped");
    let error = check_opened(
        "unix:///s",
        Delivery::SharedMemory,
        fds(),
        Some(mappings(&[4096])),
        &opened(false, &[]),
    )
    .unwrap_err();
    assert!(error.is_unavailable());
    assert!(error.to_string().contains("/run/s.sock.fds"), "{error}");
}

#[test]
fn shared_memory_nobody_asked_for_is_an_error() {
    let error = check_opened(
        "http://h:1",
        Delivery::Stream,
        None,
        None,
        &opened(true, &[4096]),
    )
    .unwrap_err();
    assert_eq!(error.code(), tonic::Code::DataLoss);
}

#[tokio::test]
async fn delivery_decides_whether_segments_are_received() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}/none.sock", dir.path().display());
    // Stream delivery never looks for the descriptor socket.
    assert!(matches!(
        map_segments(&address, Delivery::Stream).await,
        Ok((None, None))
    ));
    // Auto falls back when it is missing; SharedMemory names it.
    let (tried, mapped) = map_segments(&address, Delivery::Auto).await.unwrap();
    assert!((tried.unwrap().ends_with("none.sock.fds"), mapped.is_none()) == (true, true));
    let error = map_segments(&address, Delivery::SharedMemory)
        .await
        .unwrap_err();
    assert!(error.is_unavailable());
    assert!(error.to_string().contains("none.sock.fds"), "{error}");
    // TCP: no shared memory at all.
    assert!(matches!(
        map_segments("http://127.0.0.1:1", Delivery::Auto).await,
        Ok((None, None))
    ));
    let error = map_segments("http://127.0.0.1:1", Delivery::SharedMemory)
        .await
        .unwrap_err();
    assert!(error.is_unavailable());
}
