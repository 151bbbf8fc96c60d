//! Epoch plans: the order in which clients will read, and what the cache
//! and the prefetcher make of it.
//!
//! A client submits a plan — the items (URIs) it will read, in order — and
//! its *position* (items consumed) moves forward as it reads. From the live
//! plans this module knows, for every cached object, its *next use*: in each
//! plan that holds it, the first occurrence at or after the plan's position.
//! Its *distance* is the smallest `occurrence − position` over those plans.
//! Eviction with plans follows Belady's rule: first an object no live plan
//! will read again (least recently used first), then the one whose distance
//! is largest. Distances are in items of each plan's own order; plans that
//! advance at different speeds are compared as if they advanced alike
//! (exact for one plan, and for plans that share no object).
//!
//! # Data structure and cost
//! Objects named by live plans are interned (`u32` ids). Each plan keeps its
//! items (`Vec<u32>`), for each index the index of the same object's next
//! occurrence (`next`), each object's first occurrence, and a
//! `BTreeSet<(occurrence, id)>` of its *cached* objects keyed by their next
//! occurrence — the Belady order of that plan. Cached objects in no plan's
//! future sit in an LRU list. So, with `n` cached objects and `p` plans
//! holding an object (1 for a single job; a few for jobs sharing a dataset):
//! - a plan item consumed: one `BTreeSet` remove and insert, O(log n);
//! - an object cached or evicted: O(p · (log n + k)), `k` its occurrences
//!   before the position (1 or 2 for epoch plans);
//! - choosing a victim: the LRU tail, O(1), or each plan's furthest cached
//!   object, merged threshold-style (stop once no plan's next candidate can
//!   beat the best seen), O(p · log n) when plans share no object;
//! - memory: about 8 bytes per plan item, plus per distinct object its URI
//!   and some 60 bytes of index.
//!
//! # Look-ahead
//! Each plan has a prefetch *frontier*: items in `[position, frontier)` were
//! prefetched (or found cached). The prefetcher moves it forward while the
//! window holds fewer than `lookahead_items` items and `lookahead_bytes`
//! bytes, and while all windows together hold less than `max_bytes`. Objects
//! inside a window (distance below `lookahead_items`) are never evicted to
//! make room for a prefetch; a demand read evicts them only when nothing
//! else can go.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

/// No next occurrence (yet).
const END: u32 = u32::MAX;
/// An item that names no whole object (a range): kept for the position.
const NO_KEY: u32 = u32::MAX;

/// A plan, by its session and the id the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanKey {
    /// The session that submitted it.
    pub session: u64,
    /// The client's id for it.
    pub id: u64,
}

/// Limits on plans and look-ahead.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    /// Most items in one plan.
    pub max_plan_items: u64,
    /// Most items of all live plans together.
    pub max_items: u64,
    /// Most live plans of one session.
    pub max_session_plans: usize,
    /// Items prefetched ahead of a plan's position, at most.
    pub lookahead_items: u32,
    /// Bytes prefetched ahead of a plan's position, at most.
    pub lookahead_bytes: u64,
    /// Bytes prefetched ahead of all plans together, at most.
    pub max_bytes: u64,
    /// How long a plan outlives its session (see [`Plans::drop_session`]).
    pub linger: Duration,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_plan_items: 10_000_000,
            max_items: 50_000_000,
            max_session_plans: 16,
            lookahead_items: 256,
            lookahead_bytes: 256 << 20,
            max_bytes: 1 << 30,
            // Long enough for a DataLoader's workers of the next epoch to
            // start and submit theirs.
            linger: Duration::from_secs(10),
        }
    }
}

/// Why a plan page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The plan would exceed `max_plan_items`.
    #[error("a plan of more than {0} items")]
    PlanTooLarge(u64),
    /// All plans together would exceed `max_items`.
    #[error("the daemon holds plans of {0} items already: no room for this one")]
    NodeFull(u64),
    /// The session has `max_session_plans` plans.
    #[error("a session may hold at most {0} plans")]
    TooManyPlans(usize),
}

