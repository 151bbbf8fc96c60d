//! TFRecord framing: writing records and indexing files of them.
//!
//! A TFRecord file is a sequence of records, each
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC32C of those 8 bytes | data | u32 masked CRC32C of data
//! ```
//!
//! where a CRC is masked as `((crc >> 15) | (crc << 17)) + 0xa282ead8`
//! (wrapping), so that a CRC of data that itself holds CRCs does not
//! degenerate. A record therefore takes `16 + length` bytes.
//!
//! An index lists each record's `offset size` (size `16 + length`), one
//! line per record, in file order: the format NVIDIA DALI reads and
//! `tfrecord2idx` of the `tfrecord` Python package writes ([`index_line`]).
//!
//! [`Indexer`] builds one incrementally: it is fed the file in chunks of
//! any size and keeps only a 12-byte header between them, so any object
//! can be indexed in bounded memory. Without CRC checks it needs only each
//! record's header: after one it moves [`Indexer::position`] past the data,
//! and a caller reading by ranges can skip it. A record is yielded only
//! once the bytes after it (or the end of the data at [`Indexer::finish`])
//! prove that it is whole, so a truncated last record yields an error and
//! no entry.

use std::io;

/// Bytes before a record's data: the length and its masked CRC.
pub const HEADER_LEN: usize = 12;
/// Bytes after a record's data: its masked CRC.
pub const FOOTER_LEN: usize = 4;
/// The constant added to a rotated CRC.
const MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a CRC32C as TFRecord files store it.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// The masked CRC32C of `data`.
pub fn masked_crc(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

/// The 12 bytes that precede a record of `len` bytes of data.
pub fn header(len: u64) -> [u8; HEADER_LEN] {
    let len = len.to_le_bytes();
    let mut out = [0; HEADER_LEN];
    out[..8].copy_from_slice(&len);
    out[8..].copy_from_slice(&masked_crc(&len).to_le_bytes());
    out
}

/// Appends `data` framed as one record to `out`.
pub fn encode_record(data: &[u8], out: &mut impl io::Write) -> io::Result<()> {
    out.write_all(&header(data.len() as u64))?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// The index line of a record: `offset size\n`.
pub fn index_line(entry: Entry) -> String {
    format!("{} {}\n", entry.offset, entry.size)
}

/// One record of an index: where it starts and the bytes it takes
/// (header, data and footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the record's first byte in the file.
    pub offset: u64,
    /// Bytes of the whole record: `16 + length`.
    pub size: u64,
}

/// Why a file is not a valid sequence of TFRecord records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The data ends inside a record.
    #[error(
        "TFRecord record at offset {offset} is truncated: expected {expected} bytes, found {found}"
    )]
    Truncated {
        /// The record's offset.
        offset: u64,
        /// Bytes the record needs (12 for a header not yet read).
        expected: u64,
        /// Bytes of it that the data holds.
        found: u64,
    },
    /// The CRC of the length field does not match.
    #[error(
        "TFRecord record at offset {offset}: length CRC mismatch \
         (stored {stored:#010x}, computed {computed:#010x}); not a TFRecord file, or corrupt"
    )]
    LengthCrc {
        /// The record's offset.
        offset: u64,
        /// The masked CRC in the file.
        stored: u32,
        /// The masked CRC of the length bytes.
        computed: u32,
    },
    /// The CRC of the data does not match.
    #[error(
        "TFRecord record at offset {offset}: data CRC mismatch \
         (stored {stored:#010x}, computed {computed:#010x})"
    )]
    DataCrc {
        /// The record's offset.
        offset: u64,
        /// The masked CRC in the file.
        stored: u32,
        /// The masked CRC of the data read.
        computed: u32,
    },
    /// A length so large that the record's end overflows a 64-bit offset.
    #[error("TFRecord record at offset {offset}: impossible length {length}")]
    Length {
        /// The record's offset.
        offset: u64,
        /// The length field.
        length: u64,
    },
}

/// Where the indexer is inside the current record.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting the header of the record starting at `start`.
    Header {
        start: u64,
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    /// Checking the data (CRC checks only).
    Data {
        start: u64,
        len: u64,
        left: u64,
        crc: u32,
    },
    /// Collecting the data CRC (CRC checks only).
    Footer {
        start: u64,
        len: u64,
        crc: u32,
        buf: [u8; FOOTER_LEN],
        have: usize,
    },
}

/// Builds the index of a TFRecord file fed in chunks; see the module
/// documentation.
#[derive(Debug)]
pub struct Indexer {
    verify_crc: bool,
    state: State,
    /// Offset of the next byte the indexer needs.
    position: u64,
    /// A record whose header was read but whose end was not yet seen
    /// (no CRC checks): released once data reaches its end.
    pending: Option<Entry>,
    /// Records complete and not yet taken.
    ready: Vec<Entry>,
    records: u64,
    bytes: u64,
}

impl Indexer {
    /// An indexer at offset 0; with `verify_crc`, every length and data
    /// CRC is checked (and every byte must be fed).
    pub fn new(verify_crc: bool) -> Self {
        Indexer {
            verify_crc,
            state: State::Header {
                start: 0,
                buf: [0; HEADER_LEN],
                have: 0,
            },
            position: 0,
            pending: None,
            ready: Vec::new(),
            records: 0,
            bytes: 0,
        }
    }

