//! Checking the pieces of one fetch as they arrive.
//!
//! A fetch's result comes as one or more messages with its id, in object
//! order: leased extents (shared memory) or chunks (stream delivery), the
//! first with the object's metadata, the final one with `last` set. An
//! [`Assembly`] holds what the next piece must be and refuses anything else,
//! so a caller never sees a gap, an overlap, an extent outside its segment,
//! or an object shorter or longer than its metadata and range promise.
//!
//! The checks are pure; the driver turns an accepted extent into a mapped
//! [`super::Lease`] only after its range was checked against the segment.

use std::ops::Range;

use bytes::Bytes;
use sluice_proto::v1::{FetchChunk, LeasedExtent, ObjectMeta};

use crate::error::{Error, Result};
use crate::read::expected_len;

/// An accepted piece of a fetch.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The object's metadata, on the fetch's first piece.
    pub(crate) meta: Option<ObjectMeta>,
    /// Where the piece starts in the object.
    pub(crate) object_offset: u64,
    pub(crate) piece: Piece,
    /// The fetch is complete.
    pub(crate) last: bool,
}

/// The bytes of an accepted piece.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `len` bytes at `offset` of `segment`, checked to lie inside it.
    Extent {
        segment: u32,
        offset: usize,
        len: usize,
        lease_id: u64,
    },
    /// Bytes from a chunk.
    Chunk(Bytes),
    /// Nothing (an empty object or range, a final empty message).
    Empty,
}

/// The state of one fetch.
#[derive(Debug)]
pub(crate) struct Assembly {
    uri: String,
    range: Option<Range<u64>>,
    /// Set by the first piece.
    meta_seen: bool,
    next_offset: u64,
    remaining: u64,
}

impl Assembly {
    pub(crate) fn new(uri: &str, range: Option<Range<u64>>) -> Self {
        Assembly {
            uri: uri.to_owned(),
            next_offset: range.as_ref().map_or(0, |r| r.start),
            range,
            meta_seen: false,
            remaining: 0,
        }
    }

    /// Checks a leased extent; `segment_size` is the size of the segment it
    /// names, `None` when the session has no such segment.
    pub(crate) fn extent(
        &mut self,
        extent: LeasedExtent,
        segment_size: Option<u64>,
    ) -> Result<Accepted> {
        let piece = if extent.length == 0 {
            Piece::Empty
        } else {
            let size = segment_size.ok_or_else(|| {
                self.error(format!("extent in unknown segment {}", extent.segment))
            })?;
            let end = extent.segment_offset.checked_add(extent.length);
            if end.is_none_or(|end| end > size) {
                return Err(self.error(format!(
                    "extent {}+{} outside segment {} of {size} bytes",
                    extent.segment_offset, extent.length, extent.segment
                )));
            }
            if extent.lease_id == 0 {
                return Err(self.error("non-empty extent without a lease"));
            }
            // Both fit in usize: the segment is mapped, so its size does.
            Piece::Extent {
                segment: extent.segment,
                offset: extent.segment_offset as usize,
                len: extent.length as usize,
                lease_id: extent.lease_id,
            }
        };
        self.advance(
            extent.meta,
            extent.object_offset,
            extent.length,
            extent.last,
            piece,
        )
    }

    /// Checks a chunk of stream delivery.
    pub(crate) fn chunk(&mut self, chunk: FetchChunk) -> Result<Accepted> {
        let len = chunk.data.len() as u64;
        let piece = if chunk.data.is_empty() {
            Piece::Empty
        } else {
            Piece::Chunk(chunk.data)
        };
        self.advance(chunk.meta, chunk.offset, len, chunk.last, piece)
    }

