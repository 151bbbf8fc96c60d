//! `direct://` against real files: byte-exact at every alignment edge,
//! refusal where the filesystem has no `O_DIRECT`, and reads dropped in
//! flight that never touch another reader's bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use rand::{Rng, SeedableRng};

use super::*;
use crate::read_exact_at;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

struct Fixture {
    storage: DirectStorage,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let storage = DirectStorage::new(&DirectConfig {
        roots: vec![root.clone()],
        ..DirectConfig::default()
    })
    .unwrap();
    Fixture {
        storage,
        root,
        _dir: dir,
    }
}

fn uri(path: &Path) -> ObjectUri {
    ObjectUri::parse(&format!("direct://{}", path.display())).unwrap()
}

/// A buffer whose address is `skew` bytes past a page boundary.
fn skewed(len: usize, skew: usize) -> ReadBuf {
    ReadBuf::aligned(len + skew, ALIGN as usize)
        .split_at(skew)
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_byte_exact_at_every_alignment_edge() {
    let fx = fixture();
    let part = IO_SIZE;
    for size in [0, 1, 4095, 4096, 4097, 2 * part + 12_345] {
        let data = pattern(size, size as u64);
        let path = fx.root.join(format!("f{size}"));
        std::fs::write(&path, &data).unwrap();
        let u = uri(&path);
        let meta = fx.storage.head(&u).await.unwrap();
        assert_eq!(meta.size, size as u64);
        assert!(meta.uri.starts_with("direct:///"), "{}", meta.uri);
        let version = Version::of(&meta);
        // Whole, through get.
        let got = fx.storage.get(&u, GetOptions::default()).await.unwrap();
        let body: Vec<Bytes> = got.body.try_collect().await.unwrap();
        assert_eq!(body.concat(), data, "get of {size} bytes");
        let edges = [
            0,
            1,
            4095,
            4096,
            4097,
            part - 1,
            part,
            part + 1,
            size.saturating_sub(1),
        ];
        for &start in edges.iter().filter(|&&s| s < size) {
            for &end in edges
                .iter()
                .chain([&size])
                .filter(|&&e| e > start && e <= size)
            {
                let want = &data[start..end];
                let len = end - start;
                for skew in [0, 1, start % 4096] {
                    let (res, buf) = fx
                        .storage
                        .read_into(&u, start as u64, &version, skewed(len, skew))
                        .await;
                    res.unwrap_or_else(|e| panic!("{size}: {start}..{end} skew {skew}: {e}"));
                    assert!(buf.as_slice() == want, "{size}: {start}..{end} skew {skew}");
                }
                let opts = GetOptions {
                    range: Some(start as u64..end as u64),
                    if_match: Some(version.clone()),
                };
                let got = fx.storage.get(&u, opts).await.unwrap();
                let body: Vec<Bytes> = got.body.try_collect().await.unwrap();
                assert!(body.concat() == want, "get {size}: {start}..{end}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_shrunk_file_is_never_served() {
    let fx = fixture();
    let path = fx.root.join("o");
    std::fs::write(&path, pattern(100_000, 1)).unwrap();
    let u = uri(&path);
    let version = Version::of(&fx.storage.head(&u).await.unwrap());
    std::fs::write(&path, pattern(50_000, 2)).unwrap();
    for (offset, len) in [(0, 10), (60_000, 4096)] {
        let e = read_exact_at(&fx.storage, &u, offset, &version, len)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Changed, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_confined_like_file_uris() {
    let fx = fixture();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::symlink(outside.path(), fx.root.join("link")).unwrap();
    for (u, kind) in [
        (uri(outside.path()), ErrorKind::PermissionDenied),
        (uri(&fx.root.join("link")), ErrorKind::PermissionDenied),
        (uri(&fx.root.join("absent")), ErrorKind::NotFound),
    ] {
        let e = read_exact_at(&fx.storage, &u, 0, &Version::default(), 1)
            .await
            .unwrap_err();
        assert_eq!((e.kind(), e.uri()), (kind, u.to_string().as_str()), "{e}");
    }
}

/// A ramfs, which has no `O_DIRECT`, mounted for the test (root only);
/// unmounted on drop.
struct Ramfs(tempfile::TempDir);

impl Ramfs {
    fn mount() -> Option<Ramfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot mount a ramfs to check the O_DIRECT refusal");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t ramfs failed as root");
        Some(Ramfs(dir))
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_without_o_direct_is_refused_clearly_or_read_buffered_when_allowed() {
    let Some(ramfs) = Ramfs::mount() else { return };
    let root = std::fs::canonicalize(ramfs.0.path()).unwrap();
    let data = pattern(10_000, 3);
    std::fs::write(root.join("o"), &data).unwrap();
    let u = uri(&root.join("o"));
    for fallback in [false, true] {
        let s = DirectStorage::new(&DirectConfig {
            roots: vec![root.clone()],
            buffered_fallback: fallback,
            ..DirectConfig::default()
        })
        .unwrap();
        let version = Version::of(&s.head(&u).await.unwrap());
        let read = read_exact_at(&s, &u, 100, &version, 5000).await;
        let get = s.get(&u, GetOptions::default()).await;
        if fallback {
            assert_eq!(read.unwrap(), data[100..5100]);
            let body: Vec<Bytes> = get.unwrap().body.try_collect().await.unwrap();
            assert_eq!(body.concat(), data);
            assert_eq!(s.metrics().buffered_reads.get(), 2);
        } else {
            for e in [read.unwrap_err(), get.unwrap_err()] {
                assert_eq!(
                    (e.kind(), e.uri()),
                    (ErrorKind::FailedPrecondition, u.to_string().as_str()),
                    "{e}"
                );
                assert!(e.message().contains("refuses O_DIRECT"), "{e}");
            }
            assert_eq!(s.metrics().buffered_reads.get(), 0);
        }
    }
}

/// Readers whose futures are dropped at random points while others read:
/// every byte any completed read returns is the file's, and the memory of
/// a dropped read is never handed to anyone while the kernel may write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_in_flight_never_corrupt_other_readers() {
    let fx = fixture();
    const FILES: usize = 6;
    const SIZE: usize = 3 * IO_SIZE + 777;
    let mut files = Vec::new();
    for i in 0..FILES {
        let data = pattern(SIZE, 100 + i as u64);
        let path = fx.root.join(format!("s{i}"));
        std::fs::write(&path, &data).unwrap();
        let u = uri(&path);
        let version = Version::of(&fx.storage.head(&u).await.unwrap());
        files.push((u, version, Arc::new(data)));
    }
    let storage = Arc::new(fx.storage);
    let files = Arc::new(files);
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (storage, files) = (storage.clone(), files.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
            let (mut completed, mut dropped) = (0, 0);
            for _ in 0..40 {
                let (u, version, data) = &files[rng.random_range(0..FILES)];
                let start = rng.random_range(0..SIZE - 1);
                let len = rng.random_range(1..=(SIZE - start).min(2 * IO_SIZE));
                let skew = if rng.random_bool(0.5) {
                    0
                } else {
                    start % 4096
                };
                let mut read = storage.read_into(u, start as u64, version, skewed(len, skew));
                match rng.random_range(0..10) {
                    // Dropped after its first poll, while its file is
                    // being opened (almost always: the open is on another
                    // thread), before any read is queued.
                    0..2 => match futures::poll!(&mut read) {
                        std::task::Poll::Pending => dropped += 1,
                        std::task::Poll::Ready((res, buf)) => {
                            res.unwrap();
                            assert!(buf.as_slice() == &data[start..start + len]);
                        }
                    },
                    // Dropped after a random short while: maybe before the
                    // ring saw it, maybe with reads in the kernel.
                    2..4 => {
                        let wait = Duration::from_micros(rng.random_range(0..2000));
                        if let Ok((res, buf)) = tokio::time::timeout(wait, read).await {
                            res.unwrap();
                            assert!(buf.as_slice() == &data[start..start + len]);
                        }
                    }
                    _ => {
                        let (res, buf) = read.await;
                        res.unwrap();
                        assert!(
                            buf.as_slice() == &data[start..start + len],
                            "{u} {start}+{len} skew {skew}"
                        );
                        completed += 1;
                    }
                }
            }
            (completed, dropped)
        }));
    }
    let (mut completed, mut dropped) = (0, 0);
    for t in tasks {
        let (c, d) = t.await.unwrap();
        completed += c;
        dropped += d;
    }
    assert!(
        completed > 0 && dropped > 0,
        "{completed} read, {dropped} dropped"
    );
    // The storage (and its ring) goes away with reads possibly still in
    // the kernel: they finish, then the ring thread ends.
    drop(storage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_are_written_exact_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture();
    for (i, len) in [0usize, 1, 4095, 4096, 4097, IO_SIZE * 2 + 5]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, 50 + i as u64);
        // From the heap (any address) and from aligned memory (as arena
        // extents are).
        let mut aligned = ReadBuf::aligned(len, ALIGN as usize);
        aligned.as_mut_slice().copy_from_slice(&data);
        for (what, bytes) in [
            ("heap", Bytes::from(data.clone())),
            ("aligned", Bytes::from_owner(aligned)),
        ] {
            let path = fx.root.join(format!("w{len}-{what}"));
            // Over an older, longer file: replaced whole.
            std::fs::write(&path, vec![7u8; len + 10_000]).unwrap();
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
            let before = mode(&path);
            fx.storage.write_file(&path, bytes).await.unwrap();
            assert!(
                std::fs::read(&path).unwrap() == data,
                "{len} bytes from {what}"
            );
            assert_eq!(mode(&path), before, "{path:?} keeps its mode");
            aligned = ReadBuf::aligned(len, ALIGN as usize);
            aligned.as_mut_slice().copy_from_slice(&data);
        }
    }
    let fresh = fx.root.join("fresh");
    fx.storage
        .write_file(&fresh, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a new file is the daemon's alone");
}
