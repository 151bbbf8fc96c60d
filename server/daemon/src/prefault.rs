//! Making the shared-memory arena resident at startup (`cache.prefault`).
//!
//! A thread of its own, at `SCHED_IDLE` priority (it runs only when a core
//! has nothing else to do, so reads that arrive meanwhile are never slowed
//! by it), walks the arena 2 MiB at a time with `Arena::prefault`. Pages it
//! has not reached yet are touched by the reads that fill them, as without
//! it. Dropping the [`Prefault`] handle stops it after the chunk in hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use sluice_engine::arena::Arena;

/// Bytes made resident per `madvise`: small enough to stop promptly.
const CHUNK: u64 = 2 << 20;

/// The running prefault; stops it when dropped.
#[derive(Debug)]
pub(crate) struct Prefault {
    stop: Arc<AtomicBool>,
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts making `arena` resident; `gauge` follows the bytes done.
pub(crate) fn start(arena: Arc<Arena>, gauge: Gauge) -> std::io::Result<Prefault> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("sluice-prefault".into())
        .spawn(move || {
            idle_priority();
            let start = Instant::now();
            let result = arena.prefault(CHUNK, |done| {
                gauge.set(i64::try_from(done).unwrap_or(i64::MAX));
                !stopped.load(Ordering::Relaxed)
            });
            match result {
                Ok(done) if done == arena.capacity() => tracing::info!(
                    bytes = done,
                    elapsed = ?start.elapsed(),
                    "shared-memory arena resident (cache.prefault)"
                ),
                Ok(done) => tracing::debug!(bytes = done, "arena prefault stopped"),
                Err(error) => tracing::warn!(
                    %error,
                    "cannot prefault the shared-memory arena (MADV_POPULATE_WRITE needs Linux \
                     5.14); its pages are made resident as reads first fill them"
                ),
            }
        })?;
    Ok(Prefault { stop })
}

/// Puts the calling thread in `SCHED_IDLE`; on failure it keeps the
/// default priority, niced as far as allowed.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        // SAFETY: plain syscall on the calling thread (Linux nice is per
        // thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

/// The memory limit of this process's cgroup — the smallest `memory.max`
/// (v2) or `memory.limit_in_bytes` (v1) on its path up to the root — or
/// `None` when there is none.
pub(crate) fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit_in(&cgroups, std::path::Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_memory_limit`] from the text of `/proc/self/cgroup` and the
/// cgroup file system mounted at `root`.
fn memory_limit_in(cgroups: &str, root: &std::path::Path) -> Option<u64> {
    let mut limits = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut at = Some(std::path::Path::new(path.trim_start_matches('/')));
        while let Some(rel) = at {
            if let Ok(text) = std::fs::read_to_string(dir.join(rel).join(file)) {
                // "max" (v2) or a huge page-rounded number (v1): no limit.
                if let Ok(n) = text.trim().parse::<u64>()
                    && n < 1 << 60
                {
                    limits.push(n);
                }
            }
            at = rel.parent();
        }
    }
    limits.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_limit_on_the_path_is_found_in_v1_and_v2() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("kubepods/pod1/ctr");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(root.path().join("kubepods/memory.max"), "max\n").unwrap();
        std::fs::write(root.path().join("kubepods/pod1/memory.max"), "1073741824\n").unwrap();
        std::fs::write(v2.join("memory.max"), "2147483648\n").unwrap();
        assert_eq!(
            memory_limit_in("0::/kubepods/pod1/ctr\n", root.path()),
            Some(1 << 30)
        );
        let v1 = root.path().join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        std::fs::write(
            root.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let text = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/\n";
        assert_eq!(memory_limit_in(text, root.path()), Some(512 << 20));
        // No limit anywhere.
        assert_eq!(
            memory_limit_in("0::/\n", root.path().join("none").as_path()),
            None
        );
    }
}
