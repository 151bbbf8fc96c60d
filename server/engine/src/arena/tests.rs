use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Small segments for the exhaustive tests: 16 granules.
const SEG: u64 = 64 * KIB;

fn check_invariants(arena: &Arena, live: &[Extent]) {
    let mut by_segment: Vec<Vec<(u64, u64)>> = vec![Vec::new(); arena.segments.len()];
    for e in live.iter().filter(|e| !e.is_empty()) {
        let seg_len = arena.segments[e.segment() as usize].map.len() as u64;
        assert_eq!(e.offset() % GRANULE, 0, "{e:?} not aligned");
        assert!(
            e.offset() + round_up(e.len()) <= seg_len,
            "{e:?} past its segment"
        );
        by_segment[e.segment() as usize].push((e.offset(), round_up(e.len())));
    }
    for ranges in &mut by_segment {
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {w:?}");
        }
    }
    let live_bytes: u64 = live.iter().map(|e| round_up(e.len())).sum();
    assert_eq!(arena.used(), live_bytes);
    assert_eq!(arena.used() + arena.free(), arena.capacity());
    let mut listed = 0;
    for s in arena.segments.iter() {
        let list = lock(&s.free);
        listed += list.free_bytes();
        assert_eq!(s.largest.load(Ordering::Relaxed), list.largest());
    }
    assert_eq!(listed, arena.free(), "free lists disagree with used()");
}

/// The allocation loop documented on `Arena::freed`.
async fn wait_alloc(arena: &Arc<Arena>, len: u64) -> Extent {
    loop {
        let freed = arena.freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(extent) = arena.try_alloc(len) {
            return extent;
        }
        freed.await;
    }
}

#[test]
fn allocates_in_granules_and_coalesces_on_free() {
    let arena = Arena::new(SEG, SEG).unwrap();
    let a = arena.try_alloc(5000).unwrap();
    let b = arena.try_alloc(4096).unwrap();
    let c = arena.try_alloc(1).unwrap();
    assert_eq!((a.offset(), b.offset(), c.offset()), (0, 8192, 12288));
    assert_eq!((a.len(), c.len()), (5000, 1));
    assert_eq!(arena.used(), 16384);
    drop(b);
    assert_eq!(arena.used(), 12288);
    // The 4 KiB hole cannot take 8 KiB: it goes after `c`.
    let d = arena.try_alloc(8192).unwrap();
    assert_eq!(d.offset(), 16384);
    // Best fit: one granule goes into the hole, not the tail.
    let e = arena.try_alloc(100).unwrap();
    assert_eq!(e.offset(), 8192);
    assert_eq!(arena.largest_free(), SEG - 24576);
    drop((a, c, e));
    assert_eq!(
        lock(&arena.segments[0].free).ranges(),
        vec![(0, 16384), (24576, SEG - 24576)]
    );
    drop(d);
    assert_eq!(lock(&arena.segments[0].free).ranges(), vec![(0, SEG)]);
    assert_eq!(
        (arena.used(), arena.free(), arena.largest_free()),
        (0, SEG, SEG)
    );
}

#[test]
fn segments_cover_the_capacity_and_extents_stay_inside_one() {
    // 20000 bytes in 8 KiB segments: 8192 + 8192 + 3616 rounded to 4096.
    let arena = Arena::new(20_000, 8192).unwrap();
    let lens: Vec<(u32, u64)> = arena.segments().map(|s| (s.id, s.len)).collect();
    assert_eq!(lens, vec![(0, 8192), (1, 8192), (2, 4096)]);
    assert_eq!((arena.capacity(), arena.max_extent()), (20_480, 8192));
    assert!(arena.try_alloc(8193).is_none(), "larger than a segment");
    let mut whole = Vec::new();
    for _ in 0..2 {
        whole.push(arena.try_alloc(8192).unwrap());
    }
    let segs: HashSet<u32> = whole.iter().map(Extent::segment).collect();
    assert_eq!(
        segs,
        HashSet::from([0, 1]),
        "a full segment only fits 0 and 1"
    );
    assert!(arena.try_alloc(4097).is_none(), "4096 left, in segment 2");
    let last = arena.try_alloc(4096).unwrap();
    assert_eq!((last.segment(), last.offset()), (2, 0));
    assert_eq!(
        (arena.used(), arena.free(), arena.largest_free()),
        (20_480, 0, 0)
    );
    whole.push(last);
    check_invariants(&arena, &whole);
}

