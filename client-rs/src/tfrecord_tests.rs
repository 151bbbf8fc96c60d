use proptest::prelude::*;

use super::*;

/// A file of records with these data lengths, and its expected index.
fn file_of(lens: &[usize]) -> (Vec<u8>, Vec<Entry>) {
    let mut file = Vec::new();
    let mut entries = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        let offset = file.len() as u64;
        encode_record(&data, &mut file).unwrap();
        entries.push(Entry {
            offset,
            size: len as u64 + 16,
        });
    }
    (file, entries)
}

/// Indexes `file` fed in chunks of `chunk`, starting each chunk at the
/// indexer's position as a ranged reader would.
fn index(file: &[u8], chunk: usize, verify: bool) -> Result<Vec<Entry>, Error> {
    let mut indexer = Indexer::new(verify);
    let mut entries = Vec::new();
    while (indexer.position() as usize) < file.len() {
        let at = indexer.position() as usize;
        let end = (at + chunk).min(file.len());
        indexer.feed(at as u64, &file[at..end])?;
        entries.extend(indexer.take_entries());
    }
    let (records, bytes) = indexer.finish(file.len() as u64)?;
    entries.extend(indexer.take_entries());
    assert_eq!(records, entries.len() as u64);
    assert_eq!(bytes, entries.iter().map(|e| e.size).sum::<u64>());
    Ok(entries)
}

#[test]
fn masked_crcs_match_the_tfrecord_package() {
    // From `tfrecord.writer.TFRecordWriter.masked_crc` (Python).
    assert_eq!(masked_crc(b"hello"), 0x191c_1fbb);
    assert_eq!(&header(5)[8..], &[0xea, 0xb2, 0x04, 0x3e]);
    assert_eq!(&header(5)[..8], &5u64.to_le_bytes());
}

#[test]
fn encoded_record_is_framed() {
    let mut out = Vec::new();
    encode_record(b"hello", &mut out).unwrap();
    assert_eq!(out.len(), 5 + 16);
    assert_eq!(&out[..12], &header(5));
    assert_eq!(&out[12..17], b"hello");
    assert_eq!(&out[17..], &[0xbb, 0x1f, 0x1c, 0x19]);
}

#[test]
fn round_trip_in_any_chunking_with_and_without_crcs() {
    let (file, expected) = file_of(&[0, 1, 1000, 70_000, 3]);
    for chunk in [1, 7, 12, 16, 4096, file.len()] {
        for verify in [false, true] {
            assert_eq!(index(&file, chunk, verify).unwrap(), expected, "{chunk}");
        }
    }
    assert_eq!(index(&[], 8, true).unwrap(), []);
    assert_eq!(index_line(expected[2]), format!("{} 1016\n", 1 + 16 + 16));
}

#[test]
fn without_crcs_the_data_is_skipped() {
    let (file, _) = file_of(&[1_000_000, 5]);
    let mut indexer = Indexer::new(false);
    indexer.feed(0, &file[..HEADER_LEN]).unwrap();
    assert_eq!(indexer.position(), 1_000_016);
    // Not yet proven whole: nothing past it was seen.
    assert_eq!(indexer.take_entries(), []);
    // One byte past it proves it whole.
    indexer
        .feed(1_000_016, &file[1_000_016..1_000_017])
        .unwrap();
    let first = Entry {
        offset: 0,
        size: 1_000_016,
    };
    assert_eq!(indexer.take_entries(), [first]);
    indexer.feed(1_000_017, &file[1_000_017..]).unwrap();
    assert_eq!(indexer.position(), file.len() as u64);
    assert_eq!(
        indexer.finish(file.len() as u64).unwrap(),
        (2, file.len() as u64)
    );
    let second = Entry {
        offset: 1_000_016,
        size: 21,
    };
    assert_eq!(indexer.take_entries(), [second]);
}

#[test]
fn truncated_records_name_offset_and_sizes() {
    let (file, entries) = file_of(&[100, 200]);
    let second = entries[1].offset;
    // Cut inside the data, inside the footer, inside the header.
    for (cut, expected) in [(second + 50, 216), (second + 214, 216), (second + 5, 12)] {
        for verify in [false, true] {
            let error = index(&file[..cut as usize], 64, verify).unwrap_err();
            assert_eq!(
                error,
                Error::Truncated {
                    offset: second,
                    expected,
                    found: cut - second
                },
                "cut at {cut}, verify {verify}"
            );
        }
    }
    let message = index(&file[..second as usize + 50], 64, false)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "TFRecord record at offset 116 is truncated: expected 216 bytes, found 50"
    );
}

#[test]
fn truncated_record_yields_no_entry() {
    let (file, entries) = file_of(&[100, 200]);
    let mut indexer = Indexer::new(false);
    let cut = &file[..file.len() - 1];
    indexer.feed(0, cut).unwrap();
    assert_eq!(indexer.take_entries(), [entries[0]]);
    assert!(indexer.finish(cut.len() as u64).is_err());
    assert_eq!(indexer.take_entries(), []);
}

#[test]
fn bad_data_crc_is_caught_only_when_checking() {
    let (mut file, entries) = file_of(&[10, 20, 30]);
    let second = entries[1].offset;
    file[second as usize + 12 + 3] ^= 0x01;
    assert_eq!(index(&file, 5, false).unwrap(), entries);
    let error = index(&file, 5, true).unwrap_err();
    assert!(
        matches!(error, Error::DataCrc { offset, .. } if offset == second),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("TFRecord record at offset 26: data CRC mismatch")
    );
}

#[test]
fn bad_length_crc_is_caught_when_checking() {
    let (mut file, entries) = file_of(&[10, 20]);
    file[entries[1].offset as usize + 9] ^= 0x80;
    let error = index(&file, 4096, true).unwrap_err();
    assert!(
        matches!(error, Error::LengthCrc { offset: 26, .. }),
        "{error:?}"
    );
}

#[test]
fn impossible_length_is_an_error() {
    let mut file = header(u64::MAX - 4).to_vec();
    file.extend_from_slice(&[0; 8]);
    let error = index(&file, 64, false).unwrap_err();
    assert_eq!(
        error,
        Error::Length {
            offset: 0,
            length: u64::MAX - 4
        }
    );
}

proptest! {
    #[test]
    fn any_chunking_gives_the_index(
        lens in prop::collection::vec(0usize..300, 0..12),
        chunk in 1usize..200,
        verify in any::<bool>(),
    ) {
        let (file, expected) = file_of(&lens);
        prop_assert_eq!(index(&file, chunk, verify).unwrap(), expected);
    }
}
