//! Routing responses to fetches, and the request body, with real channels
//! and real mapped segments (temporary files) but no daemon.

use std::io::Write;
use std::os::fd::OwnedFd;

use bytes::Bytes;
use futures::StreamExt;
use sluice_proto::fdpass::SegmentFd;
use sluice_proto::v1::FetchRequest;
use tokio::sync::Semaphore;
use tonic::Code;

use super::*;
use crate::session::mapping::Mappings;
use crate::session::releases::ReleaseSender;

/// A session core over one segment (id 0) holding `data`, and the
/// receiving end of its releases.
fn core(data: &[u8]) -> (Arc<Core>, ReleaseReceiver) {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    let segment = SegmentFd {
        id: 0,
        size: data.len() as u64,
        fd: OwnedFd::from(file),
    };
    let mappings = Mappings::map(vec![segment]).unwrap();
    let (tx, rx) = crate::session::releases::channel();
    let driver = tokio::spawn(std::future::pending::<()>()).abort_handle();
    (Arc::new(Core::new(Some(mappings), tx, driver)), rx)
}

type Events = mpsc::UnboundedReceiver<Result<Event>>;

fn register(dispatch: &mut Dispatch, id: u64, range: Option<std::ops::Range<u64>>) -> Events {
    let (events, rx) = mpsc::unbounded_channel();
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let pending = Pending {
        assembly: Assembly::new("f://a", range),
        events,
        _permit: permit,
    };
    dispatch.register(id, pending).unwrap();
    rx
}

fn meta(size: u64) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        uri: "f://a".into(),
        size,
        ..Default::default()
    })
}

#[allow(clippy::too_many_arguments)]
fn extent(
    id: u64,
    meta: Option<ObjectMeta>,
    object_offset: u64,
    segment_offset: u64,
    length: u64,
    lease_id: u64,
    last: bool,
) -> Response {
    Response::Extent(LeasedExtent {
        id,
        meta,
        object_offset,
        segment: 0,
        segment_offset,
        length,
        lease_id,
        last,
    })
}

fn drain(rx: &mut ReleaseReceiver) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Some(id) = rx.try_recv() {
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn extents_become_leases_over_the_mapping() {
    let (core, mut releases) = core(b"0123456789abcdef");
    let mut dispatch = Dispatch::new("unix:///s");
    let mut events = register(&mut dispatch, 1, None);
    dispatch.handle(extent(1, meta(6), 0, 4, 4, 11, false), Some(&core));
    dispatch.handle(extent(1, None, 4, 12, 2, 12, true), Some(&core));
    assert!(matches!(events.try_recv(), Ok(Ok(Event::Meta(m))) if m.size == 6));
    let Ok(Ok(Event::Part(first))) = events.try_recv() else {
        panic!("no first part");
    };
    let Ok(Ok(Event::Part(second))) = events.try_recv() else {
        panic!("no second part");
    };
    assert!(matches!(events.try_recv(), Ok(Ok(Event::End))));
    assert_eq!((&*first, &*second), (&b"4567"[..], &b"cd"[..]));
    assert_eq!((first.object_offset(), second.object_offset()), (0, 4));
    assert!(core.mappings().unwrap().contains(first.as_ptr()));
    assert!(first.is_mapped() && first.lease_id() == 11);
    assert!(
        drain(&mut releases).is_empty(),
        "nothing released while held"
    );
    drop(first);
    drop(second);
    assert_eq!(drain(&mut releases), [11, 12]);
    assert!(dispatch.fetches.is_empty(), "complete fetch forgotten");
}

#[tokio::test]
async fn a_bad_extent_fails_its_fetch_only_and_is_released() {
    let (core, mut releases) = core(&[7; 64]);
    let mut dispatch = Dispatch::new("unix:///s");
    let mut bad = register(&mut dispatch, 1, None);
    let mut good = register(&mut dispatch, 2, None);
    dispatch.handle(extent(1, meta(10), 0, 60, 10, 21, true), Some(&core));
    dispatch.handle(extent(2, meta(10), 0, 0, 10, 22, true), Some(&core));
    let Ok(Err(error)) = bad.try_recv() else {
        panic!("bad extent accepted");
    };
    assert_eq!(error.code(), Code::DataLoss);
    assert!(error.to_string().contains("outside segment 0"), "{error}");
    assert_eq!(drain(&mut releases), [21], "refused extent released");
    assert!(matches!(good.try_recv(), Ok(Ok(Event::Meta(_)))));
    assert!(matches!(good.try_recv(), Ok(Ok(Event::Part(l))) if l.len() == 10));
}

#[tokio::test]
async fn leases_nobody_waits_for_are_released() {
    let (core, mut releases) = core(&[1; 64]);
    let mut dispatch = Dispatch::new("unix:///s");
    // An id that was never registered (or whose fetch already failed).
    dispatch.handle(extent(9, meta(4), 0, 0, 4, 31, true), Some(&core));
    // A caller that gave up after the first part.
    let events = register(&mut dispatch, 1, None);
    dispatch.handle(extent(1, meta(8), 0, 0, 4, 32, false), Some(&core));
    drop(events);
    dispatch.handle(extent(1, None, 4, 4, 4, 33, true), Some(&core));
    // An empty extent that still names a lease.
    let _events = register(&mut dispatch, 2, None);
    dispatch.handle(extent(2, meta(0), 0, 0, 0, 34, true), Some(&core));
    assert_eq!(drain(&mut releases), [31, 32, 33, 34]);
    assert!(dispatch.fetches.is_empty());
}

#[tokio::test]
async fn fetch_errors_and_chunks_are_routed_by_id() {
    let mut dispatch = Dispatch::new("unix:///s");
    let mut missing = register(&mut dispatch, 1, None);
    let mut chunked = register(&mut dispatch, 2, Some(2..5));
    dispatch.handle(
        Response::Error(FetchError {
            id: 1,
            code: Code::NotFound as i32,
            message: "not found: f://a".into(),
        }),
        None,
    );
    let chunk = |meta, offset, data: &'static [u8], last| {
        Response::Chunk(FetchChunk {
            id: 2,
            meta,
            offset,
            data: Bytes::from_static(data),
            last,
        })
    };
    dispatch.handle(chunk(meta(10), 2, b"ab", false), None);
    dispatch.handle(chunk(None, 4, b"c", true), None);
    let Ok(Err(error)) = missing.try_recv() else {
        panic!("error not routed");
    };
    assert!(error.is_not_found());
    assert_eq!(error.to_string(), "not found: f://a");
    assert!(matches!(chunked.try_recv(), Ok(Ok(Event::Meta(_)))));
    let Ok(Ok(Event::Part(first))) = chunked.try_recv() else {
        panic!("no chunk");
    };
    assert_eq!(
        (&*first, first.object_offset(), first.is_mapped()),
        (&b"ab"[..], 2, false)
    );
    assert!(matches!(chunked.try_recv(), Ok(Ok(Event::Part(l))) if &*l == b"c"));
    assert!(matches!(chunked.try_recv(), Ok(Ok(Event::End))));
}

