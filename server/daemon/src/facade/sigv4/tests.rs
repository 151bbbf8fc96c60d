//! SigV4 against AWS's published examples (the S3 "Signature Version 4"
//! pages: GET object with a Range header, PUT object, a listing, a
//! presigned URL; and the derived-key example of the general reference).

use super::*;
use http::HeaderValue;

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn verifier(buckets: &[&str]) -> Verifier {
    let keys = Keys::new(vec![FacadeKey {
        access_key_id: AK.into(),
        secret_access_key: sluice_storage::s3::Secret::new(SK),
        buckets: buckets.iter().map(|b| (*b).to_owned()).collect(),
    }]);
    Verifier {
        keys: Arc::new(keys),
        region: "us-east-1".into(),
        max_skew: Duration::from_secs(900),
    }
}

fn at(s: &str) -> SystemTime {
    time::parse_amz_date(s).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn authorization(signed: &str, signature: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,SignedHeaders={signed},Signature={signature}"
    )
}

#[test]
fn the_derived_key_matches_the_general_reference() {
    // "Examples of how to derive a signing key for Signature Version 4":
    // secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20120215,
    // us-east-1, iam → f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d.
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k = step(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
    let k = step(k.as_ref(), "us-east-1");
    let k = step(k.as_ref(), "iam");
    let k = step(k.as_ref(), "aws4_request");
    assert_eq!(
        hex(k.as_ref()),
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    );
}

const GET_SIGNATURE: &str = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";

fn get_object(signature: &str) -> HeaderMap {
    headers(&[
        ("host", "examplebucket.s3.amazonaws.com"),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("x-amz-date", "20130524T000000Z"),
        (
            "authorization",
            &authorization("host;range;x-amz-content-sha256;x-amz-date", signature),
        ),
    ])
}

#[test]
fn get_object_with_a_range_verifies() {
    let h = get_object(GET_SIGNATURE);
    let parts = RequestParts {
        method: "GET",
        path: "/test.txt",
        query: "",
        headers: &h,
    };
    let (who, check) = verifier(&[])
        .verify(&parts, at("20130524T000500Z"))
        .unwrap();
    assert_eq!(who.access_key.as_deref(), Some(AK));
    assert!(matches!(check, PayloadCheck::Sha256(ref h) if h == EMPTY_SHA256));
}

#[test]
fn a_changed_request_or_signature_is_refused() {
    let v = verifier(&[]);
    let now = at("20130524T000000Z");
    let h = get_object(GET_SIGNATURE);
    let other = RequestParts {
        method: "GET",
        path: "/test2.txt",
        query: "",
        headers: &h,
    };
    assert_eq!(
        v.verify(&other, now).unwrap_err().code,
        "SignatureDoesNotMatch"
    );
    let bad = get_object(&GET_SIGNATURE.replace('f', "e"));
    let parts = RequestParts {
        method: "GET",
        path: "/test.txt",
        query: "",
        headers: &bad,
    };
    let e = v.verify(&parts, now).unwrap_err();
    assert_eq!((e.code, e.status), ("SignatureDoesNotMatch", 403));
    assert!(
        !e.message.contains("f0e8") && !e.message.contains("e0e8"),
        "{e}"
    );
    let h = get_object(GET_SIGNATURE);
    let parts = RequestParts {
        method: "GET",
        path: "/test.txt",
        query: "",
        headers: &h,
    };
    let e = v.verify(&parts, at("20130524T010001Z")).unwrap_err();
    assert_eq!((e.code, e.status), ("RequestTimeTooSkewed", 403));
    let e = verifier(&[]).verify(
        &RequestParts {
            headers: &get_object(GET_SIGNATURE).tap_key("AKIDOTHER"),
            ..parts
        },
        now,
    );
    assert_eq!(e.unwrap_err().code, "InvalidAccessKeyId");
    let mut wrong_region = verifier(&[]);
    wrong_region.region = "eu-west-1".into();
    assert_eq!(
        wrong_region.verify(&parts, now).unwrap_err().code,
        "AuthorizationHeaderMalformed"
    );
}

trait TapKey {
    fn tap_key(self, key: &str) -> HeaderMap;
}

impl TapKey for HeaderMap {
    fn tap_key(mut self, key: &str) -> HeaderMap {
        let auth = self["authorization"].to_str().unwrap().replace(AK, key);
        self.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        self
    }
}

#[test]
fn put_object_with_an_escaped_path_verifies() {
    let h = headers(&[
        ("host", "examplebucket.s3.amazonaws.com"),
        ("date", "Fri, 24 May 2013 00:00:00 GMT"),
        ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        (
            "x-amz-content-sha256",
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        ),
        (
            "authorization",
            &authorization(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            ),
        ),
    ]);
    let v = verifier(&[]);
    let now = at("20130524T000000Z");
    // `$` as sent raw and as sent escaped: one canonical form.
    for path in ["/test$file.text", "/test%24file.text"] {
        let parts = RequestParts {
            method: "PUT",
            path,
            query: "",
            headers: &h,
        };
        v.verify(&parts, now)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn a_listing_with_a_query_verifies() {
    let h = headers(&[
        ("host", "examplebucket.s3.amazonaws.com"),
        ("x-amz-date", "20130524T000000Z"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        (
            "authorization",
            &authorization(
                "host;x-amz-content-sha256;x-amz-date",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
        ),
    ]);
    let parts = RequestParts {
        method: "GET",
        path: "/",
        query: "prefix=J&max-keys=2",
        headers: &h,
    };
    verifier(&[])
        .verify(&parts, at("20130524T000000Z"))
        .unwrap();
}

#[test]
fn a_presigned_url_verifies_until_it_expires() {
    let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
    let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
        &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
    let parts = RequestParts {
        method: "GET",
        path: "/test.txt",
        query,
        headers: &h,
    };
    assert!(Verifier::is_signed(&parts));
    let v = verifier(&[]);
    let (_, check) = v.verify(&parts, at("20130524T120000Z")).unwrap();
    assert!(matches!(check, PayloadCheck::None));
    let e = v.verify(&parts, at("20130525T000001Z")).unwrap_err();
    assert_eq!((e.code, e.status), ("AccessDenied", 403));
}

#[test]
fn keys_limited_to_buckets() {
    let h = get_object(GET_SIGNATURE);
    let parts = RequestParts {
        method: "GET",
        path: "/test.txt",
        query: "",
        headers: &h,
    };
    let (who, _) = verifier(&["train"])
        .verify(&parts, at("20130524T000000Z"))
        .unwrap();
    assert!(who.may_use("train"));
    assert!(!who.may_use("other"));
    assert!(Principal::anonymous().may_use("other"));
}

#[test]
fn encoding_follows_s3() {
    assert_eq!(encode("a b/c~d*e", false), "a%20b/c~d%2Ae");
    assert_eq!(encode("a/b", true), "a%2Fb");
    assert_eq!(decode("a%2Fb+c"), "a/b+c");
}
