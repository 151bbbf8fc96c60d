use std::time::Duration;

use sluice_storage::ObjectMeta;

use super::*;

fn shares(client: u64, clients: u64) -> Arc<Shares> {
    Shares::new(
        ShareLimits {
            client_bytes: client,
            clients_bytes: clients,
            client_requests: 2,
            wait: Duration::from_secs(5),
            request_wait: Duration::from_secs(5),
        },
        ShareMetrics::default(),
    )
}

fn entry(size: usize) -> Arc<CachedObject> {
    let cache = crate::cache::Cache::new(crate::metrics::CacheMetrics::default());
    let meta = ObjectMeta {
        uri: "file:///k".into(),
        size: size as u64,
        etag: None,
        last_modified: None,
        version: None,
    };
    cache.insert("k".into(), meta, Bytes::from(vec![7; size]))
}

/// A client over its share waits, and is refused past the wait; another
/// client is not affected; a client holding nothing is always let in.
#[tokio::test(start_paused = true)]
async fn a_full_share_stalls_only_its_client() {
    let s = shares(100, 1000);
    let (a, b) = (s.client(), s.client());
    let held = a.acquire(80).await.unwrap();
    let err = a.acquire(30).await.unwrap_err();
    assert!(
        matches!(
            err,
            BudgetError::Share {
                held: 80,
                limit: 100,
                need: 30,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cache.client_share"), "{err}");
    // Another client gets its bytes at once, and one holding nothing may
    // take more than a share in one reservation.
    let big = b
        .try_acquire(500)
        .expect("a client holding nothing is let in");
    assert_eq!(s.held(), 580);
    // A waiting charge gets in when its client lets go.
    let a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.acquire(30).await.map(|h| h.bytes()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), 30);
    drop(big);
    assert_eq!(s.held(), 0);
    assert_eq!(s.metrics.refused.get(), 1);
}

/// All clients together stay within `clients_bytes`, except that a client
/// holding nothing is let in.
#[tokio::test(start_paused = true)]
async fn the_clients_total_keeps_room_for_idle_clients() {
    let s = shares(100, 150);
    let (a, b, c) = (s.client(), s.client(), s.client());
    let _a = a.acquire(90).await.unwrap();
    let _b1 = b.acquire(50).await.unwrap();
    assert!(
        b.try_acquire(20).is_none(),
        "140 + 20 would pass the clients' total of 150"
    );
    let _c = c
        .try_acquire(60)
        .expect("an idle client is let in whatever the others hold");
    assert_eq!(s.held(), 200);
}

/// Slices of one cached object are charged its whole size, once per client.
#[tokio::test(start_paused = true)]
async fn pins_count_the_whole_entry_once_per_client() {
    let s = shares(100, 1000);
    let (a, b) = (s.client(), s.client());
    let obj = entry(60);
    let p1 = a.pin(&obj).await.unwrap();
    let p2 = a.pin(&obj).await.unwrap();
    assert_eq!(a.held(), 60, "one entry, charged once");
    assert_eq!(p2.bytes(), 60);
    let pb = b.pin(&obj).await.unwrap();
    assert_eq!(s.held(), 120, "each client that pins it is charged");
    let other = entry(50);
    let err = a.pin(&other).await.unwrap_err();
    assert!(matches!(err, BudgetError::Share { .. }), "{err}");
    drop(p1);
    assert_eq!(a.held(), 60, "still pinned by the second hold");
    drop(p2);
    assert_eq!(a.held(), 0);
    // The bytes a hold is attached to keep it.
    let bytes = pb.attach(obj.data.clone()).slice(0..1);
    assert_eq!(b.held(), 60);
    drop(bytes);
    assert_eq!(b.held(), 0);
    assert_eq!(Arc::strong_count(&obj), 1, "no pin keeps the entry");
}

/// A client runs at most `client_requests` backend requests; a slot wait
/// is bounded.
#[tokio::test(start_paused = true)]
async fn request_slots_are_shared_and_bounded() {
    let s = shares(100, 1000);
    let global = Arc::new(Semaphore::new(3));
    let (a, b) = (s.client(), s.client());
    let _a1 = a.request_slot(&global).await.unwrap();
    let _a2 = a.request_slot(&global).await.unwrap();
    let err = a.request_slot(&global).await.unwrap_err();
    assert!(matches!(err, BudgetError::Busy { .. }), "{err}");
    let _b1 = b
        .request_slot(&global)
        .await
        .expect("the other client still has a slot");
    let err = b.request_slot(&global).await.unwrap_err();
    assert!(matches!(err, BudgetError::Busy { .. }), "{err}");
}

/// Growing a hold counts the client's other holds, not its own.
#[tokio::test(start_paused = true)]
async fn a_hold_grows_within_the_share() {
    let s = shares(100, 1000);
    let a = s.client();
    let mut h = a.acquire(10).await.unwrap();
    assert!(
        h.try_grow(400),
        "nothing else held: one reservation may pass the share"
    );
    h.shrink(50);
    let other = a.acquire(40).await.unwrap();
    let mut h2 = a.acquire(5).await.unwrap();
    assert!(!h2.try_grow(20), "50 + 40 + 20 > 100");
    drop(other);
    h2.grow(20).await.unwrap();
    assert_eq!(a.held(), 70);
}

/// A stream whose consumer holds none of its parts gets its next part past
/// the client's share — but never past the clients' total.
#[tokio::test(start_paused = true)]
async fn the_next_part_of_a_reading_stream_stays_within_the_total() {
    let s = shares(100, 150);
    let (a, b) = (s.client(), s.client());
    let live = AtomicU64::new(0);
    let _a = a.acquire(100).await.unwrap();
    let part = a
        .acquire_next_part(20, &live)
        .await
        .expect("a reading stream is not held back by its client's share");
    drop(part);
    let b_held = b.acquire(40).await.unwrap();
    let err = a.acquire_next_part(20, &live).await.unwrap_err();
    assert!(matches!(err, BudgetError::Share { .. }), "{err}");
    drop(b_held);
    a.acquire_next_part(20, &live).await.unwrap();
}