#[test]
fn rejects_bad_sizes() {
    for (cap, seg) in [(0, 4096), (4096, 0), (8192, 1000)] {
        let err = Arena::new(cap, seg).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{cap} {seg}");
    }
}

#[test]
fn empty_extents_own_nothing() {
    let arena = Arena::new(4096, 4096).unwrap();
    let full = arena.try_alloc(4096).unwrap();
    let empty = arena.try_alloc(0).expect("empty extents always fit");
    assert_eq!((empty.len(), empty.as_slice()), (0, &[][..]));
    drop(empty);
    assert_eq!(arena.used(), 4096, "dropping an empty extent frees nothing");
    assert!(arena.try_alloc(0).unwrap().into_bytes().is_empty());
    drop(full);
    assert_eq!(arena.used(), 0);
}

#[test]
fn bytes_keep_the_extent_until_the_last_slice_drops_and_locate_finds_it() {
    let arena = Arena::new(3 * SEG, SEG).unwrap();
    let _pad = arena.try_alloc(3 * GRANULE).unwrap();
    let mut e = arena.try_alloc(10_000).unwrap();
    for (i, b) in e.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let (seg, off) = (e.segment(), e.offset());
    let bytes = e.into_bytes();
    assert_eq!(arena.locate(bytes.as_ptr()), Some((seg, off)));
    let slice = bytes.slice(5000..6000);
    drop(bytes);
    assert_eq!(
        arena.used(),
        3 * GRANULE + 12288,
        "a live slice pins the extent"
    );
    assert_eq!(arena.locate(slice.as_ptr()), Some((seg, off + 5000)));
    assert_eq!(slice[0], (5000 % 251) as u8);
    // The range is taken: a new extent goes elsewhere.
    let other = arena.try_alloc(1).unwrap();
    assert!(other.segment() != seg || other.offset() >= off + 12288 || other.offset() < off);
    drop(slice);
    drop(other);
    assert_eq!(arena.used(), 3 * GRANULE);
    assert_eq!(arena.locate([0u8; 4].as_ptr()), None, "stack memory");
    let seg_end = arena.segment_base(seg).as_ptr().wrapping_add(SEG as usize);
    assert_ne!(arena.locate(seg_end), Some((seg, SEG)), "one past the end");
}

#[test]
fn a_second_read_only_mapping_of_the_fd_sees_the_bytes_and_cannot_write() {
    let arena = Arena::new(2 * SEG, SEG).unwrap();
    let _pad = arena.try_alloc(5 * GRANULE).unwrap();
    let mut e = arena.try_alloc(20_000).unwrap();
    let pattern: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
    e.as_mut_slice().copy_from_slice(&pattern);
    let info = arena.segments().nth(e.segment() as usize).unwrap();
    let fd = info.fd.try_clone_to_owned().unwrap(); // as a client receives it
    let len = info.len as usize;
    // SAFETY: a fresh read-only mapping of a sealed, sized memfd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", io::Error::last_os_error());
    let at = e.offset() as usize;
    {
        // SAFETY: `at + 20000` is inside the mapping; nothing writes the
        // range while this slice lives.
        let view = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(at), 20_000) };
        assert_eq!(view, &pattern[..]);
    }
    e.as_mut_slice()[0] = 0xAB;
    // SAFETY: in bounds; volatile because the byte changed through another mapping.
    assert_eq!(unsafe { p.cast::<u8>().add(at).read_volatile() }, 0xAB);
    // SAFETY: changing protection of our own mapping; it must be refused.
    let upgraded = unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(upgraded, -1, "a read-only client mapping became writable");
    // SAFETY: unmapping the mapping made above; `view` is gone.
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);

    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new mapping at a kernel-chosen address; the seal must refuse it.
    let w = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            rw,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_eq!(
        w,
        libc::MAP_FAILED,
        "a client could map the segment writable"
    );
    // SAFETY: ftruncate takes no pointers and acts on our duplicate. The
    // seal must refuse it; a wrongly accepted shrink would make the next
    // access to the arena's mapping fault (SIGBUS), never read freed memory.
    let shrink = unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
    assert_eq!(shrink, -1, "a client could shrink it");
    assert_eq!(e.as_slice()[1..], pattern[1..], "our own mapping is intact");
}

