//! Fair shares: what one client may hold at once.
//!
//! Every byte a client holds — a buffer being fetched for it, a part or an
//! object waiting to be sent to it, a leased extent — is *charged* to its
//! [`ClientShare`] for as long as it is held, counted by what it pins: a
//! slice of a cached object pins the whole entry, so it is charged the
//! entry's size, once per client however many slices of it the client
//! holds. A new charge waits (up to `memory_wait`) while the client holds
//! more than `cache.client_share`, or while all clients together hold more
//! than `cache.clients_share`; a client holding nothing is always let in
//! (one reservation), so an idle trainer's small read never waits behind a
//! stalled one. A client that stops reading therefore stalls only itself,
//! and holds at most its share until its streams are ended for idleness.
//!
//! Backend requests are shared the same way: a client runs at most
//! `engine.client_concurrency` of the `engine.max_concurrency` request
//! slots at once, and waits for a slot at most `engine.request_wait`.
//!
//! A *client* is one connection (in practice one process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::budget::BudgetError;
use crate::cache::CachedObject;
use crate::metrics::ShareMetrics;

/// The node-wide side of the shares: limits, and what all clients hold.
#[derive(Debug)]
pub struct Shares {
    client_bytes: u64,
    clients_bytes: u64,
    client_requests: usize,
    wait: Duration,
    request_wait: Duration,
    /// Bytes held by all clients together.
    total: Mutex<u64>,
    /// Woken whenever a client lets go of bytes.
    freed: Notify,
    metrics: ShareMetrics,
}

/// Limits of [`Shares`].
#[derive(Debug, Clone, Copy)]
pub struct ShareLimits {
    /// Most bytes one client holds (beyond a first reservation).
    pub client_bytes: u64,
    /// Most bytes all clients hold together (beyond first reservations).
    pub clients_bytes: u64,
    /// Most backend requests one client runs at once.
    pub client_requests: usize,
    /// Longest wait for room in a share.
    pub wait: Duration,
    /// Longest wait for a backend request slot.
    pub request_wait: Duration,
}

impl ShareLimits {
    /// No limits (tools and tests that serve one caller).
    pub fn unlimited() -> Self {
        ShareLimits {
            client_bytes: u64::MAX,
            clients_bytes: u64::MAX,
            client_requests: Semaphore::MAX_PERMITS,
            wait: Duration::from_secs(3600),
            request_wait: Duration::from_secs(3600),
        }
    }
}

/// One client's share.
#[derive(Debug)]
pub struct ClientShare {
    shares: Arc<Shares>,
    /// Only changed under `shares.total`'s lock.
    state: Mutex<ClientState>,
    requests: Arc<Semaphore>,
    /// Request slots of its own instead of the node's (prefetch).
    lane: Option<Arc<Semaphore>>,
}

#[derive(Debug, Default)]
struct ClientState {
    held: u64,
    /// Cache entries this client pins: holds of each, and the entry.
    entries: HashMap<usize, (usize, Arc<CachedObject>)>,
}

/// Bytes charged to a client until dropped.
#[derive(Debug)]
pub struct Hold {
    client: Arc<ClientShare>,
    what: Charged,
}

#[derive(Debug)]
enum Charged {
    Bytes(u64),
    Entry(usize),
}

