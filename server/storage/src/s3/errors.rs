//! SDK errors → [`StorageError`].
//!
//! The kind comes from the HTTP status and the S3 error code; the message is
//! built from the operation, the code and the status only. The SDK error is
//! kept as the `source` and never formatted into the message: the SDK's
//! request dumps may carry signed headers.

use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::endpoint::RefusedAddress;
use crate::{ErrorKind, ObjectUri, StorageError};

/// The guarded resolver's refusal somewhere in the chain of `err`.
fn refused_address<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RefusedAddress> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// Codes S3 and S3-compatible servers use to ask clients to back off.
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
];

/// Converts the error of operation `op` (a lowercase word: `get`, `list`, …) on `uri`.
pub(super) fn map<E>(
    err: SdkError<E, HttpResponse>,
    uri: &ObjectUri,
    op: &'static str,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let shown = uri.to_string();
    // The guarded resolver refused the endpoint's address: nothing was sent.
    let refused = refused_address(&err).map(ToString::to_string);
    let (kind, message, retry_after) = match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code();
            let (kind, what) = classify(status, code);
            let retry_after = ctx
                .raw()
                .headers()
                .get("retry-after")
                .and_then(parse_retry_after);
            let message = match code {
                Some(code) => format!("s3 {op}: {what} ({code}, http {status})"),
                None => format!("s3 {op}: {what} (http {status})"),
            };
            (kind, message, retry_after)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Unavailable, format!("s3 {op}: timed out"), None),
        SdkError::DispatchFailure(_) if refused.is_some() => (
            ErrorKind::PermissionDenied,
            format!("s3 {op}: {}", refused.as_deref().unwrap_or_default()),
            None,
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => (
            ErrorKind::Unavailable,
            format!("s3 {op}: timed out connecting"),
            None,
        ),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Unavailable,
            format!("s3 {op}: could not reach the endpoint"),
            None,
        ),
        SdkError::ResponseError(_) => (
            ErrorKind::Protocol,
            format!("s3 {op}: unparseable response"),
            None,
        ),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Other,
            format!("s3 {op}: could not build the request (credentials or configuration)"),
            None,
        ),
        _ => (ErrorKind::Other, format!("s3 {op}: request failed"), None),
    };
    let mut out = StorageError::new(kind, shown, message).with_source(err);
    if let (ErrorKind::Throttled, Some(after)) = (kind, retry_after) {
        out = out.with_retry_after(after);
    }
    out
}

/// HTTP status of a service error, if the server answered.
pub(super) fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    }
}

/// What a status and an S3 error code mean to a caller, in words.
pub(super) fn classify(status: u16, code: Option<&str>) -> (ErrorKind, &'static str) {
    match (status, code.unwrap_or("")) {
        (_, "NoSuchBucket") => (ErrorKind::NotFound, "no such bucket"),
        (_, "NoSuchUpload") => (ErrorKind::NotFound, "no such upload"),
        (_, "NoSuchKey" | "NotFound") | (404, _) => (ErrorKind::NotFound, "no such object"),
        (_, "PreconditionFailed") | (412, _) => {
            (ErrorKind::Changed, "object changed: precondition failed")
        }
        (_, "InvalidRange") | (416, _) => (ErrorKind::InvalidArgument, "range not satisfiable"),
        (_, c) if THROTTLING_CODES.contains(&c) => {
            (ErrorKind::Throttled, "throttled by the server")
        }
        (429, _) => (ErrorKind::Throttled, "throttled by the server"),
        (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => (
            ErrorKind::PermissionDenied,
            "credentials expired or invalid",
        ),
        (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") | (401 | 403, _) => {
            (ErrorKind::PermissionDenied, "access denied")
        }
        // 400 RequestTimeout: the server gave up waiting for our body.
        (_, "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
            (ErrorKind::Unavailable, "server error")
        }
        (501, _) | (_, "NotImplemented") => {
            (ErrorKind::Unsupported, "not implemented by the server")
        }
        (400, _) => (ErrorKind::InvalidArgument, "request rejected as invalid"),
        (500..=599, _) => (ErrorKind::Unavailable, "server error"),
        _ => (ErrorKind::Other, "unexpected response"),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by S3 servers).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_the_kinds_callers_act_on() {
        let cases: &[(u16, Option<&str>, ErrorKind)] = &[
            (404, Some("NoSuchKey"), ErrorKind::NotFound),
            (404, Some("NoSuchBucket"), ErrorKind::NotFound),
            (404, None, ErrorKind::NotFound),
            (403, Some("AccessDenied"), ErrorKind::PermissionDenied),
            (403, None, ErrorKind::PermissionDenied),
            (400, Some("ExpiredToken"), ErrorKind::PermissionDenied),
            (400, Some("InvalidArgument"), ErrorKind::InvalidArgument),
            (400, Some("RequestTimeout"), ErrorKind::Unavailable),
            (412, Some("PreconditionFailed"), ErrorKind::Changed),
            (416, Some("InvalidRange"), ErrorKind::InvalidArgument),
            (503, Some("SlowDown"), ErrorKind::Throttled),
            (429, None, ErrorKind::Throttled),
            (503, None, ErrorKind::Unavailable),
            (500, Some("InternalError"), ErrorKind::Unavailable),
            (501, Some("NotImplemented"), ErrorKind::Unsupported),
            (409, Some("BucketNotEmpty"), ErrorKind::Other),
        ];
        for &(status, code, kind) in cases {
            assert_eq!(classify(status, code).0, kind, "{status} {code:?}");
        }
    }

    #[test]
    fn service_errors_keep_their_source_out_of_the_message() {
        use aws_sdk_s3::operation::head_object::HeadObjectError;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        let meta = ErrorMetadata::builder()
            .code("SlowDown")
            .message("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE")
            .build();
        let mut raw = HttpResponse::new(StatusCode::try_from(503).unwrap(), SdkBody::empty());
        raw.headers_mut().insert("retry-after", "2");
        let err = SdkError::service_error(HeadObjectError::generic(meta), raw);
        let uri = ObjectUri::parse("s3://bkt/k").unwrap();
        let e = map(err, &uri, "head");
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            e.to_string(),
            "throttled: s3://bkt/k: s3 head: throttled by the server (SlowDown, http 503)"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
