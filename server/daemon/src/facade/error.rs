//! S3 errors: a code, an HTTP status and a message, rendered as S3's error
//! document (`<Error><Code>…</Code><Message>…</Message><Resource>…</Resource>
//! <RequestId>…</RequestId></Error>`); answers to HEAD carry no body.
//!
//! Engine and storage errors take their code and status from the daemon's
//! one table ([`crate::errors`]) and are logged there, once. Messages say
//! what failed in the facade's terms (bucket and key as the client named
//! them), never a backend URI, a credential or a signature.

use sluice_engine::ReadError;
use sluice_storage::{ErrorKind, StorageError};

use crate::errors::{Category, log_failure};

/// An S3 error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// S3's error code, e.g. `NoSuchKey`.
    pub code: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What happened, in words.
    pub message: String,
    /// `/bucket/key` as the client named it, when known.
    pub resource: Option<String>,
    /// Extra headers (`Content-Range` of a 416).
    pub headers: Vec<(&'static str, String)>,
}

impl S3Error {
    /// An error of `code` with `status`.
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        S3Error {
            code,
            status,
            message: message.into(),
            resource: None,
            headers: Vec::new(),
        }
    }

    /// The same error about `resource`.
    pub fn on(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// A bucket the facade does not serve.
    pub fn no_such_bucket(bucket: &str) -> Self {
        S3Error::new("NoSuchBucket", 404, "the specified bucket does not exist")
            .on(format!("/{bucket}"))
    }

    /// A key the principal may not use.
    pub fn access_denied(resource: &str) -> Self {
        S3Error::new("AccessDenied", 403, "access denied").on(resource)
    }

    /// A malformed argument.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        S3Error::new("InvalidArgument", 400, message)
    }

    /// An operation the facade does not implement.
    pub fn not_implemented(what: &str) -> Self {
        S3Error::new(
            "NotImplemented",
            501,
            format!("{what} is not implemented by this facade"),
        )
    }

    /// A failed storage operation (logged here, once).
    pub fn storage(e: &StorageError, resource: &str) -> Self {
        let category = Category::of_kind(e.kind());
        log_failure(category.row().s3, category.server_fault(), e);
        let message = match e.kind() {
            ErrorKind::NotFound => "the specified key does not exist".to_owned(),
            _ => e.message().to_owned(),
        };
        Self::of_category(category, message).on(resource)
    }

    /// A failed read through the engine (logged here, once).
    pub fn read(e: &ReadError, resource: &str) -> Self {
        match e {
            ReadError::Storage(s) => Self::storage(s, resource),
            ReadError::Memory { .. } => {
                let category = Category::of_read(e);
                log_failure(category.row().s3, true, e);
                Self::of_category(category, "the daemon's memory is busy; retry").on(resource)
            }
        }
    }

    fn of_category(category: Category, message: impl Into<String>) -> Self {
        let row = category.row();
        S3Error::new(row.s3, row.http, message)
    }

    /// The error document.
    pub fn body(&self, request_id: &str) -> String {
        let mut x = super::xml::Xml::new();
        x.open("Error");
        x.elem("Code", self.code);
        x.elem("Message", &self.message);
        if let Some(r) = &self.resource {
            x.elem("Resource", r);
        }
        x.elem("RequestId", request_id);
        x.close("Error");
        x.finish()
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for S3Error {}