#[tokio::test]
async fn a_draining_daemon_refusing_a_fetch_is_named() {
    let mut dispatch = Dispatch::new("unix:///run/s.sock");
    let mut refused = register(&mut dispatch, 1, None);
    let mut missing = register(&mut dispatch, 2, None);
    for (id, code, message) in [
        (1, Code::Unavailable, "the daemon is shutting down"),
        (2, Code::NotFound, "not found: f://a"),
    ] {
        let error = FetchError {
            id,
            code: code as i32,
            message: message.into(),
        };
        dispatch.handle(Response::Error(error), None);
    }
    let Ok(Err(error)) = refused.try_recv() else {
        panic!("error not routed");
    };
    assert!(error.is_unavailable());
    assert_eq!(
        error.to_string(),
        "the daemon is shutting down (sluice daemon at unix:///run/s.sock)"
    );
    let Ok(Err(error)) = missing.try_recv() else {
        panic!("error not routed");
    };
    assert_eq!(
        error.to_string(),
        "not found: f://a",
        "other codes unchanged"
    );
}

#[tokio::test]
async fn extents_without_mappings_fail_the_fetch() {
    let mut dispatch = Dispatch::new("unix:///s");
    let mut events = register(&mut dispatch, 1, None);
    dispatch.handle(extent(1, meta(4), 0, 0, 4, 5, true), None);
    let Ok(Err(error)) = events.try_recv() else {
        panic!("extent accepted without mappings");
    };
    assert!(error.to_string().contains("unknown segment 0"), "{error}");
}

#[tokio::test]
async fn closing_fails_what_is_owed_and_what_comes_later() {
    let mut dispatch = Dispatch::new("unix:///run/s.sock");
    let mut owed = register(&mut dispatch, 1, None);
    dispatch.close(Some(tonic::Status::unavailable("connection reset")));
    let Ok(Err(error)) = owed.try_recv() else {
        panic!("owed fetch not failed");
    };
    assert!(error.is_unavailable());
    assert!(error.to_string().contains("unix:///run/s.sock"), "{error}");
    let (events, _rx) = mpsc::unbounded_channel();
    let pending = Pending {
        assembly: Assembly::new("f://b", None),
        events,
        _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
    };
    let error = dispatch.register(2, pending).unwrap_err();
    assert!(error.is_unavailable(), "{error}");
}

fn fetch(id: u64) -> FetchRequest {
    FetchRequest {
        id,
        uri: "f://a".into(),
        range: None,
    }
}