    /// The checks common to both kinds of piece.
    fn advance(
        &mut self,
        meta: Option<ObjectMeta>,
        offset: u64,
        len: u64,
        last: bool,
        piece: Piece,
    ) -> Result<Accepted> {
        let meta = if self.meta_seen {
            None
        } else {
            let meta = meta.ok_or_else(|| self.error("first piece has no metadata"))?;
            self.meta_seen = true;
            self.remaining = expected_len(meta.size, self.range.as_ref());
            Some(meta)
        };
        if len > 0 && offset != self.next_offset {
            return Err(self.error(format!(
                "piece at offset {offset}, expected {}",
                self.next_offset
            )));
        }
        if len > self.remaining {
            return Err(self.error(format!(
                "{} bytes more than the object holds",
                len - self.remaining
            )));
        }
        self.next_offset += len;
        self.remaining -= len;
        if last && self.remaining > 0 {
            return Err(self.error(format!("fetch ended {} bytes short", self.remaining)));
        }
        Ok(Accepted {
            meta,
            object_offset: offset,
            piece,
            last,
        })
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::protocol(&self.uri, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            uri: "f://a".into(),
            size,
            ..Default::default()
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn extent(
        meta: Option<ObjectMeta>,
        object_offset: u64,
        segment: u32,
        segment_offset: u64,
        length: u64,
        lease_id: u64,
        last: bool,
    ) -> LeasedExtent {
        LeasedExtent {
            id: 1,
            meta,
            object_offset,
            segment,
            segment_offset,
            length,
            lease_id,
            last,
        }
    }

    fn chunk(meta: Option<ObjectMeta>, offset: u64, data: &'static [u8], last: bool) -> FetchChunk {
        FetchChunk {
            id: 1,
            meta,
            offset,
            data: Bytes::from_static(data),
            last,
        }
    }

    const SEGMENT: Option<u64> = Some(1 << 20);

    #[test]
    fn one_extent_holds_a_small_object() {
        let mut fetch = Assembly::new("f://a", None);
        let accepted = fetch
            .extent(extent(meta(100), 0, 3, 4096, 100, 77, true), SEGMENT)
            .unwrap();
        assert_eq!(accepted.meta.unwrap().size, 100);
        assert!(accepted.last);
        assert_eq!(
            accepted.piece,
            Piece::Extent {
                segment: 3,
                offset: 4096,
                len: 100,
                lease_id: 77
            }
        );
    }

    #[test]
    fn extents_of_a_range_follow_each_other() {
        let mut fetch = Assembly::new("f://a", Some(10..40));
        let first = fetch.extent(extent(meta(1000), 10, 0, 0, 20, 1, false), SEGMENT);
        assert!(first.unwrap().meta.is_some());
        let second = fetch
            .extent(extent(None, 30, 1, 500, 10, 2, true), SEGMENT)
            .unwrap();
        assert_eq!((second.meta.is_none(), second.object_offset), (true, 30));
    }

    #[test]
    fn an_open_range_reads_to_the_end() {
        let mut fetch = Assembly::new("f://a", Some(90..u64::MAX));
        assert!(
            fetch
                .extent(extent(meta(100), 90, 0, 0, 10, 1, true), SEGMENT)
                .is_ok()
        );
    }

    #[test]
    fn an_empty_object_is_one_empty_piece() {
        let mut fetch = Assembly::new("f://a", None);
        let accepted = fetch
            .extent(extent(meta(0), 0, 0, 0, 0, 0, true), None)
            .unwrap();
        assert_eq!((accepted.piece, accepted.last), (Piece::Empty, true));
    }

    fn refused(range: Option<Range<u64>>, pieces: Vec<LeasedExtent>, size: Option<u64>) -> String {
        let mut fetch = Assembly::new("f://a", range);
        for piece in pieces {
            if let Err(error) = fetch.extent(piece, size) {
                assert_eq!(error.code(), tonic::Code::DataLoss);
                assert!(error.to_string().starts_with("f://a: "), "{error}");
                return error.to_string();
            }
        }
        panic!("all pieces accepted");
    }

    #[test]
    fn extents_outside_their_segment_are_refused() {
        let error = refused(
            None,
            vec![extent(meta(10), 0, 0, 4090, 10, 1, true)],
            Some(4096),
        );
        assert!(error.contains("outside segment 0"), "{error}");
        let error = refused(
            None,
            vec![extent(meta(10), 0, 0, u64::MAX - 2, 10, 1, true)],
            SEGMENT,
        );
        assert!(error.contains("outside segment"), "{error}");
        let error = refused(None, vec![extent(meta(10), 0, 5, 0, 10, 1, true)], None);
        assert!(error.contains("unknown segment 5"), "{error}");
        let error = refused(None, vec![extent(meta(10), 0, 0, 0, 10, 0, true)], SEGMENT);
        assert!(error.contains("without a lease"), "{error}");
    }

    #[test]
    fn gaps_overlaps_and_wrong_totals_are_refused() {
        let gap = vec![
            extent(meta(30), 0, 0, 0, 10, 1, false),
            extent(None, 11, 0, 10, 19, 2, true),
        ];
        assert!(refused(None, gap, SEGMENT).contains("at offset 11, expected 10"));
        let overlap = vec![
            extent(meta(30), 0, 0, 0, 10, 1, false),
            extent(None, 5, 0, 10, 25, 2, true),
        ];
        assert!(refused(None, overlap, SEGMENT).contains("expected 10"));
        let short = vec![extent(meta(30), 0, 0, 0, 20, 1, true)];
        assert!(refused(None, short, SEGMENT).contains("10 bytes short"));
        let long = vec![extent(meta(30), 0, 0, 0, 31, 1, true)];
        assert!(refused(None, long, SEGMENT).contains("1 bytes more"));
        let long_range = vec![extent(meta(1000), 100, 0, 0, 60, 1, true)];
        assert!(refused(Some(100..150), long_range, SEGMENT).contains("10 bytes more"));
        let wrong_start = vec![extent(meta(1000), 0, 0, 0, 50, 1, true)];
        assert!(refused(Some(100..150), wrong_start, SEGMENT).contains("expected 100"));
        let no_meta = vec![extent(None, 0, 0, 0, 5, 1, true)];
        assert!(refused(None, no_meta, SEGMENT).contains("no metadata"));
    }

    #[test]
    fn chunks_are_checked_the_same_way() {
        let mut fetch = Assembly::new("f://a", None);
        let first = fetch.chunk(chunk(meta(5), 0, b"he", false)).unwrap();
        assert_eq!(first.piece, Piece::Chunk(Bytes::from_static(b"he")));
        let last = fetch.chunk(chunk(None, 2, b"llo", true)).unwrap();
        assert_eq!((last.object_offset, last.last), (2, true));

        let mut fetch = Assembly::new("f://a", None);
        fetch.chunk(chunk(meta(5), 0, b"he", false)).unwrap();
        let error = fetch.chunk(chunk(None, 3, b"lo", true)).unwrap_err();
        assert!(error.to_string().contains("expected 2"), "{error}");

        let mut fetch = Assembly::new("f://a", None);
        fetch.chunk(chunk(meta(5), 0, b"he", false)).unwrap();
        let error = fetch.chunk(chunk(None, 2, b"", true)).unwrap_err();
        assert!(error.to_string().contains("3 bytes short"), "{error}");
    }
}
