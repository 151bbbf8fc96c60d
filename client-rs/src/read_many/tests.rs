//! The reassembly of `ReadMany` results, fed with synthetic messages.

use futures::stream;
use sluice_proto::v1::ItemError;
use tonic::Code;

use super::*;

fn meta(uri: &str, size: u64) -> ObjectMeta {
    ObjectMeta {
        uri: uri.to_owned(),
        size,
        ..Default::default()
    }
}

fn chunk(
    index: u32,
    meta: Option<ObjectMeta>,
    offset: u64,
    data: &'static [u8],
    last: bool,
) -> ReadManyResponse {
    ReadManyResponse {
        index,
        meta,
        offset,
        data: Bytes::from_static(data),
        last,
        error: None,
    }
}

fn failure(index: u32, code: Code, message: &str) -> ReadManyResponse {
    ReadManyResponse {
        index,
        last: true,
        error: Some(ItemError {
            code: code as i32,
            message: message.to_owned(),
        }),
        ..Default::default()
    }
}

fn items(uris: &[&str]) -> Vec<ReadItem> {
    uris.iter().map(|&u| u.into()).collect()
}

async fn collect(
    items: Vec<ReadItem>,
    messages: Vec<Result<ReadManyResponse, tonic::Status>>,
) -> Vec<ItemResult> {
    ReadManyStream::new(items, stream::iter(messages))
        .collect()
        .await
}

#[tokio::test]
async fn chunks_are_joined_per_item_in_delivery_order() {
    let results = collect(
        items(&["f://a", "f://b"]),
        vec![
            Ok(chunk(1, Some(meta("f://b", 2)), 0, b"xy", true)),
            Ok(chunk(0, Some(meta("f://a", 5)), 0, b"he", false)),
            Ok(chunk(0, None, 2, b"llo", true)),
        ],
    )
    .await;
    assert_eq!(results.len(), 2);
    let (index, result) = &results[0];
    assert_eq!(*index, 1);
    assert_eq!(result.as_ref().unwrap().1, Bytes::from_static(b"xy"));
    let (index, result) = &results[1];
    assert_eq!(*index, 0);
    let (meta, data) = result.as_ref().unwrap();
    assert_eq!(meta.uri, "f://a");
    assert_eq!(data, &Bytes::from_static(b"hello"));
}

#[tokio::test]
async fn item_error_fails_only_that_item() {
    let results = collect(
        items(&["f://a", "f://gone"]),
        vec![
            Ok(failure(1, Code::NotFound, "not found: f://gone")),
            Ok(chunk(0, Some(meta("f://a", 1)), 0, b"a", true)),
        ],
    )
    .await;
    let error = results[0].1.as_ref().unwrap_err();
    assert_eq!(results[0].0, 1);
    assert!(error.is_not_found());
    assert_eq!(error.to_string(), "not found: f://gone");
    assert_eq!(results[1].1.as_ref().unwrap().1, Bytes::from_static(b"a"));
}

#[tokio::test]
async fn ranged_item_expects_the_range_length() {
    let item = ReadItem::from(("f://a".to_owned(), 10..13));
    let results = collect(
        vec![item],
        vec![
            Ok(chunk(0, Some(meta("f://a", 100)), 10, b"ab", false)),
            Ok(chunk(0, None, 12, b"c", true)),
        ],
    )
    .await;
    assert_eq!(results[0].1.as_ref().unwrap().1, Bytes::from_static(b"abc"));
}

#[tokio::test]
async fn short_item_is_an_error() {
    let results = collect(
        items(&["f://a"]),
        vec![Ok(chunk(0, Some(meta("f://a", 10)), 0, b"abc", true))],
    )
    .await;
    let error = results[0].1.as_ref().unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);
    assert!(error.to_string().contains("f://a"), "{error}");
}

#[tokio::test]
async fn offset_gap_fails_every_outstanding_item() {
    let results = collect(
        items(&["f://a", "f://b"]),
        vec![
            Ok(chunk(0, Some(meta("f://a", 4)), 0, b"ab", false)),
            Ok(chunk(0, None, 3, b"d", true)),
        ],
    )
    .await;
    assert_eq!(results.len(), 2);
    for (index, result) in &results {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.code(), Code::DataLoss);
        assert!(
            error.to_string().contains(["f://a", "f://b"][*index]),
            "{error}"
        );
    }
}

#[tokio::test]
async fn interleaved_items_break_the_stream() {
    let results = collect(
        items(&["f://a", "f://b"]),
        vec![
            Ok(chunk(0, Some(meta("f://a", 4)), 0, b"ab", false)),
            Ok(chunk(1, Some(meta("f://b", 1)), 0, b"x", true)),
        ],
    )
    .await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|(_, r)| r.as_ref().unwrap_err().code() == Code::DataLoss)
    );
}

#[tokio::test]
async fn status_mid_stream_fails_the_rest_with_its_code() {
    let results = collect(
        items(&["f://a", "f://b", "f://c"]),
        vec![
            Ok(chunk(2, Some(meta("f://c", 1)), 0, b"c", true)),
            Err(tonic::Status::unavailable("daemon draining")),
        ],
    )
    .await;
    assert_eq!(results.len(), 3);
    assert!(results[0].1.is_ok());
    let mut failed: Vec<usize> = results[1..].iter().map(|(i, _)| *i).collect();
    failed.sort_unstable();
    assert_eq!(failed, vec![0, 1]);
    assert!(
        results[1..]
            .iter()
            .all(|(_, r)| r.as_ref().unwrap_err().is_unavailable())
    );
}

#[tokio::test]
async fn early_end_fails_missing_items() {
    let results = collect(
        items(&["f://empty", "f://b"]),
        vec![Ok(chunk(0, Some(meta("f://empty", 0)), 0, b"", true))],
    )
    .await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].0, 0);
    assert!(results[0].1.as_ref().unwrap().1.is_empty());
    assert_eq!(results[1].0, 1);
    let error = results[1].1.as_ref().unwrap_err();
    assert!(error.to_string().contains("f://b"), "{error}");
}

#[tokio::test]
async fn duplicate_result_breaks_the_stream() {
    let results = collect(
        items(&["f://a", "f://b"]),
        vec![
            Ok(chunk(0, Some(meta("f://a", 1)), 0, b"a", true)),
            Ok(chunk(0, Some(meta("f://a", 1)), 0, b"a", true)),
        ],
    )
    .await;
    assert_eq!(results.len(), 2);
    assert!(results[0].1.is_ok());
    assert_eq!(results[1].0, 1);
    assert_eq!(results[1].1.as_ref().unwrap_err().code(), Code::DataLoss);
}