/// A backend request slot: the client's and the node's.
#[derive(Debug)]
pub struct RequestSlot {
    _client: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock is recovered (ARCHITECTURE.md §8.1).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shares {
    /// Shares with `limits`, reporting to `metrics`.
    pub fn new(limits: ShareLimits, metrics: ShareMetrics) -> Arc<Self> {
        Arc::new(Shares {
            client_bytes: limits.client_bytes,
            clients_bytes: limits.clients_bytes,
            client_requests: limits.client_requests.clamp(1, Semaphore::MAX_PERMITS),
            wait: limits.wait,
            request_wait: limits.request_wait,
            total: Mutex::new(0),
            freed: Notify::new(),
            metrics,
        })
    }

    /// A new client (one per connection).
    pub fn client(self: &Arc<Self>) -> Arc<ClientShare> {
        self.metrics.clients.inc();
        Arc::new(ClientShare {
            shares: self.clone(),
            state: Mutex::new(ClientState::default()),
            requests: Arc::new(Semaphore::new(self.client_requests)),
            lane: None,
        })
    }

    /// A client whose backend requests take slots of `lane` instead of the
    /// node's: prefetch, which must never hold a slot a demand read waits
    /// for.
    pub fn client_with_lane(self: &Arc<Self>, lane: Arc<Semaphore>) -> Arc<ClientShare> {
        self.metrics.clients.inc();
        Arc::new(ClientShare {
            shares: self.clone(),
            state: Mutex::new(ClientState::default()),
            requests: Arc::new(Semaphore::new(self.client_requests)),
            lane: Some(lane),
        })
    }

    /// Bytes all clients hold now.
    pub fn held(&self) -> u64 {
        *lock(&self.total)
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        self.shares.metrics.clients.dec();
    }
}

impl ClientShare {
    /// A client with no limits of its own (tests, tools).
    pub fn unlimited() -> Arc<Self> {
        Shares::new(ShareLimits::unlimited(), ShareMetrics::default()).client()
    }

    /// Bytes this client holds now.
    pub fn held(&self) -> u64 {
        lock(&self.state).held
    }

    /// Whether this is prefetch's share (request slots of its own lane).
    pub fn is_prefetch(&self) -> bool {
        self.lane.is_some()
    }

    /// Charges `extra` bytes if `allowed(total, held)` says so, given what
    /// all clients and this one hold now; both locks held while it decides.
    fn charge_if(&self, extra: u64, allowed: impl FnOnce(u64, u64) -> bool) -> bool {
        if extra == 0 {
            return true;
        }
        let mut total = lock(&self.shares.total);
        let mut state = lock(&self.state);
        if !allowed(*total, state.held) {
            return false;
        }
        state.held += extra;
        *total += extra;
        self.shares.metrics.held.inc_by(extra as i64);
        true
    }

    /// Charges `extra` bytes if they fit now: the client holds nothing but
    /// the caller's `mine`, or both its share and the clients' total have
    /// room.
    fn try_charge(&self, mine: u64, extra: u64) -> bool {
        let s = &self.shares;
        self.charge_if(extra, |total, held| {
            held == mine
                || (held.saturating_add(extra) <= s.client_bytes
                    && total.saturating_add(extra) <= s.clients_bytes)
        })
    }

    /// Charges `extra` bytes if all clients together stay within
    /// `clients_share`, whatever this client holds.
    fn try_charge_within_total(&self, extra: u64) -> bool {
        let clients = self.shares.clients_bytes;
        self.charge_if(extra, |total, _| total.saturating_add(extra) <= clients)
    }

    /// Charges `extra` bytes unconditionally.
    fn force(&self, extra: u64) {
        self.charge_if(extra, |_, _| true);
    }

    /// Charges `extra` bytes, waiting for room up to `memory_wait`.
    async fn charge(&self, mine: u64, extra: u64) -> Result<(), BudgetError> {
        self.charge_unless(mine, extra, &|| false).await
    }

    /// Charges `extra` bytes, waiting for room up to `memory_wait` — or
    /// until `exempt` says the charge may go through anyway.
    async fn charge_unless(
        &self,
        mine: u64,
        extra: u64,
        exempt: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), BudgetError> {
        let deadline = tokio::time::Instant::now() + self.shares.wait;
        let mut waited = false;
        loop {
            let freed = self.shares.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_charge(mine, extra) {
                return Ok(());
            }
            if exempt() && self.try_charge_within_total(extra) {
                return Ok(());
            }
            if !waited {
                waited = true;
                self.shares.metrics.waits.inc();
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                self.shares.metrics.refused.inc();
                return Err(BudgetError::Share {
                    need: extra,
                    held: self.held(),
                    limit: self.shares.client_bytes,
                    waited: self.shares.wait,
                });
            }
        }
    }

