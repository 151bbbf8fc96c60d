//! One place for RPC telemetry: the tower layer every gRPC request passes,
//! on every listener, before anything else sees it.
//!
//! For each request it opens the RPC's span (`rpc`, with the OpenTelemetry
//! RPC attributes; its parent is the client's W3C trace context when traces
//! are on), counts it in flight, and when the call is over records
//! `sluice_rpc_requests_total{method,code}`, `sluice_rpc_duration_seconds`
//! and a debug log line. "Over" is when the response's gRPC status is
//! known: in the response headers for a call that failed before its first
//! message (trailers-only: there is no body to wait for), otherwise in the
//! trailers after the last message — so a stream's duration is its whole transfer, up to the moment
//! the transport took its last message. A response body dropped before its
//! status (the client went away, or the server cancelled the call at
//! shutdown) counts as `cancelled`. The span is entered whenever the handler's
//! future or the response body is polled, so what the handler logs and the
//! spans it opens (session fetches, RangeEngine parts, backend requests) sit
//! under it; tasks a handler spawns are instrumented with the span where
//! they are spawned.
//!
//! Errors that become a status are logged where they are converted
//! ([`crate::api::status`]), once, with their source chain, inside this
//! span; this layer logs only the outcome.
//!
//! The `method` label comes from a closed set: a path that is not one of
//! the service's methods counts as `unknown` (a client chooses the path).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::metrics::{Method, RpcMetrics, code_name};

/// The layer (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct RpcLayer {
    metrics: RpcMetrics,
    /// Traces are exported: take the parent from the request.
    traces: bool,
}

impl RpcLayer {
    pub(crate) fn new(metrics: RpcMetrics, traces: bool) -> Self {
        RpcLayer { metrics, traces }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RpcLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Rpc<S> {
    inner: S,
    layer: RpcLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Rpc<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = Method::of_path(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = method.path(),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.method = method.as_str(),
            rpc.grpc.status_code = Empty,
        );
        if self.layer.traces {
            let _ = span.set_parent(super::traces::parent_of(request.headers()));
        }
        let call = Call::start(&self.layer.metrics, method, span);
        let inner = {
            let _entered = call.span.enter();
            self.inner.call(request)
        };
        RpcFuture {
            inner,
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, polled inside the RPC's span.
    pub(crate) struct RpcFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<RpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let call = this.call.as_ref().expect("polled after completion");
            let _entered = call.span.enter();
            this.inner.poll(cx)
        };
        let result = std::task::ready!(polled);
        let mut call = this.call.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                // Trailers-only: the call failed before its first message,
                // and is over (the transport does not poll an empty body).
                let call = match status_of(response.headers()) {
                    Some(code) => {
                        call.finish(code, message_of(response.headers()));
                        None
                    }
                    None => Some(call),
                };
                Ok(response.map(|inner| RpcBody { inner, call }))
            }
            Err(error) => {
                call.finish(tonic::Code::Unknown, None);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body, polled inside the RPC's span; the call ends with
    /// its trailers.
    pub(crate) struct RpcBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = match this.call.as_ref() {
            Some(call) => {
                let _entered = call.span.enter();
                this.inner.poll_frame(cx)
            }
            None => this.inner.poll_frame(cx),
        };
        let frame = std::task::ready!(polled);
        if let Some(mut call) = this.call.take() {
            match &frame {
                Some(Ok(f)) if f.is_trailers() => {
                    let trailers = f.trailers_ref().expect("checked");
                    let code = status_of(trailers).unwrap_or(tonic::Code::Unknown);
                    call.finish(code, message_of(trailers));
                }
                None => call.finish(tonic::Code::Unknown, None),
                Some(Err(_)) => call.finish(tonic::Code::Unknown, None),
                Some(Ok(_)) => *this.call = Some(call),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call in progress; dropped unfinished, it counts as `cancelled`.
#[derive(Debug)]
struct Call {
    metrics: RpcMetrics,
    method: Method,
    started: Instant,
    span: Span,
    done: bool,
}

impl Call {
    fn start(metrics: &RpcMetrics, method: Method, span: Span) -> Call {
        metrics.in_flight(method).inc();
        Call {
            metrics: metrics.clone(),
            method,
            started: Instant::now(),
            span,
            done: false,
        }
    }

    fn finish(&mut self, code: tonic::Code, message: Option<String>) {
        self.record(code_name(code), server_fault(code));
        let _entered = self.span.enter();
        tracing::debug!(
            method = self.method.as_str(),
            code = code_name(code),
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            message,
            "rpc finished"
        );
    }

    fn record(&mut self, code: &'static str, fault: bool) {
        self.done = true;
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.finished(self.method, code, seconds);
        self.span.record("rpc.grpc.status_code", code);
        if fault {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled", false);
        }
    }
}

/// Whether a code means the server failed (the OpenTelemetry RPC
/// conventions mark only these spans as errors).
fn server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from(value.parse::<i32>().ok()?))
}

fn message_of(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("grpc-message")?.to_str().ok()?;
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
    (!decoded.is_empty()).then(|| decoded.into_owned())
}

#[cfg(test)]
mod tests;
