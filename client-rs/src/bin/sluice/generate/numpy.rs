//! NumPy files: `.npy` (format version 1.0) and `.npz` (a zip archive of
//! `.npy` members), written as a stream.
//!
//! An `.npy` file is the magic `\x93NUMPY`, the version (1, 0), a
//! little-endian u16 header length, then a Python dict literal (`descr`,
//! `fortran_order`, `shape`) padded with spaces and ended by `\n` so that
//! the data starts at a multiple of 64 bytes, then the data.
//!
//! The `.npz` is a zip archive with its members stored (method 0, no
//! compression): `x.npy`, the sample, and `y.npy`, its label (an int64
//! scalar). `x.npy` is streamed, so its CRC-32 is not known when its local
//! header goes out: the header sets flag bit 3 and the CRC and sizes follow
//! the data in a data descriptor, and the central directory repeats them
//! (what readers, Python's `zipfile` among them, use). No zip64: members
//! and archives stay under 4 GiB. Times are fixed at 1980-01-01 00:00 so
//! that a seed gives the same bytes on every run.

use std::io::{self, Write};

/// The zip format's 32-bit limit on sizes and offsets.
pub const ZIP_LIMIT: u64 = u32::MAX as u64;
/// Bytes before a member's data: local header (30) and name (5).
const LOCAL_HEADER: u64 = 30 + 5;
/// The data descriptor: signature, CRC and two sizes.
const DESCRIPTOR: u64 = 16;
/// A central directory entry: 46 bytes and the name (5).
const CENTRAL_ENTRY: u64 = 46 + 5;
/// The end of central directory record.
const END_RECORD: u64 = 22;
/// Version needed to extract: 2.0, the first with data descriptors.
const VERSION: u16 = 20;
/// Flag bit 3: CRC and sizes in a data descriptor after the data.
const STREAMED: u16 = 1 << 3;
/// MS-DOS date of 1980-01-01 (day 1, month 1, year 0 = 1980).
const DOS_DATE: u16 = (1 << 5) | 1;

/// The header of an `.npy` file for an array of `descr` (e.g. `|u1`) and
/// `shape` (empty for a scalar).
pub fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let shape = match shape {
        [] => "()".to_owned(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2) + dict + '\n', padded to 64.
    let total = (10 + dict.len() + 1).next_multiple_of(64);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let len = u16::try_from(total - 10).expect("a short header");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Bytes of an `.npy` file of `len` uint8 values.
pub fn npy_size(len: u64) -> u64 {
    npy_header("|u1", &[len]).len() as u64 + len
}

/// The `y.npy` member: an int64 scalar.
fn label_npy(label: i64) -> Vec<u8> {
    let mut out = npy_header("<i8", &[]);
    out.extend_from_slice(&label.to_le_bytes());
    out
}

/// Bytes of an `.npz` of a `len`-byte sample.
pub fn npz_size(len: u64) -> u64 {
    let members = npy_size(len) + label_npy(0).len() as u64;
    2 * (LOCAL_HEADER + CENTRAL_ENTRY) + DESCRIPTOR + members + END_RECORD
}

/// A writer that counts bytes and takes the CRC-32 of the current member.
struct Counted<'w> {
    inner: &'w mut dyn Write,
    written: u64,
    crc: crc32fast::Hasher,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A member as the central directory lists it.
struct Member {
    name: &'static str,
    flags: u16,
    crc: u32,
    size: u32,
    offset: u32,
}

/// Writes an `.npz` whose `x.npy` holds `len` bytes that `sample` writes
/// and whose `y.npy` holds `label`. `len` must keep it under [`ZIP_LIMIT`].
pub fn write_npz(
    out: &mut dyn Write,
    len: u64,
    label: i64,
    sample: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    assert!(npz_size(len) < ZIP_LIMIT, "npz past the zip limit");
    let mut out = Counted {
        inner: out,
        written: 0,
        crc: crc32fast::Hasher::new(),
    };
    local_header(&mut out, "x.npy", STREAMED, 0, 0)?;
    out.crc = crc32fast::Hasher::new();
    let start = out.written;
    out.write_all(&npy_header("|u1", &[len]))?;
    sample(&mut out)?;
    let x = Member {
        name: "x.npy",
        flags: STREAMED,
        crc: std::mem::take(&mut out.crc).finalize(),
        size: (out.written - start) as u32,
        offset: 0,
    };
    for field in [0x0807_4b50, x.crc, x.size, x.size] {
        out.write_all(&field.to_le_bytes())?;
    }
    let y_data = label_npy(label);
    let y = Member {
        name: "y.npy",
        flags: 0,
        crc: crc32fast::hash(&y_data),
        size: y_data.len() as u32,
        offset: out.written as u32,
    };
    local_header(&mut out, y.name, 0, y.crc, y.size)?;
    out.write_all(&y_data)?;
    central_directory(&mut out, &[x, y])
}

fn local_header(
    out: &mut impl Write,
    name: &str,
    flags: u16,
    crc: u32,
    size: u32,
) -> io::Result<()> {
    out.write_all(&0x0403_4b50u32.to_le_bytes())?;
    for field in [VERSION, flags, 0, 0, DOS_DATE] {
        out.write_all(&field.to_le_bytes())?;
    }
    for field in [crc, size, size] {
        out.write_all(&field.to_le_bytes())?;
    }
    out.write_all(&(name.len() as u16).to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    out.write_all(name.as_bytes())
}

fn central_directory(out: &mut Counted<'_>, members: &[Member]) -> io::Result<()> {
    let start = out.written;
    for m in members {
        out.write_all(&0x0201_4b50u32.to_le_bytes())?;
        // Made by, needed, flags, method (stored), time, date.
        for field in [VERSION, VERSION, m.flags, 0, 0, DOS_DATE] {
            out.write_all(&field.to_le_bytes())?;
        }
        for field in [m.crc, m.size, m.size] {
            out.write_all(&field.to_le_bytes())?;
        }
        // Name length; extra, comment, disk, internal attributes: none.
        for field in [m.name.len() as u16, 0, 0, 0, 0] {
            out.write_all(&field.to_le_bytes())?;
        }
        // External attributes: none; then where the local header is.
        for field in [0, m.offset] {
            out.write_all(&field.to_le_bytes())?;
        }
        out.write_all(m.name.as_bytes())?;
    }
    let size = (out.written - start) as u32;
    out.write_all(&0x0605_4b50u32.to_le_bytes())?;
    let count = members.len() as u16;
    for field in [0, 0, count, count] {
        out.write_all(&field.to_le_bytes())?;
    }
    for field in [size, start as u32] {
        out.write_all(&field.to_le_bytes())?;
    }
    out.write_all(&0u16.to_le_bytes())
}

#[cfg(test)]
#[path = "numpy_tests.rs"]
mod tests;