    fn uncharge(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        {
            let mut total = lock(&self.shares.total);
            let mut state = lock(&self.state);
            state.held -= bytes;
            *total -= bytes;
        }
        self.shares.metrics.held.dec_by(bytes as i64);
        self.shares.freed.notify_waiters();
    }

    /// Charges `bytes`, waiting for room (bounded).
    pub async fn acquire(self: &Arc<Self>, bytes: u64) -> Result<Hold, BudgetError> {
        self.charge(0, bytes).await?;
        Ok(self.hold_of(bytes))
    }

    /// Charges the next part of a stream whose consumer holds `live` of
    /// its parts: waits for room like [`ClientShare::acquire`], except that
    /// while the stream has at most one part alive (the one its consumer is
    /// working on, which it holds while it looks ahead for this one) the
    /// part goes through if all clients together stay within
    /// `clients_share`. A consumer that reads thus always makes progress,
    /// whatever its other streams hold; one that stops holds at most two
    /// parts per stream beyond its share, and never more than the clients'
    /// total.
    pub async fn acquire_next_part(
        self: &Arc<Self>,
        bytes: u64,
        live: &AtomicU64,
    ) -> Result<Hold, BudgetError> {
        let exempt = || live.load(Ordering::SeqCst) <= 1;
        self.charge_unless(0, bytes, &exempt).await?;
        Ok(self.hold_of(bytes))
    }

    /// Charges `bytes` if they fit now.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<Hold> {
        self.try_charge(0, bytes).then(|| self.hold_of(bytes))
    }

    fn hold_of(self: &Arc<Self>, bytes: u64) -> Hold {
        Hold {
            client: self.clone(),
            what: Charged::Bytes(bytes),
        }
    }

    /// Pins a cached object for this client: charged its whole size, once
    /// however many holds of it the client has. Waits for room (bounded)
    /// unless the client pins it already.
    pub async fn pin(self: &Arc<Self>, obj: &Arc<CachedObject>) -> Result<Hold, BudgetError> {
        let key = Arc::as_ptr(obj) as usize;
        let size = obj.data.len() as u64;
        if let Some(hold) = self.pin_again(key) {
            return Ok(hold);
        }
        self.charge(0, size).await?;
        Ok(self.enter(key, obj))
    }

    /// Pins a cached object without waiting for room: for bytes this
    /// client holds already under another charge, about to be let go.
    pub fn pin_now(self: &Arc<Self>, obj: &Arc<CachedObject>) -> Hold {
        let key = Arc::as_ptr(obj) as usize;
        if let Some(hold) = self.pin_again(key) {
            return hold;
        }
        self.force(obj.data.len() as u64);
        self.enter(key, obj)
    }

    /// Records the pin of `obj`, charged already.
    fn enter(self: &Arc<Self>, key: usize, obj: &Arc<CachedObject>) -> Hold {
        let size = obj.data.len() as u64;
        let pinned_meanwhile = {
            let _total = lock(&self.shares.total);
            let mut state = lock(&self.state);
            match state.entries.get_mut(&key) {
                // Pinned meanwhile by another read of this client.
                Some((n, _)) => {
                    *n += 1;
                    true
                }
                None => {
                    state.entries.insert(key, (1, obj.clone()));
                    false
                }
            }
        };
        if pinned_meanwhile {
            self.uncharge(size);
        }
        Hold {
            client: self.clone(),
            what: Charged::Entry(key),
        }
    }

    fn pin_again(self: &Arc<Self>, key: usize) -> Option<Hold> {
        let _total = lock(&self.shares.total);
        let mut state = lock(&self.state);
        let (n, _) = state.entries.get_mut(&key)?;
        *n += 1;
        Some(Hold {
            client: self.clone(),
            what: Charged::Entry(key),
        })
    }