    /// Offset of the next byte needed: feed data from here on. Without CRC
    /// checks it jumps past each record's data once its header is read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records indexed so far (yielded or not).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Feeds `chunk`, the data from offset `at` on. Bytes before
    /// [`Self::position`] are skipped; `at` past it is a gap the caller
    /// left (a bug), reported as a panic.
    pub fn feed(&mut self, at: u64, chunk: &[u8]) -> Result<(), Error> {
        assert!(at <= self.position, "gap before offset {}", self.position);
        let end = at + chunk.len() as u64;
        while self.position < end {
            // Data up to `end` proves a pending record that ends there whole.
            self.release_pending(end);
            let from = (self.position - at) as usize;
            self.step(&chunk[from..])?;
        }
        self.release_pending(end);
        Ok(())
    }

    /// The records known to be complete since the last call, in order.
    pub fn take_entries(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.ready)
    }

    /// Ends the data at offset `end` (the object's size): the last
    /// records, or the error of a record that `end` cuts short. Returns
    /// the count of records and their bytes.
    pub fn finish(&mut self, end: u64) -> Result<(u64, u64), Error> {
        if let Some(entry) = self.pending
            && entry.offset + entry.size > end
        {
            return Err(truncated(entry.offset, entry.size, end));
        }
        self.release_pending(end);
        let (start, expected) = match self.state {
            State::Header { start, have, .. } if have == 0 && start >= end => {
                return Ok((self.records, self.bytes));
            }
            State::Header { start, .. } => (start, HEADER_LEN as u64),
            State::Data { start, len, .. } | State::Footer { start, len, .. } => {
                (start, record_size(len))
            }
        };
        Err(truncated(start, expected, end))
    }

    fn release_pending(&mut self, seen_up_to: u64) {
        if let Some(entry) = self.pending
            && entry.offset + entry.size <= seen_up_to
        {
            self.ready.push(entry);
            self.pending = None;
        }
    }

    /// Consumes bytes of `data` (at [`Self::position`]) for the current
    /// state.
    fn step(&mut self, data: &[u8]) -> Result<(), Error> {
        match &mut self.state {
            State::Header { start, buf, have } => {
                let n = (HEADER_LEN - *have).min(data.len());
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                self.position += n as u64;
                if *have == HEADER_LEN {
                    let (start, buf) = (*start, *buf);
                    self.header_done(start, &buf)?;
                }
                Ok(())
            }
            State::Data {
                start,
                len,
                left,
                crc,
            } => {
                let n = (*left).min(data.len() as u64) as usize;
                *crc = crc32c::crc32c_append(*crc, &data[..n]);
                *left -= n as u64;
                self.position += n as u64;
                if *left == 0 {
                    self.state = State::Footer {
                        start: *start,
                        len: *len,
                        crc: *crc,
                        buf: [0; FOOTER_LEN],
                        have: 0,
                    };
                }
                Ok(())
            }
            State::Footer {
                start,
                len,
                crc,
                buf,
                have,
            } => {
                let n = (FOOTER_LEN - *have).min(data.len());
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                self.position += n as u64;
                if *have == FOOTER_LEN {
                    let stored = u32::from_le_bytes(*buf);
                    let (start, len, computed) = (*start, *len, mask(*crc));
                    if stored != computed {
                        return Err(Error::DataCrc {
                            offset: start,
                            stored,
                            computed,
                        });
                    }
                    self.complete(start, len);
                }
                Ok(())
            }
        }
    }

    /// A whole header was read: check it, then read the data (CRC checks)
    /// or jump past the record.
    fn header_done(&mut self, start: u64, buf: &[u8; HEADER_LEN]) -> Result<(), Error> {
        let len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        if self.verify_crc {
            let stored = u32::from_le_bytes(buf[8..].try_into().expect("4 bytes"));
            let computed = masked_crc(&buf[..8]);
            if stored != computed {
                return Err(Error::LengthCrc {
                    offset: start,
                    stored,
                    computed,
                });
            }
        }
        if start
            .checked_add(len)
            .and_then(|e| e.checked_add(16))
            .is_none()
        {
            return Err(Error::Length {
                offset: start,
                length: len,
            });
        }
        if self.verify_crc {
            self.state = State::Data {
                start,
                len,
                left: len,
                crc: 0,
            };
            if len == 0 {
                self.step(&[])?;
            }
        } else {
            self.pending = Some(Entry {
                offset: start,
                size: record_size(len),
            });
            self.complete(start, len);
        }
        Ok(())
    }

    /// The record at `start` is done: the next header follows it.
    fn complete(&mut self, start: u64, len: u64) {
        let size = record_size(len);
        if self.verify_crc {
            self.ready.push(Entry {
                offset: start,
                size,
            });
        }
        self.records += 1;
        self.bytes += size;
        self.position = start + size;
        self.state = State::Header {
            start: self.position,
            buf: [0; HEADER_LEN],
            have: 0,
        };
    }
}

/// Bytes of a record with `len` bytes of data.
fn record_size(len: u64) -> u64 {
    len + (HEADER_LEN + FOOTER_LEN) as u64
}

fn truncated(offset: u64, expected: u64, end: u64) -> Error {
    Error::Truncated {
        offset,
        expected,
        found: end.saturating_sub(offset),
    }
}

#[cfg(test)]
#[path = "tfrecord_tests.rs"]
mod tests;
