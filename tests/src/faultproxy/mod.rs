//! A fault-injecting HTTP/1.1 proxy in front of a real S3-compatible server.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every
//! request to the upstream (one upstream connection per request, sent with
//! `Connection: close`, so response framing never depends on the upstream's
//! keep-alive); the client side keeps its connection alive as HTTP/1.1 does.
//! For each `GET` or `HEAD` it draws, with a seeded RNG, whether to inject a
//! fault (probability [`FaultConfig::rate`]); the kinds ([`FaultKind`],
//! among [`FaultConfig::kinds`]) take turns, so that even a short run
//! injects every kind about equally often (a `HEAD` has no body: it only
//! gets the kinds that need none):
//!
//! | kind | what the client sees |
//! |---|---|
//! | `SlowDown` | `503 SlowDown`, no `Retry-After`; nothing reaches the upstream |
//! | `SlowDownRetryAfter` | the same with `Retry-After: 1` |
//! | `Stall` | no answer at all until the client gives up (its attempt timeout) or `stall_for` passes |
//! | `Reset` | the upstream's head and part of the body, then a TCP reset |
//! | `Truncate` | the head with its `Content-Length`, fewer body bytes, then a clean close |
//! | `WrongContentRange` | a `206` whose `Content-Range` is another span or total ([`http::wrong_content_range`]) |
//!
//! Body faults apply only to responses that have a `Content-Length` body of
//! at least two bytes (and `WrongContentRange` only to a `206`); where a
//! drawn fault does not apply (an error response), the response passes
//! unchanged and nothing is counted. [`FaultProxy::injected`] counts what was injected, by kind.
//!
//! Independently of the draw, [`FaultProxy::set_strip`] removes headers from
//! every response (`ETag`, `Last-Modified`: a server that sends no version),
//! and [`FaultProxy::hold_later_parts`] parks every ranged `GET` that does not
//! start at byte 0 until [`FaultProxy::release`], so a test can change an
//! object between the parts of one read.

pub mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_storage::s3::{S3Config, S3Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::http::{Head, read_body, read_head};

/// One kind of injected fault (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `503 SlowDown` without `Retry-After`.
    SlowDown,
    /// `503 SlowDown` with `Retry-After: 1`.
    SlowDownRetryAfter,
    /// No answer until the client closes.
    Stall,
    /// Part of the body, then a TCP reset.
    Reset,
    /// Part of the body, then a clean close.
    Truncate,
    /// A wrong `Content-Range` on a `206`.
    WrongContentRange,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::SlowDown,
        FaultKind::SlowDownRetryAfter,
        FaultKind::Stall,
        FaultKind::Reset,
        FaultKind::Truncate,
        FaultKind::WrongContentRange,
    ];

    /// Whether it can be injected into a response without a body (`HEAD`).
    pub fn without_body(self) -> bool {
        matches!(
            self,
            FaultKind::SlowDown | FaultKind::SlowDownRetryAfter | FaultKind::Stall
        )
    }
}

/// What the proxy injects.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Probability that one `GET`/`HEAD` draws a fault, 0 … 1.
    pub rate: f64,
    /// Seed of the RNG that draws faults, cut points and wrong ranges.
    pub seed: u64,
    /// Kinds injected, in turn.
    pub kinds: Vec<FaultKind>,
    /// Longest stall, should the client never give up.
    pub stall_for: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            rate: 0.0,
            seed: 1,
            kinds: FaultKind::ALL.to_vec(),
            stall_for: Duration::from_secs(60),
        }
    }
}

/// What the proxy saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injected {
    /// Requests received from clients.
    pub requests: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
}

impl Injected {
    /// Faults of every kind.
    pub fn total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Faults of `kind`.
    pub fn of(&self, kind: FaultKind) -> u64 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }
}

