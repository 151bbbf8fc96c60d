//! `oplog.client_requests`: each Read, ReadMany item and Session fetch is
//! a record with the RPC method as its operation and the peer's uid as its
//! client, beside the backend operations it caused.

use futures::StreamExt;
use sluice_client::{Client, SessionOptions};
use sluice_tests::daemon::TestDaemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_are_recorded_with_their_uid() {
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("ops.csv.zst");
    let d = TestDaemon::start_with(|c| {
        c.oplog.enabled = true;
        c.oplog.client_requests = true;
        c.oplog.path = path.clone();
    })
    .await;
    std::fs::write(d.root().join("a"), vec![1u8; 5000]).unwrap();
    std::fs::write(d.root().join("b"), vec![2u8; 7000]).unwrap();
    let (a, b, missing) = (d.file_uri("a"), d.file_uri("b"), d.file_uri("missing"));
    let client = Client::connect(&d.address()).await.unwrap();
    client.read_to_bytes(&a, Some(100..600)).await.unwrap();
    let mut many = client
        .read_many([b.as_str(), missing.as_str()], 0, true)
        .await
        .unwrap();
    while many.next().await.is_some() {}
    let session = client.session(SessionOptions::default()).await.unwrap();
    session.fetch(&a, None).await.unwrap();
    drop(session);
    d.stop().await.unwrap();

    let mut files: Vec<_> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let records = sluice_oplog::read_logs(&files).unwrap().records;
    // SAFETY: getuid(2) cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() }.to_string();
    let of = |op: &str| -> Vec<_> { records.iter().filter(|r| r.op == op).collect() };

    let read = of("Read");
    assert_eq!(read.len(), 1, "{records:#?}");
    assert_eq!(read[0].file, a);
    assert_eq!(read[0].client_id, uid);
    assert_eq!(
        (read[0].range_offset, read[0].range_length),
        (Some(100), Some(500))
    );
    assert_eq!(read[0].bytes, 500);

    let mut many = of("ReadMany");
    many.sort_by(|x, y| x.file.cmp(&y.file));
    assert_eq!(many.len(), 2, "{records:#?}");
    assert_eq!((many[0].file.as_str(), many[0].bytes), (b.as_str(), 7000));
    assert!(many[0].error.is_empty());
    assert_eq!(many[1].file, missing);
    assert!(!many[1].error.is_empty(), "{:?}", many[1]);

    let fetch = of("Session");
    assert_eq!(fetch.len(), 1, "{records:#?}");
    assert_eq!(
        (fetch[0].bytes, fetch[0].client_id.as_ref()),
        (5000, uid.as_str())
    );
    // The backend operations are there too, as the daemon's own.
    assert!(
        records
            .iter()
            .any(|r| r.client_id == "sluiced" && r.file == b && r.op == "GET"),
        "{records:#?}"
    );
}