/// An object to prefetch for a plan.
#[derive(Debug, Clone)]
pub struct PrefetchJob {
    /// The plan.
    pub plan: PlanKey,
    /// The item's index in the plan.
    pub index: u32,
    /// The object (a cache key: its canonical URI).
    pub key: Arc<str>,
}

/// How a prefetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetched {
    /// Cached (by this prefetch or before it): its size.
    Cached(u64),
    /// No room without evicting something needed sooner: try again once
    /// the plan moved on.
    NoRoom,
    /// Not cacheable, or failed: skipped.
    Skipped,
}

#[derive(Debug)]
struct KeyInfo {
    uri: Arc<str>,
    /// Plans that name the object.
    plans: Vec<PlanKey>,
    /// Plans in which it has an occurrence at or after the position.
    live: u32,
    cached: bool,
}

#[derive(Debug, Default)]
struct Plan {
    /// Since when its session is gone (the plan lingers, see
    /// [`Plans::drop_session`]).
    orphaned: Option<Instant>,
    job: String,
    items: Vec<u32>,
    next: Vec<u32>,
    first: HashMap<u32, u32>,
    last: HashMap<u32, u32>,
    pos: u32,
    /// Cached objects of this plan by their next occurrence.
    cached: BTreeSet<(u32, u32)>,
    complete: bool,
    /// Items `[pos, frontier)` are prefetched or being prefetched.
    frontier: u32,
    /// Sizes of the items `[pos, frontier)` (0 while in flight).
    ahead: VecDeque<u64>,
    ahead_bytes: u64,
    /// A prefetch found no room: wait until the position moves.
    blocked: bool,
    /// Prefetches of this plan running now.
    running: u32,
    /// Sizes of this plan's objects seen so far (prefetched or found
    /// cached), for the average that bounds `running`.
    seen_bytes: u64,
    seen_items: u64,
}

impl Plan {
    /// The first occurrence of `id` at or after the position.
    fn cur(&self, id: u32) -> Option<u32> {
        let mut i = *self.first.get(&id)?;
        while i != END && i < self.pos {
            i = self.next[i as usize];
        }
        (i != END).then_some(i)
    }

    fn len(&self) -> u32 {
        self.items.len() as u32
    }
}

/// What a live plan looks like from outside (for stats).
#[derive(Debug, Clone)]
pub struct PlanInfo {
    /// The plan.
    pub key: PlanKey,
    /// Its job name.
    pub job: String,
    /// Items submitted so far.
    pub items: u64,
    /// Items consumed.
    pub position: u64,
    /// Items prefetched (or being prefetched) ahead of the position.
    pub ahead_items: u64,
    /// Bytes prefetched ahead of the position.
    pub ahead_bytes: u64,
    /// Every page arrived.
    pub complete: bool,
}

/// Every live plan and the index over them.
#[derive(Debug)]
pub struct Plans {
    limits: PlanLimits,
    keys: HashMap<Arc<str>, u32>,
    info: Vec<Option<KeyInfo>>,
    free: Vec<u32>,
    plans: HashMap<PlanKey, Plan>,
    /// Cached objects in no live plan's future, least recently used last.
    unplanned: LruCache<Arc<str>, ()>,
    items: u64,
    ahead_bytes: u64,
    /// Plans whose session is gone.
    orphans: usize,
}

