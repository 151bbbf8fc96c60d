//! The listeners' metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `listener`: which listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `unix`, `fds` or `tcp`.
    pub listener: &'static str,
}

/// `listener`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `unix`, `fds` or `tcp`.
    pub listener: &'static str,
    /// Rejections: `limit` or `peer`. Accept errors: `resource` or `other`.
    pub reason: &'static str,
}

/// `sluice_listener_*`.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    pub(super) open: Family<ListenerLabels, Gauge>,
    pub(super) accepted: Family<ListenerLabels, Counter>,
    pub(super) rejected: Family<ReasonLabels, Counter>,
    pub(super) accept_errors: Family<ReasonLabels, Counter>,
    pub(super) backoffs: Family<ListenerLabels, Counter>,
    pub(super) idle_closed: Family<ListenerLabels, Counter>,
}

impl ListenerMetrics {
    /// Registers the metrics under `sluice_listener_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ListenerMetrics::default();
        let r = registry.sub_registry_with_prefix("listener");
        r.register(
            "connections",
            "Connections open, per listener",
            m.open.clone(),
        );
        r.register(
            "accepted",
            "Connections accepted within the connection limit",
            m.accepted.clone(),
        );
        r.register(
            "rejected",
            "Connections closed at once: over max_connections (limit) or a peer outside allowed_uids/allowed_gids (peer)",
            m.rejected.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept calls: out of descriptors or memory (resource), other",
            m.accept_errors.clone(),
        );
        r.register(
            "accept_backoffs",
            "Times an accept loop slept after an error instead of retrying at once",
            m.backoffs.clone(),
        );
        r.register(
            "idle_closed",
            "Connections closed after idle_timeout without a call",
            m.idle_closed.clone(),
        );
        m
    }

    /// Counts a connection of a peer outside the allowed uids/gids.
    pub fn peer_refused(&self, listener: &'static str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                listener,
                reason: "peer",
            })
            .inc();
    }
}
