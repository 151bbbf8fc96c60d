//! Baseline for the shared-memory benchmark: read every file under a
//! directory from the page cache with N threads, each reusing one buffer,
//! and print the same per-pass figures as `sluice bench`.
//!
//!     pagecache-read DIR [THREADS] [PASSES]

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn files(dir: &PathBuf, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: pagecache-read DIR [THREADS] [PASSES]"),
    );
    let threads: usize = args.next().map_or(32, |s| s.parse().expect("threads"));
    let passes: usize = args.next().map_or(2, |s| s.parse().expect("passes"));
    let mut all = Vec::new();
    files(&dir, &mut all);
    all.sort();
    for pass in 1..=passes {
        let next = AtomicUsize::new(0);
        let bytes = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    let mut touched = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = all.get(i) else { break };
                        let mut f = std::fs::File::open(path).expect("open");
                        buf.clear();
                        f.read_to_end(&mut buf).expect("read");
                        // Touch one byte per page, as `sluice bench` does.
                        touched += buf.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>();
                        bytes.fetch_add(buf.len(), Ordering::Relaxed);
                    }
                    std::hint::black_box(touched);
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let b = bytes.load(Ordering::Relaxed) as f64;
        println!(
            "pass {pass}: {} objects, {:.1} MB in {secs:.3} s: {:.1} MB/s, {:.0} objects/s",
            all.len(),
            b / 1e6,
            b / 1e6 / secs,
            all.len() as f64 / secs
        );
    }
}
