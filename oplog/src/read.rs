//! Reading whole logs: one file or several rotated ones, zstd-compressed
//! (recognised by the frame's magic number, whatever the name) or plain.
//!
//! A file the daemon was writing when it died ends in an unfinished zstd
//! frame: its records up to the last flushed block are read, and the file
//! is reported as cut short rather than failing the whole read. The active
//! file of a running daemon reads the same way.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::Record;
use crate::tsv::{ParseError, RecordReader};

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What reading one or more log files gave.
#[derive(Debug, Default)]
pub struct LogRead {
    /// Every record, sorted by start time.
    pub records: Vec<Record>,
    /// Files that ended early (a crash, or a file still being written),
    /// with the reason; their records up to that point are in `records`.
    pub cut_short: Vec<(PathBuf, String)>,
}

/// Why a log could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A line is not a record.
    #[error("{}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong where.
        #[source]
        source: ParseError,
    },
}

/// Reads every record of `paths`, in start order.
pub fn read_logs(paths: &[PathBuf]) -> Result<LogRead, ReadError> {
    let mut out = LogRead::default();
    for path in paths {
        read_one(path, &mut out)?;
    }
    // Stable: records of one instant keep their file order.
    out.records.sort_by_key(|r| r.start);
    Ok(out)
}

fn read_one(path: &Path, out: &mut LogRead) -> Result<(), ReadError> {
    let open_error = |source| ReadError::Open {
        path: path.to_owned(),
        source,
    };
    let mut reader = RecordReader::new(open(path).map_err(open_error)?);
    while let Some(next) = reader.next_record() {
        match next {
            Ok(record) => out.records.push(record),
            Err(ParseError::Io { line, source }) => {
                let why = format!("stopped after line {line}: {source}");
                out.cut_short.push((path.to_owned(), why));
                return Ok(());
            }
            Err(source) => {
                return Err(ReadError::Parse {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The decompressed text of `path`.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead>> {
    let mut file = BufReader::new(File::open(path)?);
    let zstd = file.fill_buf()?.starts_with(&ZSTD_MAGIC);
    Ok(if zstd {
        Box::new(BufReader::new(zstd::Decoder::with_buffer(file)?))
    } else {
        Box::new(file)
    })
}

/// The whole decompressed text of `path` (for tests and tools that want
/// the lines themselves).
pub fn to_string(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::tsv::{HEADER, write_record};

    fn record(i: u64) -> Record {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i);
        Record {
            thread: 0,
            op: "GET".into(),
            client_id: "sluiced".into(),
            n_objects: 1,
            bytes: i,
            endpoint: "file://".into(),
            file: format!("file:///d/{i}"),
            error: String::new(),
            start,
            first_byte: None,
            end: start + Duration::from_millis(1),
            range_offset: None,
            range_length: None,
        }
    }

    fn text(range: std::ops::Range<u64>) -> String {
        let mut s = HEADER.to_owned();
        for i in range {
            write_record(&mut s, i, &record(i));
        }
        s
    }

    #[test]
    fn plain_and_compressed_files_merge_in_start_order() {
        let dir = tempfile::tempdir().unwrap();
        let late = dir.path().join("late.csv.zst");
        std::fs::write(&late, zstd::encode_all(text(5..8).as_bytes(), 3).unwrap()).unwrap();
        let early = dir.path().join("early.csv");
        std::fs::write(&early, text(0..5)).unwrap();
        let read = read_logs(&[late, early]).unwrap();
        let bytes: Vec<u64> = read.records.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, (0..8).collect::<Vec<_>>());
        assert!(read.cut_short.is_empty());
    }

    #[test]
    fn a_frame_cut_short_gives_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crashed.csv.zst");
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(text(0..10).as_bytes()).unwrap();
        enc.flush().unwrap();
        // More text, compressed but never flushed: a crash loses it.
        enc.write_all(b"10\t0\tGET\t").unwrap();
        std::fs::write(&path, enc.get_ref()).unwrap();
        let read = read_logs(std::slice::from_ref(&path)).unwrap();
        assert_eq!(read.records.len(), 10);
        assert_eq!(read.cut_short.len(), 1, "{:?}", read.cut_short);
        assert_eq!(read.cut_short[0].0, path);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read_logs(&[PathBuf::from("/nonexistent/ops.csv.zst")]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/ops.csv.zst"),
            "{err}"
        );
    }
}
