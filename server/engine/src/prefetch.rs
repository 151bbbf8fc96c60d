//! The prefetcher: one task that reads ahead of every live plan.
//!
//! It asks the plans for the next items to read ([`Plans::next_prefetch`]:
//! one item per plan in turn, within each plan's look-ahead bounds and the
//! node's), runs at most `prefetch.concurrency` prefetches at once
//! ([`Engine::prefetch`]), and reports each outcome back so the window's
//! byte count is exact. It sleeps until a plan changes or moves, or a
//! prefetch ends.
//!
//! [`Plans::next_prefetch`]: crate::plans::Plans::next_prefetch

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::engine::Engine;
use crate::plans::{PrefetchJob, Prefetched};

/// Runs the prefetcher until the task is dropped (or aborted).
pub(crate) async fn run(engine: Arc<Engine>) {
    if !engine.prefetch_config().enabled {
        return;
    }
    let max = engine.prefetch_config().concurrency.max(1);
    let wake = engine.prefetch_wake().clone();
    let mut running: JoinSet<(PrefetchJob, Prefetched)> = JoinSet::new();
    loop {
        // Registered before looking, so a change meanwhile is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let free = max - running.len();
        if free > 0 {
            let jobs = engine
                .cache()
                .plans_with_sizes(|plans, size| plans.next_prefetch(free, size));
            for job in jobs {
                let engine = engine.clone();
                running.spawn(async move {
                    let outcome = engine.prefetch(&job.key).await;
                    (job, outcome)
                });
            }
        }
        engine.refresh_gauges();
        tokio::select! {
            () = &mut woken => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((job, outcome)) = done {
                    engine.cache().plans(|plans| plans.prefetched(&job, outcome));
                }
            }
        }
    }
}
