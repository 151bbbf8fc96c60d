//! aws-chunked decoding against AWS's published example ("Signature
//! Calculations for the Authorization Header: Transferring Payload in
//! Multiple Chunks": 65 KiB of `a` in a 64 KiB and a 1 KiB chunk).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::facade::config::FacadeKey;
use crate::facade::sigv4::{Keys, PayloadCheck, RequestParts, Verifier};

const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
const CHUNK1: &str = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648";
const CHUNK2: &str = "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497";
const LAST: &str = "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9";

/// The example request's signer, from its seed signature.
fn signer() -> Box<ChunkSigner> {
    let keys = Keys::new(vec![FacadeKey {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: sluice_storage::s3::Secret::new(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        buckets: Vec::new(),
    }]);
    let v = Verifier {
        keys: Arc::new(keys),
        region: "us-east-1".into(),
        max_skew: Duration::from_secs(900),
    };
    let mut h = HeaderMap::new();
    for (k, val) in [
        ("host", "s3.amazonaws.com"),
        ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
        ("content-length", "66824"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    ] {
        h.insert(k, HeaderValue::from_static(val));
    }
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
         SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;\
         x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}"
    );
    h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
    let parts = RequestParts {
        method: "PUT",
        path: "/examplebucket/chunkObject.txt",
        query: "",
        headers: &h,
    };
    let now = crate::facade::time::parse_amz_date("20130524T000000Z").unwrap();
    match v.verify(&parts, now).expect("the seed signature verifies") {
        (_, PayloadCheck::Chunked { signer: Some(s) }) => s,
        (_, other) => panic!("{other:?}"),
    }
}

fn body(sigs: [&str; 3]) -> Vec<u8> {
    let mut b = format!("10000;chunk-signature={}\r\n", sigs[0]).into_bytes();
    b.extend(std::iter::repeat_n(b'a', 65536));
    b.extend(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).bytes());
    b.extend(std::iter::repeat_n(b'a', 1024));
    b.extend(format!("\r\n0;chunk-signature={}\r\n\r\n", sigs[2]).bytes());
    b
}

/// Decodes `body` fed in pieces of `step` bytes.
fn decode(decoder: &mut Decoder, body: &[u8], step: usize) -> Result<Vec<u8>, S3Error> {
    let mut out = Vec::new();
    for piece in body.chunks(step) {
        decoder.feed(piece, &mut |d: &[u8]| {
            out.extend_from_slice(d);
            Ok(())
        })?;
    }
    decoder.finish()?;
    Ok(out)
}

#[test]
fn the_signed_example_decodes_in_any_pieces() {
    assert_eq!(
        body([CHUNK1, CHUNK2, LAST]).len(),
        66824,
        "the example's Content-Length"
    );
    for step in [1, 7, 4096, 100_000] {
        let mut d = Decoder::new(Some(signer()));
        let out = decode(&mut d, &body([CHUNK1, CHUNK2, LAST]), step).unwrap();
        assert_eq!(out.len(), 66560);
        assert!(out.iter().all(|&b| b == b'a'));
        assert_eq!(d.decoded(), 66560);
    }
}

#[test]
fn a_wrong_chunk_signature_or_a_cut_body_is_refused() {
    let mut d = Decoder::new(Some(signer()));
    let e = decode(&mut d, &body([CHUNK1, CHUNK1, LAST]), 4096).unwrap_err();
    assert_eq!(e.code, "SignatureDoesNotMatch");
    let b = body([CHUNK1, CHUNK2, LAST]);
    let mut d = Decoder::new(Some(signer()));
    let e = decode(&mut d, &b[..b.len() - 10], 4096).unwrap_err();
    assert_eq!(e.code, "IncompleteBody");
}

#[test]
fn unsigned_trailers_carry_a_checked_crc32() {
    let data = b"hello, sluice";
    let crc = base64(&crc32fast::hash(data).to_be_bytes());
    let raw = format!("d\r\nhello, sluice\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n");
    let mut h = HeaderMap::new();
    h.insert(
        "x-amz-trailer",
        HeaderValue::from_static("x-amz-checksum-crc32"),
    );
    let mut d = Decoder::new(None);
    let out = decode(&mut d, raw.as_bytes(), 3).unwrap();
    assert_eq!(out, data);
    let mut sum = Checksum::of(&h).expect("a crc32 is announced");
    sum.update(&out);
    sum.check(d.trailers()).unwrap();
    let mut sum = Checksum::of(&h).unwrap();
    sum.update(b"hello, sluicf");
    assert_eq!(sum.check(d.trailers()).unwrap_err().code, "BadDigest");
}

#[test]
fn base64_pads() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
