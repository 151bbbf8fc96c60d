//! The cache's eviction policies on access traces, against the offline
//! optimum computed here on the same trace.
//!
//! Every object is one arena granule and the budget holds `capacity` of
//! them, so hit ratios compare with the classic demand-paging optimum
//! (Belady's MIN): on a miss with a full cache, evict the resident object
//! whose next use is furthest away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::arena::GRANULE;
use sluice_engine::budget::MemoryBudget;
use sluice_engine::cache::{Cache, Policy};
use sluice_engine::metrics::{CacheMetrics, PrefetchMetrics};
use sluice_engine::plans::{PlanKey, PlanLimits};
use sluice_storage::ObjectMeta;

/// One read: which plan (session) makes it, and of which object.
type Access = (usize, usize);

fn key(object: usize) -> String {
    format!("s3://bucket/data/{object:06}")
}

/// A permutation of `0..n` from `seed` (xorshift; no dependency).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.swap(i, (state % (i as u64 + 1)) as usize);
    }
    v
}

/// Hits of the offline optimum on `trace` with room for `capacity`.
fn optimum(trace: &[Access], capacity: usize) -> usize {
    // next[i]: where trace[i]'s object is read next.
    let mut next = vec![usize::MAX; trace.len()];
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (i, &(_, o)) in trace.iter().enumerate().rev() {
        next[i] = seen.get(&o).copied().unwrap_or(usize::MAX);
        seen.insert(o, i);
    }
    // Resident objects with their next use.
    let mut resident: HashMap<usize, usize> = HashMap::new();
    let mut hits = 0;
    for (i, &(_, o)) in trace.iter().enumerate() {
        if resident.contains_key(&o) {
            hits += 1;
        } else if resident.len() == capacity {
            let (&victim, _) = resident.iter().max_by_key(|(_, n)| **n).unwrap();
            resident.remove(&victim);
        }
        resident.insert(o, next[i]);
    }
    hits
}

/// Hits of the real cache (with `policy`) on `trace`, each plan submitted
/// up front from `plans` and consumed as a session's reads would.
async fn simulate(
    policy: Policy,
    trace: &[Access],
    plans: &[Vec<usize>],
    capacity: usize,
) -> usize {
    let cache = Cache::with_policy(
        policy,
        PlanLimits::default(),
        CacheMetrics::default(),
        PrefetchMetrics::default(),
    );
    let bytes = capacity as u64 * GRANULE;
    let budget = MemoryBudget::with_capacity(bytes, bytes, Duration::from_millis(1)).unwrap();
    for (session, order) in plans.iter().enumerate() {
        let items: Vec<Option<Arc<str>>> = order.iter().map(|&o| Some(Arc::from(key(o)))).collect();
        let plan = PlanKey {
            session: session as u64,
            id: 1,
        };
        cache
            .plans(|p| p.append(plan, "sim", &items, true, true))
            .unwrap();
    }
    let mut hits = 0;
    for &(session, object) in trace {
        let k = key(object);
        cache.plans(|p| p.consumed(session as u64, &k));
        if cache.get(&k).is_some() {
            hits += 1;
            continue;
        }
        let mut r = budget.reserve(GRANULE, &cache).await.unwrap();
        r.as_mut_slice().fill(object as u8);
        let meta = ObjectMeta {
            uri: k.clone(),
            size: GRANULE,
            etag: Some("e".into()),
            last_modified: None,
            version: None,
        };
        cache.insert(k, meta, r.into_bytes());
        assert!(cache.len() <= capacity);
    }
    hits
}

fn one_plan(order: &[usize]) -> Vec<Access> {
    order.iter().map(|&o| (0, o)).collect()
}

/// Cyclic: the same order every epoch, a dataset twice the cache. LRU
/// never hits; the plan policy hits exactly as often as the optimum.
#[tokio::test]
async fn cyclic_epochs_match_the_optimum() {
    let (n, capacity, epochs) = (200, 100, 3);
    let order: Vec<usize> = (0..epochs).flat_map(|_| 0..n).collect();
    let trace = one_plan(&order);
    let best = optimum(&trace, capacity);
    let plans = simulate(
        Policy::Plans,
        &trace,
        std::slice::from_ref(&order),
        capacity,
    )
    .await;
    let lru = simulate(Policy::Lru, &trace, std::slice::from_ref(&order), capacity).await;
    assert_eq!(lru, 0, "LRU on a cycle larger than the cache");
    assert_eq!(plans, best, "plans {plans}, optimum {best}");
    assert!(best > 0);
}

/// A new shuffle every epoch, as a sampler makes it.
#[tokio::test]
async fn shuffled_epochs_match_the_optimum() {
    for (n, capacity) in [(300, 150), (500, 100), (64, 60)] {
        let order: Vec<usize> = (0..3).flat_map(|e| shuffled(n, e + 7)).collect();
        let trace = one_plan(&order);
        let best = optimum(&trace, capacity);
        let plans = simulate(
            Policy::Plans,
            &trace,
            std::slice::from_ref(&order),
            capacity,
        )
        .await;
        let lru = simulate(Policy::Lru, &trace, std::slice::from_ref(&order), capacity).await;
        assert_eq!(
            plans, best,
            "n {n} capacity {capacity}: plans {plans}, optimum {best}"
        );
        assert!(
            lru < best,
            "n {n} capacity {capacity}: LRU {lru}, optimum {best}"
        );
    }
}

/// Two jobs sharing one dataset (each its own shuffle), reading in turn.
/// Distances are per plan, so the policy is not exactly optimal here; it
/// must stay close to the optimum and well above LRU.
#[tokio::test]
async fn two_jobs_sharing_a_cache_come_close_to_the_optimum() {
    let (n, capacity) = (400, 200);
    let a: Vec<usize> = (0..2).flat_map(|e| shuffled(n, e + 1)).collect();
    let b: Vec<usize> = (0..2).flat_map(|e| shuffled(n, e + 100)).collect();
    let trace: Vec<Access> = a
        .iter()
        .zip(&b)
        .flat_map(|(&x, &y)| [(0, x), (1, y)])
        .collect();
    let plans_of = [a, b];
    let best = optimum(&trace, capacity);
    let plans = simulate(Policy::Plans, &trace, &plans_of, capacity).await;
    let lru = simulate(Policy::Lru, &trace, &plans_of, capacity).await;
    assert!(plans <= best, "beat the optimum? {plans} > {best}");
    assert!(
        plans * 100 >= best * 90,
        "plans {plans} below 90% of the optimum {best}"
    );
    assert!(plans > lru, "plans {plans}, LRU {lru}");
    // Every object of the trace was accounted: nothing in no plan at all.
    let objects: HashSet<usize> = trace.iter().map(|(_, o)| *o).collect();
    assert_eq!(objects.len(), n);
}
