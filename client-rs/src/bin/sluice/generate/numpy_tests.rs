use super::*;

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(data[at..at + 2].try_into().unwrap())
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
}

#[test]
fn npy_header_is_version_1_and_aligned() {
    let header = npy_header("|u1", &[1000]);
    // 10 + 62 bytes of dict + newline: past 64, so 128 (as NumPy's own).
    assert_eq!(header.len(), 128);
    assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
    assert_eq!(u16_at(&header, 8) as usize, header.len() - 10);
    let dict = std::str::from_utf8(&header[10..]).unwrap();
    assert!(dict.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (1000,), }"));
    assert!(dict.ends_with(" \n"));
    assert_eq!(npy_size(1000), 1128);
    let scalar = npy_header("<i8", &[]);
    assert!(
        std::str::from_utf8(&scalar[10..])
            .unwrap()
            .starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (), }")
    );
    assert_eq!(scalar.len() % 64, 0);
    // A shape long enough to need a second 64-byte line.
    let big = npy_header("|u1", &[u64::MAX, u64::MAX]);
    assert_eq!(big.len(), 128);
}

/// The members of a zip archive, read through its central directory and
/// checked against the local headers and data descriptors.
fn members(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let end = zip.len() - 22;
    assert_eq!(u32_at(zip, end), 0x0605_4b50);
    let count = u16_at(zip, end + 10) as usize;
    let (cd_size, cd_start) = (
        u32_at(zip, end + 12) as usize,
        u32_at(zip, end + 16) as usize,
    );
    assert_eq!(
        cd_start + cd_size,
        end,
        "directory right before its end record"
    );
    let mut at = cd_start;
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(zip, at), 0x0201_4b50);
        assert_eq!(u16_at(zip, at + 10), 0, "stored");
        let (flags, crc, size) = (
            u16_at(zip, at + 8),
            u32_at(zip, at + 16),
            u32_at(zip, at + 20),
        );
        assert_eq!(u32_at(zip, at + 24), size);
        let name_len = u16_at(zip, at + 28) as usize;
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        let local = u32_at(zip, at + 42) as usize;
        assert_eq!(u32_at(zip, local), 0x0403_4b50);
        assert_eq!(&zip[local + 30..local + 30 + name_len], name.as_bytes());
        let data_at = local + 30 + name_len;
        let data = zip[data_at..data_at + size as usize].to_vec();
        assert_eq!(crc32fast::hash(&data), crc, "{name}");
        if flags & STREAMED != 0 {
            let descriptor = data_at + size as usize;
            assert_eq!(u32_at(zip, descriptor), 0x0807_4b50);
            assert_eq!(u32_at(zip, descriptor + 4), crc);
            assert_eq!(u32_at(zip, descriptor + 8), size);
        } else {
            assert_eq!(u32_at(zip, local + 14), crc);
        }
        out.push((name, data));
        at += 46 + name_len;
    }
    out
}

#[test]
fn npz_is_a_stored_zip_of_two_npy_members() {
    let sample: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut zip = Vec::new();
    write_npz(&mut zip, sample.len() as u64, 42, |out| {
        out.write_all(&sample)
    })
    .unwrap();
    assert_eq!(zip.len() as u64, npz_size(5000));
    let members = members(&zip);
    assert_eq!(members.len(), 2);
    let (x_name, x) = &members[0];
    assert_eq!(x_name, "x.npy");
    let header = npy_header("|u1", &[5000]);
    assert_eq!(&x[..header.len()], header.as_slice());
    assert_eq!(&x[header.len()..], sample.as_slice());
    let (y_name, y) = &members[1];
    assert_eq!(y_name, "y.npy");
    assert_eq!(&y[y.len() - 8..], &42i64.to_le_bytes());
    assert_eq!(y.len(), 128 + 8);
}
