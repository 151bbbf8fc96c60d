use super::*;

#[test]
fn keys_never_leave_their_prefix() {
    let prefixes = [
        "s3://bkt/train/",
        "s3://127.0.0.1:9000/bkt/train/",
        "az://acct/container/train/",
        "gs://bucket-x/train/",
        "file:///data/train/",
        "s3://bkt",
    ];
    let escapes = [
        "..",
        "../x",
        "a/../../x",
        "a/./b",
        "%2e%2e/x",
        "a/%2E%2e/x",
        ".%2e/x",
        "a\\..\\x",
        "a/..\\x",
        "a\0b",
    ];
    for p in prefixes {
        let prefix = ObjectUri::parse(p).unwrap();
        for key in escapes {
            let e = object_uri(&prefix, key).expect_err(&format!("{p} + {key:?}"));
            assert_eq!(e.code, "InvalidArgument", "{p} + {key:?}");
        }
        for key in ["a/b", "a..b/c", "...", "a/.b", "dir/"] {
            let uri = object_uri(&prefix, key).unwrap_or_else(|e| panic!("{p} + {key}: {e}"));
            assert!(uri.to_string().starts_with(&prefix.to_string()), "{uri}");
            assert!(uri.key().ends_with(key), "{uri} ends with {key}");
        }
    }
    let file = ObjectUri::parse("file:///data/train/").unwrap();
    let uri = object_uri(&file, "a//b").unwrap();
    assert_eq!(
        uri.to_string(),
        "file:///data/train/a/b",
        "one spelling, still inside"
    );
}

#[test]
fn operations_are_told_apart_by_method_and_query() {
    use Operation::*;
    let q = Query::parse;
    let op = |m: Method, b: Option<&str>, k: &str, query: &str| operation(&m, b, k, &q(query));
    assert_eq!(op(Method::GET, None, "", ""), list_buckets);
    assert_eq!(
        op(Method::GET, Some("b"), "", "list-type=2&prefix=a"),
        list_objects_v2
    );
    assert_eq!(
        op(Method::GET, Some("b"), "", "prefix=a&marker=x"),
        list_objects
    );
    assert_eq!(op(Method::GET, Some("b"), "", "versioning"), other);
    assert_eq!(
        op(Method::GET, Some("b"), "k", "x-id=GetObject"),
        get_object
    );
    assert_eq!(
        op(Method::PUT, Some("b"), "k", "x-id=PutObject"),
        put_object
    );
    assert_eq!(
        op(Method::PUT, Some("b"), "k", "partNumber=1&uploadId=u"),
        upload_part
    );
    assert_eq!(op(Method::PUT, Some("b"), "k", "acl"), other);
    assert_eq!(
        op(Method::POST, Some("b"), "k", "uploads"),
        create_multipart_upload
    );
    assert_eq!(
        op(Method::POST, Some("b"), "k", "uploadId=u"),
        complete_multipart_upload
    );
    assert_eq!(
        op(Method::DELETE, Some("b"), "k", "uploadId=u"),
        abort_multipart_upload
    );
    assert_eq!(op(Method::POST, Some("b"), "", "delete"), delete_objects);
    assert_eq!(op(Method::HEAD, Some("b"), "", ""), head_bucket);
}
