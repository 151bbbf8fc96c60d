//! The channel to the daemon as the generated client sees it: failures of
//! the connection itself become UNAVAILABLE statuses that name the daemon.
//!
//! A status the daemon sends is its answer; a status tonic makes up locally
//! when the connection fails says only what the socket said ("Connection
//! refused", "h2 protocol error: error reading a body from connection",
//! code UNKNOWN for the latter). When the daemon is stopped, killed or
//! restarting, a caller should see which daemon is gone and one code to act
//! on, whatever the call and wherever it broke. So [`Transport`] wraps the
//! [`Channel`] and maps
//!
//! - an error of a call before any response (cannot connect, the connection
//!   was lost before the answer) to UNAVAILABLE `cannot reach the sluice
//!   daemon at <address>: <cause>`;
//! - an error while a response streams (the connection broke midway, the
//!   stream was reset) to UNAVAILABLE `lost the connection to the sluice
//!   daemon at <address>: <cause>`.
//!
//! Codes that carry a reason of their own (RESOURCE_EXHAUSTED from an HTTP/2
//! ENHANCE_YOUR_CALM, PERMISSION_DENIED from INADEQUATE_SECURITY, …) keep
//! it; the message still names the daemon.
//!
//! The channel itself reconnects: after a failed call it connects again on
//! the next one, so a restarted daemon on the same address is used by the
//! same `Client` without any action of the caller.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::Service;

/// A [`Channel`] whose transport failures name the daemon (module docs).
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    channel: Channel,
    address: Arc<str>,
}

impl Transport {
    pub(crate) fn new(channel: Channel, address: &str) -> Self {
        Transport {
            channel,
            address: address.into(),
        }
    }
}

/// Where a connection failure happened.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Call,
    Response,
}

/// The status for a failure of the connection to `address`.
fn connection_status(address: &str, stage: Stage, local: Status) -> Status {
    let code = match local.code() {
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Unavailable => Code::Unavailable,
        other => other,
    };
    let message = match stage {
        Stage::Call => format!("cannot reach the sluice daemon at {address}"),
        Stage::Response => format!("lost the connection to the sluice daemon at {address}"),
    };
    let cause = local.message();
    if cause.is_empty() {
        Status::new(code, message)
    } else {
        Status::new(code, format!("{message}: {cause}"))
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.channel.poll_ready(cx).map_err(|e| {
            connection_status(&self.address, Stage::Call, Status::from_error(Box::new(e)))
        })
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.channel.call(request);
        let address = Arc::clone(&self.address);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response.map(|body| {
                    Body::new(ResponseBody {
                        inner: body,
                        address,
                    })
                })),
                Err(e) => Err(connection_status(
                    &address,
                    Stage::Call,
                    Status::from_error(Box::new(e)),
                )),
            }
        })
    }
}

/// A response body whose errors (the connection broke while it streamed)
/// name the daemon.
struct ResponseBody {
    inner: Body,
    address: Arc<str>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|status| connection_status(&this.address, Stage::Response, status))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_codes_become_unavailable_naming_the_daemon() {
        for code in [
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
            Code::Unavailable,
        ] {
            let local = Status::new(code, "error reading a body from connection");
            let status = connection_status("unix:///run/s.sock", Stage::Response, local);
            assert_eq!(status.code(), Code::Unavailable, "{code:?}");
            assert_eq!(
                status.message(),
                "lost the connection to the sluice daemon at unix:///run/s.sock: \
                 error reading a body from connection"
            );
        }
        let status = connection_status("unix:///s", Stage::Call, Status::unavailable(""));
        assert_eq!(
            status.message(),
            "cannot reach the sluice daemon at unix:///s"
        );
    }

    #[test]
    fn codes_with_a_reason_of_their_own_are_kept() {
        let local = Status::resource_exhausted("h2 protocol error: enhance your calm");
        let status = connection_status("unix:///s", Stage::Call, local);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("unix:///s"));
        assert!(status.message().contains("enhance your calm"));
    }
}