impl Plans {
    /// No plans yet.
    pub fn new(limits: PlanLimits) -> Self {
        Plans {
            limits,
            keys: HashMap::new(),
            info: Vec::new(),
            free: Vec::new(),
            plans: HashMap::new(),
            unplanned: LruCache::unbounded(),
            items: 0,
            ahead_bytes: 0,
            orphans: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &PlanLimits {
        &self.limits
    }

    /// Live plans.
    pub fn len(&self) -> usize {
        self.plans.len() - self.orphans
    }

    /// Whether any plan is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items of all live plans.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Bytes prefetched ahead of all plans.
    pub fn ahead_bytes(&self) -> u64 {
        self.ahead_bytes
    }

    /// Items prefetched ahead of all plans.
    pub fn ahead_items(&self) -> u64 {
        self.plans.values().map(|p| p.ahead.len() as u64).sum()
    }

    /// The live plans.
    pub fn list(&self) -> Vec<PlanInfo> {
        let mut out: Vec<PlanInfo> = self
            .plans
            .iter()
            .filter(|(_, p)| p.orphaned.is_none())
            .map(|(k, p)| PlanInfo {
                key: *k,
                job: p.job.clone(),
                items: p.items.len() as u64,
                position: u64::from(p.pos),
                ahead_items: p.ahead.len() as u64,
                ahead_bytes: p.ahead_bytes,
                complete: p.complete,
            })
            .collect();
        out.sort_by_key(|p| p.key);
        out
    }

    fn key(&self, id: u32) -> &KeyInfo {
        self.info[id as usize].as_ref().expect("a live key id")
    }

    fn key_mut(&mut self, id: u32) -> &mut KeyInfo {
        self.info[id as usize].as_mut().expect("a live key id")
    }

    fn intern(&mut self, uri: &Arc<str>) -> u32 {
        if let Some(&id) = self.keys.get(uri) {
            return id;
        }
        // A new id: cached now exactly when the cache lists it as unplanned.
        let info = KeyInfo {
            uri: uri.clone(),
            plans: Vec::new(),
            live: 0,
            cached: self.unplanned.contains(uri),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.info[id as usize] = Some(info);
                id
            }
            None => {
                self.info.push(Some(info));
                (self.info.len() - 1) as u32
            }
        };
        self.keys.insert(uri.clone(), id);
        id
    }

    /// `id` gained a future in one more plan.
    fn went_live(&mut self, id: u32) {
        let info = self.key_mut(id);
        info.live += 1;
        if info.live == 1 && info.cached {
            let uri = info.uri.clone();
            self.unplanned.pop(&uri);
        }
    }

    /// `id` has no future in one plan any more.
    fn went_dead(&mut self, id: u32) {
        let info = self.key_mut(id);
        info.live -= 1;
        if info.live == 0 && info.cached {
            let uri = info.uri.clone();
            self.unplanned.put(uri, ());
        }
    }

    /// Appends a page to plan `key` (starting it if `first`). `items`: each
    /// item's cache key, `None` for a range. Returns the plan's length.
    pub fn append(
        &mut self,
        key: PlanKey,
        job: &str,
        items: &[Option<Arc<str>>],
        first: bool,
        last: bool,
    ) -> Result<u64, PlanError> {
        self.expire_orphans(Instant::now());
        if first {
            self.drop_plan(key);
            // The same plan again from a new session (a DataLoader worker of
            // the next epoch): it replaces the ones that lingered.
            if self.orphans > 0 {
                let replaced: Vec<PlanKey> = self
                    .plans
                    .iter()
                    .filter(|(k, p)| k.id == key.id && p.orphaned.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                for k in replaced {
                    self.drop_plan(k);
                }
            }
            let of_session = self.plans.keys().filter(|k| k.session == key.session);
            if of_session.count() >= self.limits.max_session_plans {
                return Err(PlanError::TooManyPlans(self.limits.max_session_plans));
            }
        }
        let len = self.plans.get(&key).map_or(0, |p| p.items.len() as u64);
        let add = items.len() as u64;
        let max_plan = self.limits.max_plan_items.min(u64::from(END) - 1);
        if len + add > max_plan {
            self.drop_plan(key);
            return Err(PlanError::PlanTooLarge(max_plan));
        }
        if self.items + add > self.limits.max_items {
            self.drop_plan(key);
            return Err(PlanError::NodeFull(self.items));
        }
        let mut plan = self.plans.remove(&key).unwrap_or_else(|| Plan {
            job: job.to_owned(),
            ..Plan::default()
        });
        for item in items {
            let n = plan.len();
            let Some(uri) = item else {
                plan.items.push(NO_KEY);
                plan.next.push(END);
                continue;
            };
            let id = self.intern(uri);
            plan.items.push(id);
            plan.next.push(END);
            let live = match plan.last.insert(id, n) {
                None => {
                    plan.first.insert(id, n);
                    self.key_mut(id).plans.push(key);
                    true
                }
                Some(prev) => {
                    plan.next[prev as usize] = n;
                    // Its earlier occurrences are all behind the position:
                    // this one is its next use here.
                    prev < plan.pos
                }
            };
            if live {
                self.went_live(id);
                if self.key(id).cached {
                    plan.cached.insert((n, id));
                }
            }
        }
        plan.complete = last;
        if last {
            plan.last = HashMap::new();
        }
        self.items += add;
        let total = plan.items.len() as u64;
        self.plans.insert(key, plan);
        Ok(total)
    }

    /// Moves plan `key`'s position forward to `to` (at most its length).
    pub fn advance(&mut self, key: PlanKey, to: u64) {
        let Some(mut plan) = self.plans.remove(&key) else {
            return;
        };
        let to = to.min(u64::from(plan.len())) as u32;
        for i in plan.pos..to {
            if i < plan.frontier {
                let size = plan.ahead.pop_front().unwrap_or(0);
                plan.ahead_bytes -= size;
                self.ahead_bytes -= size;
            }
            let id = plan.items[i as usize];
            if id == NO_KEY {
                continue;
            }
            let next = plan.next[i as usize];
            if self.key(id).cached {
                plan.cached.remove(&(i, id));
                if next != END {
                    plan.cached.insert((next, id));
                }
            }
            if next == END {
                // Until a later page names it again.
                self.went_dead(id);
            }
        }
        if to > plan.pos {
            plan.pos = to;
        }
        if plan.frontier < plan.pos {
            plan.frontier = plan.pos;
        }
        plan.blocked = false;
        self.plans.insert(key, plan);
    }

    /// A client of `session` is about to read `uri`: each of the session's
    /// plans that names it next moves past it. Returns whether any did.
    pub fn consumed(&mut self, session: u64, uri: &str) -> bool {
        if self.orphans > 0 {
            self.expire_orphans(Instant::now());
        }
        let Some(&id) = self.keys.get(uri) else {
            return false;
        };
        let mine: Vec<PlanKey> = self
            .key(id)
            .plans
            .iter()
            .filter(|k| k.session == session)
            .copied()
            .collect();
        let mut moved = false;
        for key in mine {
            if let Some(at) = self.plans.get(&key).and_then(|p| p.cur(id)) {
                self.advance(key, u64::from(at) + 1);
                moved = true;
            }
        }
        moved
    }

    /// Forgets plan `key`.
    pub fn drop_plan(&mut self, key: PlanKey) -> bool {
        let Some(plan) = self.plans.remove(&key) else {
            return false;
        };
        if plan.orphaned.is_some() {
            self.orphans -= 1;
        }
        self.items -= plan.items.len() as u64;
        self.ahead_bytes -= plan.ahead_bytes;
        for &id in plan.first.keys() {
            if plan.cur(id).is_some() {
                self.went_dead(id);
            }
            let info = self.key_mut(id);
            info.plans.retain(|k| *k != key);
            if info.plans.is_empty() {
                let uri = info.uri.clone();
                self.keys.remove(&uri);
                self.info[id as usize] = None;
                self.free.push(id);
            }
        }
        true
    }

    /// `session` ended. Its plans with items left *linger* for
    /// `limits.linger`: they keep guiding eviction (their objects keep their
    /// distances) but prefetch nothing, until a plan with the same id comes
    /// from another session (the next epoch's DataLoader worker: see
    /// [`Plans::append`]) or the time is up. Without that, the objects of a
    /// worker that starts late would count as unplanned — evictable — until
    /// it submits its plan.
    pub fn drop_session(&mut self, session: u64) {
        let keys: Vec<PlanKey> = self
            .plans
            .keys()
            .filter(|k| k.session == session)
            .copied()
            .collect();
        let now = Instant::now();
        for key in keys {
            let plan = self.plans.get_mut(&key).expect("listed");
            if self.limits.linger.is_zero() || plan.pos >= plan.len() || plan.orphaned.is_some() {
                self.drop_plan(key);
                continue;
            }
            plan.orphaned = Some(now);
            plan.blocked = true;
            plan.frontier = plan.pos;
            let released = std::mem::take(&mut plan.ahead_bytes);
            plan.ahead.clear();
            self.ahead_bytes -= released;
            self.orphans += 1;
        }
    }

    /// Drops the plans that lingered longer than `limits.linger` at `now`.
    pub fn expire_orphans(&mut self, now: Instant) {
        if self.orphans == 0 {
            return;
        }
        let linger = self.limits.linger;
        let expired: Vec<PlanKey> = self
            .plans
            .iter()
            .filter(|(_, p)| {
                p.orphaned
                    .is_some_and(|t| now.saturating_duration_since(t) >= linger)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.drop_plan(key);
        }
    }

    /// The object `uri` was cached.
    pub fn on_insert(&mut self, uri: &Arc<str>) {
        let Some(&id) = self.keys.get(uri) else {
            self.unplanned.put(uri.clone(), ());
            return;
        };
        let info = self.key_mut(id);
        info.cached = true;
        let (live, plans) = (info.live, info.plans.clone());
        for key in plans {
            let plan = self.plans.get_mut(&key).expect("a key's plan is live");
            if let Some(at) = plan.cur(id) {
                plan.cached.insert((at, id));
            }
        }
        if live == 0 {
            self.unplanned.put(uri.clone(), ());
        }
    }

    /// The object `uri` was read from the cache.
    pub fn on_hit(&mut self, uri: &str) {
        self.unplanned.promote(uri);
    }

    /// The object `uri` left the cache.
    pub fn on_remove(&mut self, uri: &str) {
        self.unplanned.pop(uri);
        let Some(&id) = self.keys.get(uri) else {
            return;
        };
        let info = self.key_mut(id);
        info.cached = false;
        for key in info.plans.clone() {
            let plan = self.plans.get_mut(&key).expect("a key's plan is live");
            if let Some(at) = plan.cur(id) {
                plan.cached.remove(&(at, id));
            }
        }
    }

    /// The distance to `id`'s next use: the smallest over its plans.
    fn distance(&self, id: u32) -> Option<u32> {
        self.key(id)
            .plans
            .iter()
            .filter_map(|k| {
                let plan = &self.plans[k];
                plan.cur(id).map(|at| at - plan.pos)
            })
            .min()
    }

    /// The distance to the next use of `uri`, if a live plan reads it again.
    pub fn next_use(&self, uri: &str) -> Option<u64> {
        let id = *self.keys.get(uri)?;
        self.distance(id).map(u64::from)
    }

    /// The object to evict: the least recently used one that no plan reads
    /// again, else the one whose next use is furthest, skipping what
    /// `evictable` refuses and whatever is used within `floor` items.
    pub fn victim(&self, floor: u32, evictable: &dyn Fn(&str) -> bool) -> Option<Arc<str>> {
        if let Some((uri, ())) = self.unplanned.iter().rev().find(|(k, ())| evictable(k)) {
            return Some(uri.clone());
        }
        // Each plan's cached objects, furthest first; the next candidate of
        // each is an upper bound on what the rest of that plan can offer.
        let mut fronts: Vec<_> = self
            .plans
            .values()
            .map(|p| (p.pos, p.cached.iter().rev().peekable()))
            .collect();
        let mut best: Option<(u32, u32)> = None;
        while let Some((i, bound)) = fronts
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (pos, it))| it.peek().map(|(at, _)| (i, *at - *pos)))
            .max_by_key(|(_, d)| *d)
        {
            if bound < floor || best.is_some_and(|(d, _)| d >= bound) {
                break;
            }
            let &(_, id) = fronts[i].1.next().expect("peeked");
            let info = self.key(id);
            if !evictable(&info.uri) {
                continue;
            }
            let d = self.distance(id).unwrap_or(u32::MAX);
            if d >= floor && best.is_none_or(|(b, _)| d > b) {
                best = Some((d, id));
            }
        }
        best.map(|(_, id)| self.key(id).uri.clone())
    }
}

mod window;

#[cfg(test)]
mod tests;
