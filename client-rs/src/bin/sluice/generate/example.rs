//! TFRecord records of `tf.train.Example`s, encoded by hand and streamed.
//!
//! Each record's data is an `Example` whose features map holds `label`
//! (an `Int64List` of one value) then `image` (a `BytesList` of one value,
//! the sample). The protobuf wire format puts a length before each
//! message, and every length here follows from the image's size, so the
//! whole encoding before the image bytes (the "prefix") is computed up
//! front and the image bytes, the bulk, are streamed after it: they end the
//! record's data. The record's data CRC is taken as the bytes pass.
//!
//! ```text
//! Example  { features: Features = 1 }
//! Features { feature: map<string, Feature> = 1 }    (entries: key = 1, value = 2)
//! Feature  { bytes_list: BytesList = 1 | int64_list: Int64List = 3 }
//! BytesList { value: repeated bytes = 1 }  Int64List { value: repeated int64 = 1, packed }
//! ```

use std::io::{self, Write};

use sluice_client::tfrecord;

/// Wire tag of field 1, length-delimited.
const FIELD_1: u8 = 0x0a;
/// Wire tag of field 2, length-delimited.
const FIELD_2: u8 = 0x12;
/// Wire tag of field 3, length-delimited.
const FIELD_3: u8 = 0x1a;

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

/// A length-delimited field's tag and length.
fn field(tag: u8, len: u64, out: &mut Vec<u8>) {
    out.push(tag);
    varint(len, out);
}

/// Bytes of a length-delimited field holding `len` bytes.
fn field_len(len: u64) -> u64 {
    1 + varint_len(len) + len
}

/// A features map entry's key and value header; the value (`len` bytes)
/// follows.
fn entry_head(key: &str, value_len: u64, out: &mut Vec<u8>) {
    field(
        FIELD_1,
        field_len(key.len() as u64) + field_len(value_len),
        out,
    );
    field(FIELD_1, key.len() as u64, out);
    out.extend_from_slice(key.as_bytes());
    field(FIELD_2, value_len, out);
}

/// The encoded `Example` up to (not including) the `image_len` image bytes.
pub fn example_prefix(label: i64, image_len: u64) -> Vec<u8> {
    let mut packed = Vec::new();
    varint(label as u64, &mut packed);
    let int64_list = field_len(packed.len() as u64);
    let label_feature = field_len(int64_list);
    let bytes_list = field_len(image_len);
    let image_feature = field_len(bytes_list);
    let entry = |key: &str, value: u64| field_len(field_len(key.len() as u64) + field_len(value));
    let features = entry("label", label_feature) + entry("image", image_feature);

    let mut out = Vec::with_capacity(64);
    field(FIELD_1, features, &mut out);
    entry_head("label", label_feature, &mut out);
    field(FIELD_3, int64_list, &mut out);
    field(FIELD_1, packed.len() as u64, &mut out);
    out.extend_from_slice(&packed);
    entry_head("image", image_feature, &mut out);
    field(FIELD_1, bytes_list, &mut out);
    field(FIELD_1, image_len, &mut out);
    debug_assert_eq!(out.len() as u64 + image_len, field_len(features));
    out
}

/// Bytes of the record of one example.
pub fn record_size(label: i64, image_len: u64) -> u64 {
    (tfrecord::HEADER_LEN + tfrecord::FOOTER_LEN) as u64
        + example_prefix(label, image_len).len() as u64
        + image_len
}

/// A writer that takes the CRC32C of what passes.
struct Crc32c<'w> {
    inner: &'w mut dyn Write,
    crc: u32,
}

impl Write for Crc32c<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one record: an example of `label` whose `image_len` image bytes
/// `image` writes.
pub fn write_record(
    out: &mut dyn Write,
    label: i64,
    image_len: u64,
    image: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let prefix = example_prefix(label, image_len);
    out.write_all(&tfrecord::header(prefix.len() as u64 + image_len))?;
    let mut data = Crc32c { inner: out, crc: 0 };
    data.write_all(&prefix)?;
    image(&mut data)?;
    let crc = tfrecord::mask(data.crc);
    out.write_all(&crc.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let encode = |v: u64| {
            let mut out = Vec::new();
            varint(v, &mut out);
            out
        };
        assert_eq!(encode(0), [0]);
        assert_eq!(encode(127), [127]);
        assert_eq!(encode(300), [0xac, 0x02]);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            assert_eq!(varint_len(v), encode(v).len() as u64, "{v}");
        }
    }

    #[test]
    fn example_matches_the_protobuf_encoding() {
        // `tf.train.Example` with label 7 then image b"abc", as Python's
        // protobuf serializes it.
        let expected: &[u8] = b"\n\"\n\x0e\n\x05label\x12\x05\x1a\x03\n\x01\x07\
                                \n\x10\n\x05image\x12\x07\n\x05\n\x03abc";
        let mut data = example_prefix(7, 3);
        data.extend_from_slice(b"abc");
        assert_eq!(data, expected);
    }

    #[test]
    fn record_is_framed_and_sized() {
        let image = vec![9u8; 200];
        let mut out = Vec::new();
        write_record(&mut out, 5, 200, |w| w.write_all(&image)).unwrap();
        assert_eq!(out.len() as u64, record_size(5, 200));
        let mut data = example_prefix(5, 200);
        data.extend_from_slice(&image);
        let mut expected = Vec::new();
        tfrecord::encode_record(&data, &mut expected).unwrap();
        assert_eq!(out, expected);
        // A large image needs longer varints.
        assert_eq!(
            record_size(1, 1 << 20) - (1 << 20),
            16 + example_prefix(1, 1 << 20).len() as u64
        );
    }
}
