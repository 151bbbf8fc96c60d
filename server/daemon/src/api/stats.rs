//! `Stats`: the live sessions and the node's cache and prefetch counters.
//!
//! Who sees what: root, the daemon's own uid and `server.admin_uids` see
//! every session; a local caller of another uid sees the sessions of its own
//! uid; a caller without credentials (TCP) sees none — only the node's
//! counters, which name no object and no peer.

use std::collections::HashMap;

use sluice_engine::plans::PlanInfo;
use sluice_proto::v1;

use super::SluiceService;

pub(super) fn stats(svc: &SluiceService, peer: Option<&crate::listen::Peer>) -> v1::StatsResponse {
    let uid = peer.and_then(|p| p.cred()).map(|(uid, _, _)| uid);
    let admin = uid.is_some_and(|uid| svc.is_admin(uid));
    let sessions = svc
        .sessions
        .snapshot(|s| admin || (uid.is_some() && s.uid == uid));
    let engine = &svc.engine;
    engine.refresh_gauges();
    let mut plans: HashMap<u64, Vec<PlanInfo>> = HashMap::new();
    for plan in engine.plans(|p| p.list()) {
        plans.entry(plan.key.session).or_default().push(plan);
    }
    let sessions = sessions
        .iter()
        .map(|s| {
            let c = s.counts();
            v1::SessionStats {
                session_id: s.id,
                uid: s.uid.unwrap_or(0),
                pid: s.pid.unwrap_or(0),
                shared_memory: s.shm,
                fetches: c.fetches,
                hits: c.hits,
                stalled: c.stalled,
                stall_seconds: c.stall.as_secs_f64(),
                bytes: c.bytes,
                leased_bytes: s.leases.leased(),
                plans: plans
                    .remove(&s.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| v1::PlanStats {
                        plan_id: p.key.id,
                        job: p.job,
                        items: p.items,
                        position: p.position,
                        ahead_items: p.ahead_items,
                        ahead_bytes: p.ahead_bytes,
                        complete: p.complete,
                    })
                    .collect(),
            }
        })
        .collect();
    let m = engine.metrics();
    v1::StatsResponse {
        sessions,
        memory_budget: engine.budget().total(),
        cache_entries: m.cache.entries.get().max(0) as u64,
        cache_bytes: m.cache.bytes.get().max(0) as u64,
        cache_hits: m.cache.hits.get(),
        cache_misses: m.cache.misses.get(),
        prefetched: m.prefetch.fetched.get(),
        prefetch_hits: m.prefetch.hits.get(),
        prefetch_wasted_bytes: m.prefetch.wasted_bytes.get(),
        lookahead_items: m.prefetch.lookahead_items.get().max(0) as u64,
        lookahead_bytes: m.prefetch.lookahead_bytes.get().max(0) as u64,
        requests_in_flight: engine.requests_in_flight() as u64,
    }
}