fn dev_shm() -> HashSet<std::path::PathBuf> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[test]
fn creating_an_arena_names_nothing_in_dev_shm() {
    let before = dev_shm();
    let arena = Arena::new(4 * SEG, SEG).unwrap();
    let mut e = arena.try_alloc(SEG).unwrap();
    e.as_mut_slice().fill(1);
    let after = dev_shm();
    let ours: Vec<std::fs::Metadata> = arena
        .segments()
        .map(|s| {
            std::fs::File::from(s.fd.try_clone_to_owned().unwrap())
                .metadata()
                .unwrap()
        })
        .collect();
    for m in &ours {
        assert_eq!(m.nlink(), 0, "a segment has a name somewhere");
        assert_eq!(m.len(), SEG);
    }
    // Other processes on this machine may come and go in /dev/shm; none of
    // the new entries may be one of our segments.
    for path in after.difference(&before) {
        let Ok(m) = std::fs::metadata(path) else {
            continue;
        };
        let mine = ours
            .iter()
            .any(|o| (o.dev(), o.ino()) == (m.dev(), m.ino()));
        assert!(!mine, "{} is an arena segment", path.display());
    }
    let fd = arena.segments().next().unwrap().fd.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:sluice-arena"),
        "{link:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiter_gets_memory_when_an_extent_is_freed() {
    let arena = Arena::new(SEG, SEG).unwrap();
    let held = arena.try_alloc(SEG).unwrap();
    let a = arena.clone();
    let waiter = tokio::spawn(async move { wait_alloc(&a, SEG / 2).await.offset() });
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "the arena is full; the waiter must wait"
    );
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
    assert_eq!(got.expect("free did not wake the waiter").unwrap(), 0);
    assert_eq!(arena.used(), 0);
}

#[test]
fn concurrent_threads_never_share_bytes() {
    let arena = Arena::new(4 * MIB, MIB).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let arena = &arena;
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(t));
                let mut live: Vec<(Extent, u8)> = Vec::new();
                for i in 0..3000u32 {
                    if live.len() >= 16 || (!live.is_empty() && rng.random_bool(0.4)) {
                        let (e, tag) = live.swap_remove(rng.random_range(0..live.len()));
                        assert!(e.as_slice().iter().all(|&b| b == tag), "bytes overwritten");
                    } else if let Some(mut e) = arena.try_alloc(rng.random_range(1..64 * KIB)) {
                        let tag = t.wrapping_mul(64).wrapping_add(i as u8);
                        e.as_mut_slice().fill(tag);
                        live.push((e, tag));
                    }
                }
            });
        }
    });
    assert_eq!((arena.used(), arena.largest_free()), (0, MIB));
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..=3 * GRANULE).prop_map(Op::Alloc),
        1 => (0..=SEG + 2 * GRANULE).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
    ]
}

proptest! {
    #[test]
    fn random_alloc_and_free_keep_the_arena_consistent(
        segs in 2u64..=3,
        tail in 1..=SEG,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let arena = Arena::new((segs - 1) * SEG + tail, SEG).unwrap();
        let mut live: Vec<Extent> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc(len) => {
                    let largest = arena.largest_free();
                    match arena.try_alloc(len) {
                        Some(mut e) => {
                            prop_assert!(round_up(len) <= largest, "{len} from {largest}");
                            prop_assert_eq!(e.len(), len);
                            let tag = live.len() as u8;
                            e.as_mut_slice().fill(tag);
                            live.push(e);
                        }
                        None => prop_assert!(len > SEG || round_up(len) > largest,
                            "{len} refused with {largest} free in one piece"),
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let e = live.swap_remove(i % live.len());
                    let tag = e.as_slice().first().copied();
                    prop_assert!(e.as_slice().iter().all(|&b| Some(b) == tag));
                }
                Op::Free(_) => {}
            }
            check_invariants(&arena, &live);
        }
        drop(live);
        prop_assert_eq!(arena.used(), 0);
        prop_assert_eq!(arena.largest_free(), SEG);
        for s in arena.segments.iter() {
            prop_assert_eq!(lock(&s.free).ranges(), vec![(0, s.map.len() as u64)]);
        }
    }
}

