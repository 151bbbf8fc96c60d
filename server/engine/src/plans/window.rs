//! The look-ahead windows: which plan items to prefetch next, and what a
//! finished prefetch changes (see the module documentation of
//! [`super`]).

use super::{NO_KEY, Plan, PlanKey, Plans, PrefetchJob, Prefetched};

/// Bytes one plan may have being prefetched at once, by the average size of
/// its objects so far: few large objects at a time, so that the next one
/// the client needs arrives first instead of sharing the link with a window
/// of others; many small ones, whose time is latency.
const PLAN_IN_FLIGHT_BYTES: u64 = 64 << 20;

impl Plan {
    /// Prefetches this plan may run at once: two until a size is known.
    fn in_flight_limit(&self) -> u32 {
        match self.seen_bytes.checked_div(self.seen_items) {
            None => 2,
            Some(average) => {
                (PLAN_IN_FLIGHT_BYTES / average.max(1)).clamp(1, u64::from(u32::MAX)) as u32
            }
        }
    }

    fn saw(&mut self, bytes: u64) {
        self.seen_bytes += bytes;
        self.seen_items += 1;
    }
}

impl Plans {
    /// Up to `max` objects to prefetch next, round the plans; `size` says
    /// how large a cached object is (`None`: not cached).
    pub fn next_prefetch(
        &mut self,
        max: usize,
        size: &dyn Fn(&str) -> Option<u64>,
    ) -> Vec<PrefetchJob> {
        let limits = self.limits;
        let mut jobs = Vec::new();
        let mut keys: Vec<PlanKey> = self.plans.keys().copied().collect();
        keys.sort();
        let mut progressed = true;
        // One item per plan per round, so plans share the slots.
        while progressed && jobs.len() < max {
            progressed = false;
            for key in &keys {
                if jobs.len() >= max || self.ahead_bytes >= limits.max_bytes {
                    return jobs;
                }
                let plan = self.plans.get_mut(key).expect("listed");
                let end = plan
                    .len()
                    .min(plan.pos.saturating_add(limits.lookahead_items));
                if plan.blocked
                    || plan.frontier >= end
                    || plan.ahead_bytes >= limits.lookahead_bytes
                    || plan.running >= plan.in_flight_limit()
                {
                    continue;
                }
                let index = plan.frontier;
                plan.frontier += 1;
                progressed = true;
                let id = plan.items[index as usize];
                if id == NO_KEY {
                    plan.ahead.push_back(0);
                    continue;
                }
                let uri = self.info[id as usize].as_ref().expect("live").uri.clone();
                match size(&uri) {
                    Some(bytes) => {
                        plan.saw(bytes);
                        plan.ahead.push_back(bytes);
                        plan.ahead_bytes += bytes;
                        self.ahead_bytes += bytes;
                    }
                    None => {
                        plan.running += 1;
                        plan.ahead.push_back(0);
                        jobs.push(PrefetchJob {
                            plan: *key,
                            index,
                            key: uri,
                        });
                    }
                }
            }
        }
        jobs
    }

    /// A prefetch of `job` ended with `outcome`.
    pub fn prefetched(&mut self, job: &PrefetchJob, outcome: Prefetched) {
        let Some(plan) = self.plans.get_mut(&job.plan) else {
            return;
        };
        plan.running = plan.running.saturating_sub(1);
        if let Prefetched::Cached(bytes) = outcome {
            plan.saw(bytes);
        }
        if job.index < plan.pos || job.index >= plan.frontier {
            return; // consumed already, or given up on
        }
        let slot = (job.index - plan.pos) as usize;
        match outcome {
            Prefetched::Cached(bytes) => {
                plan.ahead[slot] = bytes;
                plan.ahead_bytes += bytes;
                self.ahead_bytes += bytes;
            }
            Prefetched::NoRoom => {
                // Back to this item once the plan moves on; what is beyond
                // it is looked at again then.
                plan.blocked = true;
                plan.frontier = job.index;
                let dropped: u64 = plan.ahead.drain(slot..).sum();
                plan.ahead_bytes -= dropped;
                self.ahead_bytes -= dropped;
            }
            Prefetched::Skipped => {}
        }
    }
}
