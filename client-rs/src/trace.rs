//! W3C trace context for calls, so that a trainer's trace continues into
//! the daemon.
//!
//! A [`TraceContext`] is a `traceparent` (and optional `tracestate`) in the
//! W3C format. It is sent as request metadata with every call made inside
//! [`in_trace`] (a tokio task-local scope: nested async code inherits it),
//! or else with every call of a client given one by
//! [`crate::Client::set_trace_context`]. The daemon, when it exports
//! traces, makes its RPC span a child of that span, and follows its
//! sampling decision. A `Session` takes the context of its opening: its
//! fetches are spans of that call.
//!
//! ```no_run
//! # async fn f(client: sluice_client::Client) -> sluice_client::Result<()> {
//! use sluice_client::trace::{TraceContext, in_trace};
//! let cx = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)?;
//! let bytes = in_trace(cx, client.read_to_bytes("s3://bucket/key", None)).await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, PoisonError, RwLock};

use tonic::metadata::{Ascii, MetadataValue};

use crate::credentials::BearerAuth;
use crate::error::{Error, Result};

tokio::task_local! {
    static CONTEXT: TraceContext;
}

/// A W3C trace context (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: MetadataValue<Ascii>,
    tracestate: Option<MetadataValue<Ascii>>,
}

impl TraceContext {
    /// A context from a `traceparent` header value
    /// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) and an
    /// optional `tracestate`. Fails with `InvalidArgument` on anything else.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Result<Self> {
        if !valid_traceparent(traceparent) {
            return Err(Error::from(tonic::Status::invalid_argument(format!(
                "not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>): {traceparent:?}"
            ))));
        }
        let tracestate = match tracestate.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| {
                Error::from(tonic::Status::invalid_argument(
                    "tracestate is not a valid header value",
                ))
            })?),
        };
        Ok(TraceContext {
            traceparent: traceparent.parse().expect("checked: visible ASCII"),
            tracestate,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        self.traceparent.to_str().expect("ASCII")
    }

    fn add_to(&self, metadata: &mut tonic::metadata::MetadataMap) {
        metadata.insert("traceparent", self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            metadata.insert("tracestate", state.clone());
        }
    }
}

/// Runs `f` with `context` sent by every call it makes.
pub async fn in_trace<F: Future>(context: TraceContext, f: F) -> F::Output {
    CONTEXT.scope(context, f).await
}

fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

/// The metadata every call carries: the token, and the trace context of
/// the task or of the client.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallMetadata {
    pub(crate) auth: BearerAuth,
    pub(crate) trace: Arc<RwLock<Option<TraceContext>>>,
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(
        &mut self,
        request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.auth.call(request)?;
        let metadata = request.metadata_mut();
        let scoped = CONTEXT.try_with(|cx| cx.add_to(metadata)).is_ok();
        if !scoped {
            let client = self.trace.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cx) = client.as_ref() {
                cx.add_to(metadata);
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_w3c_traceparents_are_taken() {
        TraceContext::new(PARENT, Some("vendor=x")).unwrap();
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx: y",
        ] {
            assert!(TraceContext::new(bad, None).is_err(), "{bad:?}");
        }
    }

    fn sent(m: &mut CallMetadata) -> Option<String> {
        let r = m.call(tonic::Request::new(())).unwrap();
        r.metadata()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn the_task_scope_wins_over_the_client() {
        let mut m = CallMetadata::default();
        assert_eq!(sent(&mut m), None);
        let client = "00-11111111111111111111111111111111-2222222222222222-00";
        *m.trace.write().unwrap() = Some(TraceContext::new(client, None).unwrap());
        assert_eq!(sent(&mut m).as_deref(), Some(client));
        let cx = TraceContext::new(PARENT, None).unwrap();
        let mut inner = m.clone();
        let got = in_trace(cx, async move { sent(&mut inner) }).await;
        assert_eq!(got.as_deref(), Some(PARENT));
    }
}