/// Not asserted: prints costs and fragmentation (`--nocapture`).
#[test]
fn timing_and_fragmentation() {
    let arena = Arena::new(4 * 64 * MIB, 64 * MIB).unwrap();
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        drop(arena.try_alloc(64 * KIB).unwrap());
    }
    let pair = t.elapsed().as_nanos() / n;
    println!("arena: alloc+free of 64 KiB on an empty arena: {pair} ns");

    // Sizes log-uniform in 4 KiB..4 MiB; fill, then churn: free one at
    // random and allocate until the first failure, noting how full it was.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut size = || (4096.0 * 1024f64.powf(rng.random::<f64>())) as u64;
    let mut live: Vec<Extent> = Vec::new();
    while let Some(e) = arena.try_alloc(size()) {
        live.push(e);
    }
    let first = arena.used() as f64 / arena.capacity() as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (mut ops, mut fill_sum, mut fill_min, mut rounds) = (0u32, 0.0, 1.0f64, 0u32);
    let t = Instant::now();
    for _ in 0..20_000 {
        live.swap_remove(rng.random_range(0..live.len()));
        ops += 1;
        loop {
            ops += 1;
            match arena.try_alloc(size()) {
                Some(e) => live.push(e),
                None => break,
            }
        }
        let fill = arena.used() as f64 / arena.capacity() as f64;
        (fill_sum, fill_min, rounds) = (fill_sum + fill, fill_min.min(fill), rounds + 1);
    }
    let per_op = t.elapsed().as_nanos() / u128::from(ops);
    println!(
        "arena: {} live extents, {per_op} ns per alloc/free under churn; full at {:.1} % \
         on first fill, then {:.1} % mean, {:.1} % worst (largest free {} KiB)",
        live.len(),
        first * 100.0,
        fill_sum / f64::from(rounds) * 100.0,
        fill_min * 100.0,
        arena.largest_free() / KIB,
    );
    check_invariants(&arena, &live);
}

#[test]
fn a_budget_below_one_segment_caps_the_largest_extent() {
    let arena = Arena::new(8192, 1 << 20).unwrap();
    assert_eq!(arena.max_extent(), 8192);
    assert_eq!(arena.capacity(), 8192);
    assert!(arena.try_alloc(8192).is_some());
}

/// Pages of `arena` resident in its segments' memfds (mincore).
fn resident_pages(arena: &Arena) -> usize {
    let page = 4096;
    arena
        .segments
        .iter()
        .map(|s| {
            let pages = s.map.len() / page;
            let mut vec = vec![0u8; pages];
            // SAFETY: the whole mapping, page-aligned; `vec` has one byte
            // per page.
            let rc = unsafe {
                libc::mincore(s.map.base().as_ptr().cast(), s.map.len(), vec.as_mut_ptr())
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            vec.iter().filter(|&&b| b & 1 == 1).count()
        })
        .sum()
}

/// Prefaulting makes every page resident, changes no byte of an extent in
/// use, and stops when told to.
#[test]
fn prefault_makes_pages_resident_without_changing_them() {
    let arena = Arena::new(4 * MIB, MIB).unwrap();
    let mut e = arena.try_alloc(300 * KIB).unwrap();
    for (i, b) in e.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let touched = resident_pages(&arena);
    assert!(touched <= 80, "{touched} pages resident before prefault");
    // Stopped after the first chunk.
    let done = arena.prefault(256 * KIB, |_| false).unwrap();
    assert_eq!(done, 256 * KIB);
    let done = arena.prefault(256 * KIB, |_| true).unwrap();
    assert_eq!(done, arena.capacity());
    assert_eq!(resident_pages(&arena), (4 * MIB / 4096) as usize);
    assert!(
        e.as_slice()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8),
        "an extent in use was changed"
    );
}

/// The segments ask for transparent huge pages (`VmFlags: hg`): where the
/// node's `shmem_enabled` allows them (`advise` or more), the cache is held
/// in 2 MiB pages, which the daemon and every client map 2 MiB at a time.
#[test]
fn segments_ask_for_huge_pages() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        return; // a kernel without transparent huge pages
    }
    let arena = Arena::new(4 * MIB, 4 * MIB).unwrap();
    let base = arena.segments[0].map.base().as_ptr() as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut flags = None;
    for line in smaps.lines() {
        let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((a, b)) = range
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&base);
        } else if inside && let Some(f) = line.strip_prefix("VmFlags:") {
            flags = Some(f.to_owned());
            break;
        }
    }
    let flags = flags.expect("the segment is in /proc/self/smaps");
    assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
}