struct State {
    config: FaultConfig,
    rng: StdRng,
    strip: Vec<String>,
    seen: Injected,
    held: u64,
    /// Faults drawn so far for requests with and without a response body.
    turns: [usize; 2],
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// `true` while later parts are held.
    hold: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fault for one request, and a number for cut points.
    fn draw(&self, req: &Head) -> (Option<FaultKind>, u64) {
        let mut st = self.state();
        st.seen.requests += 1;
        let pick = st.rng.random::<u64>();
        let head = match req.method() {
            "GET" => false,
            "HEAD" => true,
            _ => return (None, pick),
        };
        let kinds: Vec<FaultKind> = st
            .config
            .kinds
            .iter()
            .copied()
            .filter(|k| !head || k.without_body())
            .collect();
        if kinds.is_empty() || st.rng.random::<f64>() >= st.config.rate {
            return (None, pick);
        }
        let turn = &mut st.turns[usize::from(head)];
        let kind = kinds[*turn % kinds.len()];
        *turn += 1;
        (Some(kind), pick)
    }

    fn count(&self, kind: FaultKind) {
        *self.state().seen.faults.entry(kind).or_default() += 1;
    }
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("injected", &self.injected())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr, config: FaultConfig) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                strip: Vec::new(),
                seen: Injected::default(),
                held: 0,
                turns: [0; 2],
            }),
            hold: watch::channel(false).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        conns.spawn(serve(client, s.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FaultProxy { addr, shared, task }
    }

    /// `127.0.0.1:port`, as written in `s3://host:port/bucket/key` URIs.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `server`'s test configuration with every endpoint through this proxy:
    /// the default one and the explicit `s3://127.0.0.1:<proxy port>/…`.
    pub fn s3_config(&self, server: &crate::s3server::S3Server) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint_url()),
            endpoints: vec![S3Endpoint {
                address: self.endpoint(),
                ..server.endpoint_config()
            }],
            ..server.config()
        }
    }

    /// Requests seen and faults injected so far.
    pub fn injected(&self) -> Injected {
        self.shared.state().seen.clone()
    }

    /// Changes the fault probability from now on.
    pub fn set_rate(&self, rate: f64) {
        self.shared.state().config.rate = rate;
    }

    /// Removes these headers (any case) from every response from now on.
    pub fn set_strip(&self, headers: &[&str]) {
        self.shared.state().strip = headers.iter().map(|h| (*h).to_owned()).collect();
    }

    /// Parks ranged GETs that do not start at byte 0 until [`release`](Self::release).
    pub fn hold_later_parts(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets every parked request (and later ones) through.
    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Requests parked so far by [`hold_later_parts`](Self::hold_later_parts).
    pub fn held(&self) -> u64 {
        self.shared.state().held
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection: requests in turn until either side closes.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut client = BufReader::new(client);
    while let Ok(Some(mut req)) = read_head(&mut client).await {
        if req.chunked() {
            let _ = respond(client.get_mut(), 501, "NotImplemented", None, true).await;
            return;
        }
        if req.get("expect").is_some() {
            req.remove("expect");
            let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
            if client.get_mut().write_all(continue_).await.is_err() {
                return;
            }
        }
        let Ok(body) = read_body(&mut client, req.content_length().unwrap_or(0)).await else {
            return;
        };
        let keep = handle(&mut client, req, body, &shared).await;
        if !keep.unwrap_or(false) {
            return;
        }
    }
}

/// Answers one request; `Ok(true)` when the connection may carry another.
async fn handle(
    client: &mut BufReader<TcpStream>,
    mut req: Head,
    body: Vec<u8>,
    shared: &Shared,
) -> std::io::Result<bool> {
    let (fault, pick) = shared.draw(&req);
    let close = req.wants_close();
    match fault {
        Some(k @ (FaultKind::SlowDown | FaultKind::SlowDownRetryAfter)) => {
            shared.count(k);
            let after = (k == FaultKind::SlowDownRetryAfter).then_some("1");
            respond(client.get_mut(), 503, "SlowDown", after, close).await?;
            return Ok(!close);
        }
        Some(FaultKind::Stall) => {
            shared.count(FaultKind::Stall);
            let stall_for = shared.state().config.stall_for;
            // Until the client closes (it timed out) or the stall ends.
            let mut sink = [0u8; 1024];
            let until_closed = async { while client.read(&mut sink).await.unwrap_or(0) > 0 {} };
            let _ = tokio::time::timeout(stall_for, until_closed).await;
            return Ok(false);
        }
        _ => {}
    }
    if req.method() == "GET" && req.range_start().is_some_and(|start| start > 0) {
        wait_release(shared).await;
    }
    req.set("Connection", "close");
    let mut up = TcpStream::connect(shared.upstream).await?;
    let mut out = req.encode();
    out.extend_from_slice(&body);
    up.write_all(&out).await?;
    let mut up = BufReader::new(up);
    let Some(mut res) = read_head(&mut up).await? else {
        return Ok(false);
    };
    for name in shared.state().strip.clone() {
        res.remove(&name);
    }
    let no_body = req.method() == "HEAD" || matches!(res.status(), 100..=199 | 204 | 304);
    let length = if no_body {
        Some(0)
    } else if res.chunked() {
        None
    } else {
        res.content_length()
    };
    // Close-delimited bodies end the client connection too.
    let keep = !close && (length.is_some() || res.chunked());
    res.set("Connection", if keep { "keep-alive" } else { "close" });
    let applies = length.is_some_and(|n| n >= 2);
    match fault {
        Some(k @ (FaultKind::Reset | FaultKind::Truncate)) if applies => {
            shared.count(k);
            let len = length.unwrap_or(0);
            let cut = 1 + pick % (len - 1);
            let stream = client.get_mut();
            stream.write_all(&res.encode()).await?;
            let mut part = (&mut up).take(cut);
            tokio::io::copy(&mut part, stream).await?;
            if k == FaultKind::Reset {
                // Deprecated because a non-zero linger blocks on drop; a
                // zero linger never does: the close sends a reset at once.
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO))?;
            } else {
                stream.shutdown().await?;
            }
            return Ok(false);
        }
        Some(FaultKind::WrongContentRange) if res.status() == 206 => {
            if let Some((a, b, total)) =
                res.get("content-range").and_then(http::parse_content_range)
            {
                shared.count(FaultKind::WrongContentRange);
                let wrong = http::wrong_content_range(a, b, total, pick);
                res.set("Content-Range", wrong);
            }
        }
        _ => {}
    }
    let stream = client.get_mut();
    stream.write_all(&res.encode()).await?;
    match length {
        Some(n) => {
            let copied = tokio::io::copy(&mut (&mut up).take(n), stream).await?;
            Ok(keep && copied == n)
        }
        None => {
            tokio::io::copy(&mut up, stream).await?;
            Ok(keep)
        }
    }
}

/// Waits while later parts are held, counting the request once.
async fn wait_release(shared: &Shared) {
    let mut rx = shared.hold.subscribe();
    if !*rx.borrow_and_update() {
        return;
    }
    shared.state().held += 1;
    let _ = rx.wait_for(|held| !held).await;
}

/// A small S3-style error response.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    code: &str,
    retry_after: Option<&str>,
    close: bool,
) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the fault proxy</Message></Error>"
    );
    let reason = if status == 503 {
        "Service Unavailable"
    } else {
        "Not Implemented"
    };
    let mut head = Head {
        line: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![
            ("Content-Type".into(), "application/xml".into()),
            ("Content-Length".into(), body.len().to_string()),
            (
                "Connection".into(),
                if close { "close" } else { "keep-alive" }.into(),
            ),
        ],
    };
    if let Some(after) = retry_after {
        head.set("Retry-After", after);
    }
    let mut out = head.encode();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    if close {
        stream.shutdown().await?;
    }
    Ok(())
}