    /// A backend request slot: one of this client's, then one of the node's
    /// (`global`, or the client's own lane), both within
    /// `engine.request_wait`.
    pub async fn request_slot(&self, global: &Arc<Semaphore>) -> Result<RequestSlot, BudgetError> {
        let wait = self.shares.request_wait;
        let global = self.lane.as_ref().unwrap_or(global);
        let slot = async {
            let client = self
                .requests
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let global = global
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            RequestSlot {
                _client: client,
                _global: global,
            }
        };
        tokio::time::timeout(wait, slot).await.map_err(|_| {
            self.shares.metrics.refused.inc();
            BudgetError::Busy { waited: wait }
        })
    }
}

impl Hold {
    /// The client charged.
    pub fn client(&self) -> &Arc<ClientShare> {
        &self.client
    }

    /// Bytes charged (an entry pin: the entry's size).
    pub fn bytes(&self) -> u64 {
        match self.what {
            Charged::Bytes(n) => n,
            Charged::Entry(key) => lock(&self.client.state)
                .entries
                .get(&key)
                .map_or(0, |(_, o)| o.data.len() as u64),
        }
    }

    /// Grows the charge to `to` bytes if that fits now; the client's other
    /// holds count, this one does not (a client holding nothing else may).
    pub fn try_grow(&mut self, to: u64) -> bool {
        let Charged::Bytes(n) = self.what else {
            return false;
        };
        if to <= n {
            self.shrink(to);
            return true;
        }
        if self.client.try_charge(n, to - n) {
            self.what = Charged::Bytes(to);
            return true;
        }
        false
    }

    /// Grows the charge to `to` bytes, waiting for room (bounded).
    pub async fn grow(&mut self, to: u64) -> Result<(), BudgetError> {
        let Charged::Bytes(n) = self.what else {
            return Ok(());
        };
        if to <= n {
            self.shrink(to);
            return Ok(());
        }
        self.client.charge(n, to - n).await?;
        self.what = Charged::Bytes(to);
        Ok(())
    }

    /// Moves `bytes` of this charge (at most all of it) into a hold of its
    /// own, without waiting: the bytes were paid for already.
    pub fn split(&mut self, bytes: u64) -> Hold {
        let take = match &mut self.what {
            Charged::Bytes(n) => {
                let take = bytes.min(*n);
                *n -= take;
                take
            }
            Charged::Entry(_) => 0,
        };
        self.client.hold_of(take)
    }

    /// Lowers the charge to `to` bytes.
    pub fn shrink(&mut self, to: u64) {
        if let Charged::Bytes(n) = self.what
            && to < n
        {
            self.client.uncharge(n - to);
            self.what = Charged::Bytes(to);
        }
    }

    /// `bytes`, with this charge lasting as long as any clone of them.
    pub fn attach(self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(ChargedBytes {
            bytes,
            _live: None,
            _hold: self,
        })
    }

    /// As [`Hold::attach`], still counted as `live` while any clone lives.
    pub fn attach_counted(self, bytes: Bytes, live: Live) -> Bytes {
        Bytes::from_owner(ChargedBytes {
            bytes,
            _live: Some(live),
            _hold: self,
        })
    }
}

/// One part of a stream, counted from its reservation until the last clone
/// of its bytes is dropped.
#[derive(Debug)]
pub struct Live(Arc<AtomicU64>);

impl Live {
    /// Counts one more part in `count`.
    pub fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes that keep their charge. Fields drop in order: the part stops
/// counting as live before its charge is given back (which wakes waiters).
struct ChargedBytes {
    bytes: Bytes,
    _live: Option<Live>,
    _hold: Hold,
}

impl AsRef<[u8]> for ChargedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        match self.what {
            Charged::Bytes(n) => self.client.uncharge(n),
            Charged::Entry(key) => {
                let released = {
                    let _total = lock(&self.client.shares.total);
                    let mut state = lock(&self.client.state);
                    match state.entries.get_mut(&key) {
                        Some((n, _)) if *n > 1 => {
                            *n -= 1;
                            None
                        }
                        Some(_) => state.entries.remove(&key).map(|(_, o)| o),
                        None => None,
                    }
                };
                if let Some(obj) = released {
                    self.client.uncharge(obj.data.len() as u64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
