//! One S3 store behind several endpoints (the gateways of a MinIO, Ceph
//! RGW, VAST or AIStore cluster): `[[storage.s3.endpoints]]` with
//! `gateways = ["host:port", …]`.
//!
//! Every request goes to the gateway with the fewest requests outstanding
//! among those up (ties rotate, so sequential requests spread too). A
//! request that fails as unreachable — connection refused or reset,
//! timeouts, or 5xx that outlasted the SDK's retries (`Unavailable`) —
//! takes its gateway out and is sent again to the next gateway up that it
//! has not tried; other errors are the store's answer and are returned.
//! A gateway that is out is probed (a TCP connect) after a back-off of
//! `gateway_backoff`, doubling up to `gateway_max_backoff` while probes
//! fail; it comes back when one succeeds. When every gateway is out,
//! requests still go to the one that has been out longest, so a store that
//! recovers is found without waiting for a probe.
//!
//! Metrics per gateway: requests, failures, whether it is up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{ErrorKind, Result};

/// Labels of a gateway: the store as URIs name it, and the gateway.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    /// `s3://host:port` of the `[[storage.s3.endpoints]]` entry.
    pub store: String,
    /// The gateway's `host:port`.
    pub gateway: String,
}

/// Requests, failures and health of every gateway (a closed set: the
/// operator's configuration).
#[derive(Debug, Clone, Default)]
pub struct GatewayMetrics {
    requests: Family<GatewayLabels, Counter>,
    failures: Family<GatewayLabels, Counter>,
    up: Family<GatewayLabels, Gauge>,
}

impl GatewayMetrics {
    /// Registers the families as `s3_gateway_*` under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("s3_gateway");
        r.register(
            "requests",
            "Requests sent to each gateway of a multi-endpoint S3 store",
            self.requests.clone(),
        );
        r.register(
            "failures",
            "Requests that found a gateway unreachable (and went to another)",
            self.failures.clone(),
        );
        r.register(
            "up",
            "Whether a gateway takes requests (1) or is out until a probe succeeds (0)",
            self.up.clone(),
        );
    }
}

/// Back-off of a gateway that is out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) first: Duration,
    pub(super) max: Duration,
    pub(super) connect_timeout: Duration,
}

/// The gateways of one store.
#[derive(Debug)]
pub(super) struct Gateways {
    members: Vec<Arc<Gateway>>,
    next: AtomicUsize,
    backoff: Backoff,
}

#[derive(Debug)]
struct Gateway {
    address: String,
    client: Client,
    outstanding: AtomicUsize,
    /// `Some(since)` while out.
    out: Mutex<Option<Instant>>,
    requests: Counter,
    failures: Counter,
    up: Gauge,
}

/// A request's hold on a gateway.
struct Outstanding(Arc<Gateway>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gateways {
    /// `clients`: each gateway's address and client, in order.
    pub(super) fn new(
        store: &str,
        clients: Vec<(String, Client)>,
        backoff: Backoff,
        metrics: &GatewayMetrics,
    ) -> Self {
        let members = clients
            .into_iter()
            .map(|(address, client)| {
                let labels = GatewayLabels {
                    store: store.to_owned(),
                    gateway: address.clone(),
                };
                let up = metrics.up.get_or_create(&labels).clone();
                up.set(1);
                Arc::new(Gateway {
                    address,
                    client,
                    outstanding: AtomicUsize::new(0),
                    out: Mutex::new(None),
                    requests: metrics.requests.get_or_create(&labels).clone(),
                    failures: metrics.failures.get_or_create(&labels).clone(),
                    up,
                })
            })
            .collect();
        Gateways {
            members,
            next: AtomicUsize::new(0),
            backoff,
        }
    }

    /// The gateway for the next request, skipping `tried`.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !tried.contains(i));
        let mut best: Option<(usize, usize)> = None;
        let mut longest_out: Option<(usize, Instant)> = None;
        for i in candidates {
            let g = &self.members[i];
            match *g.out.lock().unwrap_or_else(PoisonError::into_inner) {
                None => {
                    let load = g.outstanding.load(Ordering::SeqCst);
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
                Some(since) => {
                    if longest_out.is_none_or(|(_, s)| since < s) {
                        longest_out = Some((i, since));
                    }
                }
            }
        }
        best.map(|(i, _)| i).or(longest_out.map(|(i, _)| i))
    }

    /// Runs `op` on a gateway's client, and again on the next gateway up
    /// while it fails as unreachable.
    pub(super) async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tried = Vec::with_capacity(self.members.len());
        loop {
            let i = self
                .pick(&tried)
                .expect("a store has at least one gateway and one is left untried");
            tried.push(i);
            let g = self.members[i].clone();
            g.outstanding.fetch_add(1, Ordering::SeqCst);
            g.requests.inc();
            let hold = Outstanding(g.clone());
            let res = op(g.client.clone()).await;
            drop(hold);
            match res {
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    g.failures.inc();
                    self.take_out(&g);
                    if tried.len() == self.members.len() {
                        return Err(e);
                    }
                    tracing::warn!(gateway = %g.address, error = %e, "s3 gateway unreachable: trying another");
                }
                other => {
                    if other.is_ok() {
                        self.bring_back(&g);
                    }
                    return other;
                }
            }
        }
    }

    fn bring_back(&self, g: &Gateway) {
        let mut out = g.out.lock().unwrap_or_else(PoisonError::into_inner);
        if out.take().is_some() {
            g.up.set(1);
            tracing::info!(gateway = %g.address, "s3 gateway back");
        }
    }

    /// Takes `g` out and starts probing it, unless it is out already.
    fn take_out(&self, g: &Arc<Gateway>) {
        {
            let mut out = g.out.lock().unwrap_or_else(PoisonError::into_inner);
            if out.is_some() {
                return;
            }
            *out = Some(Instant::now());
        }
        g.up.set(0);
        let weak = Arc::downgrade(g);
        let backoff = self.backoff;
        tokio::spawn(probe(weak, backoff));
    }
}

/// Probes a gateway that is out until it answers (or is gone).
async fn probe(gateway: Weak<Gateway>, backoff: Backoff) {
    let mut wait = backoff.first;
    loop {
        tokio::time::sleep(wait).await;
        let Some(g) = gateway.upgrade() else {
            return;
        };
        if g.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            // A request found it working meanwhile.
            return;
        }
        let reached = tokio::time::timeout(
            backoff.connect_timeout,
            tokio::net::TcpStream::connect(g.address.as_str()),
        )
        .await
        .is_ok_and(|c| c.is_ok());
        if reached {
            *g.out.lock().unwrap_or_else(PoisonError::into_inner) = None;
            g.up.set(1);
            tracing::info!(gateway = %g.address, "s3 gateway answers probes again");
            return;
        }
        wait = (wait * 2).min(backoff.max);
    }
}