fn open() -> SessionRequest {
    SessionRequest {
        msg: Some(Request::Open(Default::default())),
    }
}

/// A request body with room for `fetches` queued fetches, to a daemon that
/// takes batches or not; the senders of its fetches and releases.
fn outgoing(
    fetches: usize,
    batches: bool,
) -> (mpsc::Sender<FetchRequest>, ReleaseSender, Outgoing) {
    let (fetch_tx, fetch_rx) = mpsc::channel(fetches);
    let (release_tx, release_rx) = crate::session::releases::channel();
    let flag = Arc::new(AtomicBool::new(batches));
    let body = Outgoing::new(open(), fetch_rx, mpsc::channel(1).1, release_rx, flag);
    (fetch_tx, release_tx, body)
}

#[tokio::test]
async fn queued_releases_go_out_as_one_request_before_fetches() {
    let (fetch_tx, release_tx, mut outgoing) = outgoing(4, true);
    fetch_tx.send(fetch(1)).await.unwrap();
    for id in [5, 6, 7] {
        release_tx.send(id);
    }
    assert!(matches!(
        outgoing.next().await.unwrap().msg,
        Some(Request::Open(_))
    ));
    let Some(Request::Release(release)) = outgoing.next().await.unwrap().msg else {
        panic!("releases not first");
    };
    assert_eq!(release.lease_ids, [5, 6, 7]);
    assert!(matches!(outgoing.next().await.unwrap().msg, Some(Request::Fetch(f)) if f.id == 1));
    // Ends only when both senders are gone.
    drop(fetch_tx);
    release_tx.send(8);
    let Some(Request::Release(release)) = outgoing.next().await.unwrap().msg else {
        panic!("release after the fetches ended");
    };
    assert_eq!(release.lease_ids, [8]);
    drop(release_tx);
    assert!(outgoing.next().await.is_none());
}

#[tokio::test]
async fn release_batches_are_bounded() {
    let (_fetch_tx, release_tx, mut outgoing) = outgoing(1, true);
    for id in 0..(MAX_RELEASE_BATCH as u64 + 10) {
        release_tx.send(id);
    }
    outgoing.next().await.unwrap();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        let Some(Request::Release(release)) = outgoing.next().await.unwrap().msg else {
            panic!("not a release");
        };
        sizes.push(release.lease_ids.len());
    }
    assert_eq!(sizes, [MAX_RELEASE_BATCH, 10]);
}

/// Leases dropped one by one within `RELEASE_DELAY` share one message;
/// one dropped alone still goes out once the delay has passed.
#[tokio::test(start_paused = true)]
async fn releases_dropped_one_by_one_share_a_message() {
    let (_fetch_tx, release_tx, mut outgoing) = outgoing(1, true);
    outgoing.next().await.unwrap();
    let started = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        for id in 0..5 {
            release_tx.send(id);
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(RELEASE_DELAY * 4).await;
        release_tx.send(99);
        release_tx
    });
    let Some(Request::Release(release)) = outgoing.next().await.unwrap().msg else {
        panic!("not a release");
    };
    assert_eq!(release.lease_ids, [0, 1, 2, 3, 4]);
    assert!(started.elapsed() >= RELEASE_DELAY, "sent before the delay");
    let Some(Request::Release(release)) = outgoing.next().await.unwrap().msg else {
        panic!("not a release");
    };
    assert_eq!(release.lease_ids, [99], "a lone release still goes out");
    drop(sender.await.unwrap());
    drop(_fetch_tx);
    assert!(outgoing.next().await.is_none());
}

/// Fetches queued together go out as one `FetchBatch` to a daemon that
/// takes them, and one by one, in order, to one that does not.
#[tokio::test]
async fn queued_fetches_go_out_as_one_batch_if_the_daemon_takes_them() {
    for batches in [true, false] {
        let (fetch_tx, _release_tx, mut outgoing) = outgoing(8, batches);
        outgoing.next().await.unwrap();
        for id in 1..=3 {
            fetch_tx.send(fetch(id)).await.unwrap();
        }
        let mut sent = Vec::new();
        while sent.iter().map(Vec::len).sum::<usize>() < 3 {
            match outgoing.next().await.unwrap().msg {
                Some(Request::FetchBatch(b)) => {
                    assert!(batches, "a batch to a daemon without batches");
                    sent.push(b.fetches.iter().map(|f| f.id).collect::<Vec<_>>());
                }
                Some(Request::Fetch(f)) => sent.push(vec![f.id]),
                other => panic!("unexpected {other:?}"),
            }
        }
        if batches {
            assert_eq!(sent, [vec![1, 2, 3]]);
        } else {
            assert_eq!(sent, [vec![1], vec![2], vec![3]]);
        }
    }
}
