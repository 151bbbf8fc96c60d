//! Confinement, special files and roots of the `file://` backend, each
//! checked with both resolvers.

mod race;
mod rewrite;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FileType, Mode};

use super::*;

/// Bytes that exist only outside every root: never returned by a read.
const SECRET: &[u8] = b"OUTSIDE-THE-ROOT-SECRET";

/// A root and a sibling directory outside it, in one temporary directory.
struct Tree {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        Tree {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn uri(&self, rel: &str) -> ObjectUri {
        uri(&self.root.join(rel))
    }

    /// Every entry of the outside directory with its content.
    fn outside_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let content = std::fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), content)
            })
            .collect();
        out.sort();
        out
    }
}

fn uri(p: &Path) -> ObjectUri {
    ObjectUri::parse(&format!("file://{}", p.display())).unwrap()
}

/// The kernel resolver where this kernel has `openat2`, and the walk.
fn resolvers(root: &Path) -> Vec<Resolver> {
    let probed = FileStorage::new(&[root.to_path_buf()]).unwrap().resolver();
    if probed == Resolver::Walk {
        println!("openat2 unavailable here: only the walk is tested");
        return vec![Resolver::Walk];
    }
    vec![Resolver::Kernel, Resolver::Walk]
}

fn storages(root: &Path) -> Vec<FileStorage> {
    resolvers(root)
        .into_iter()
        .map(|r| FileStorage::with_resolver(&[root.to_path_buf()], r).unwrap())
        .collect()
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.unwrap_err().kind()
}

/// Fails the test if `f` does not return: a guard against a hang, not a
/// measure of speed.
async fn returns<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

#[tokio::test]
async fn dotdot_and_escaping_symlinks_are_denied() {
    let t = Tree::new();
    std::os::unix::fs::symlink(&t.outside, t.root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", t.root.join("up")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", t.root.join("up-file")).unwrap();
    // Climbs out and back in: still leaves the root on the way.
    std::os::unix::fs::symlink("../root", t.root.join("out-and-in")).unwrap();
    std::fs::write(t.root.join("f"), b"inside").unwrap();
    for s in storages(&t.root) {
        let root = t.root.display();
        for bad in [
            format!("file://{root}/../outside/secret"),
            format!("file://{root}/./f"),
            format!("file://{root}/x/../f"),
        ] {
            let u = ObjectUri::parse(&bad).unwrap();
            let e = s.head(&u).await.unwrap_err();
            assert_eq!((e.kind(), e.uri()), (ErrorKind::PermissionDenied, &*bad));
        }
        for rel in ["abs/secret", "up/secret", "up-file", "out-and-in/f"] {
            let u = t.uri(rel);
            let e = s.head(&u).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{rel}: {e}");
            assert!(e.message().contains("leaves its file root"), "{e}");
            assert_eq!(kind(s.get(&u, GetOptions::default()).await), e.kind());
            if rel != "up-file" {
                // (Deleting the link itself is allowed: see the next test.)
                assert_eq!(kind(s.delete(&u).await), ErrorKind::PermissionDenied);
            }
        }
        for rel in ["abs/new", "up/new", "up/deeper/new"] {
            let put = s.put(&t.uri(rel), Bytes::from_static(b"y")).await;
            assert_eq!(kind(put), ErrorKind::PermissionDenied, "{rel}");
        }
        // Outside every root.
        assert_eq!(
            kind(s.head(&uri(&t.outside.join("secret"))).await),
            ErrorKind::PermissionDenied
        );
    }
    assert_eq!(
        t.outside_snapshot(),
        [("secret".to_owned(), SECRET.to_vec())]
    );
}

#[tokio::test]
async fn symlinks_beneath_the_root_are_followed_and_replaced_not_written_through() {
    let t = Tree::new();
    std::fs::create_dir_all(t.root.join("a/b")).unwrap();
    std::fs::write(t.root.join("a/b/f"), b"data").unwrap();
    std::os::unix::fs::symlink("a/b/f", t.root.join("file-link")).unwrap();
    std::os::unix::fs::symlink("a", t.root.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("../b/f", t.root.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink("../b/../b/up", t.root.join("a/b/chain")).unwrap();
    // Absolute, even to a file beneath the root: refused (documented).
    std::os::unix::fs::symlink(t.root.join("a/b/f"), t.root.join("abs-in")).unwrap();
    for s in storages(&t.root) {
        let want = s.head(&t.uri("a/b/f")).await.unwrap().etag;
        for rel in ["file-link", "dir-link/b/f", "a/b/up", "a/b/chain"] {
            let got = s.head(&t.uri(rel)).await.unwrap();
            assert_eq!((got.size, &got.etag), (4, &want), "{rel}");
        }
        assert_eq!(
            kind(s.head(&t.uri("abs-in")).await),
            ErrorKind::PermissionDenied
        );
        let page = s
            .list(
                &t.uri(""),
                &ListOptions {
                    page_size: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.uri.clone()).collect();
        // Links to files are objects; the linked directory is not entered,
        // the absolute link is not listed.
        let want: Vec<_> = ["a/b/chain", "a/b/f", "a/b/up", "file-link"]
            .map(|r| t.uri(r).to_string())
            .to_vec();
        assert_eq!(keys, want);
    }
    // A write replaces the link itself, never its target; so does a delete.
    let s = storage(&t.root);
    std::os::unix::fs::symlink(t.outside.join("secret"), t.root.join("to-secret")).unwrap();
    s.put(&t.uri("to-secret"), Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert!(
        t.root
            .join("to-secret")
            .symlink_metadata()
            .unwrap()
            .is_file()
    );
    s.delete(&t.uri("file-link")).await.unwrap();
    assert_eq!(std::fs::read(t.root.join("a/b/f")).unwrap(), b"data");
    assert_eq!(
        t.outside_snapshot(),
        [("secret".to_owned(), SECRET.to_vec())]
    );
}

fn storage(dir: &Path) -> FileStorage {
    FileStorage::new(&[dir.to_path_buf()]).unwrap()
}

#[tokio::test]
async fn writes_and_deletes_naming_a_root_are_refused() {
    let t = Tree::new();
    let alias = t.root.with_file_name("alias");
    std::os::unix::fs::symlink("root", &alias).unwrap();
    let s = FileStorage::new(&[alias.clone(), t.root.join("../outside/..").join("root")]);
    // A configured name with '..' is served under its canonical name only.
    let s = s.unwrap();
    for name in [&t.root, &alias] {
        for key in [
            format!("{}", name.display()),
            format!("{}/", name.display()),
        ] {
            let u = ObjectUri::parse(&format!("file://{key}")).unwrap();
            assert_eq!(
                kind(s.put(&u, Bytes::from_static(b"x")).await),
                ErrorKind::PermissionDenied,
                "{u}"
            );
            assert_eq!(
                kind(s.start_multipart(&u).await),
                ErrorKind::PermissionDenied
            );
            assert_eq!(kind(s.delete(&u).await), ErrorKind::PermissionDenied);
        }
    }
    assert!(t.root.is_dir());
    // Both names of the root serve the same files.
    std::fs::write(t.root.join("f"), b"1").unwrap();
    let via_alias = s.head(&uri(&alias.join("f"))).await.unwrap();
    assert_eq!(via_alias.etag, s.head(&t.uri("f")).await.unwrap().etag);
}

#[tokio::test]
async fn the_longest_root_wins_and_roots_match_whole_components() {
    let t = Tree::new();
    std::fs::create_dir_all(t.root.join("inner/x")).unwrap();
    std::fs::create_dir_all(t.root.join("innerx")).unwrap();
    std::fs::write(t.root.join("inner/x/f"), b"1").unwrap();
    std::os::unix::fs::symlink("../x/f", t.root.join("inner/x/up")).unwrap();
    std::os::unix::fs::symlink("../../inner/x/f", t.root.join("inner/x/up2")).unwrap();
    let inner = t.root.join("inner");
    let s = FileStorage::new(&[inner.clone(), t.root.clone()]).unwrap();
    // `inner/x/up` stays beneath the root `inner`...
    assert_eq!(s.head(&t.uri("inner/x/up")).await.unwrap().size, 1);
    // ...`up2` climbs above `inner`, its root, though not above the outer one.
    assert_eq!(
        kind(s.head(&t.uri("inner/x/up2")).await),
        ErrorKind::PermissionDenied
    );
    // `innerx` is under the outer root only, not under `inner`.
    let only_inner = FileStorage::new(&[inner]).unwrap();
    s.put(&t.uri("innerx/g"), Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(
        kind(only_inner.head(&t.uri("innerx/g")).await),
        ErrorKind::PermissionDenied
    );
}

/// Makes a FIFO, a listening socket and (as root) a character device under
/// the root; returns their names and what keeps the socket open.
fn special_files(root: &Path) -> (Vec<&'static str>, std::os::unix::net::UnixListener) {
    let cwd = rustix::fs::CWD;
    let fifo = root.join("fifo");
    rustix::fs::mknodat(cwd, &fifo, FileType::Fifo, Mode::from_raw_mode(0o666), 0).unwrap();
    let socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    std::os::unix::fs::symlink("fifo", root.join("fifo-link")).unwrap();
    let mut names = vec!["fifo", "socket", "fifo-link"];
    let null = rustix::fs::makedev(1, 3);
    let dev = root.join("null");
    match rustix::fs::mknodat(
        cwd,
        &dev,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        null,
    ) {
        Ok(()) => names.push("null"),
        Err(e) => println!("skipping the device case: mknod needs CAP_MKNOD ({e})"),
    }
    (names, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_and_devices_are_refused_without_blocking() {
    let t = Tree::new();
    let (names, _socket) = special_files(&t.root);
    for s in storages(&t.root) {
        for name in &names {
            let u = t.uri(name);
            let shown = u.to_string();
            let head = returns("head", s.head(&u)).await.unwrap_err();
            assert_eq!(
                (head.kind(), head.uri()),
                (ErrorKind::PermissionDenied, &*shown),
                "{head}"
            );
            assert!(head.message().contains("only regular files"), "{head}");
            let get = returns("get", s.get(&u, GetOptions::default())).await;
            assert_eq!(kind(get), ErrorKind::PermissionDenied, "{name}");
            let read = returns(
                "read_into",
                crate::read_exact_at(&s, &u, 0, &Version::default(), 4),
            )
            .await;
            assert_eq!(kind(read), ErrorKind::PermissionDenied, "{name}");
            if *name == "fifo-link" {
                continue; // a link is replaced or removed, never what it names
            }
            let put = returns("put", s.put(&u, Bytes::from_static(b"x"))).await;
            assert_eq!(kind(put), ErrorKind::PermissionDenied, "{name}");
            assert_eq!(kind(s.delete(&u).await), ErrorKind::PermissionDenied);
            let ft = t.root.join(name).symlink_metadata().unwrap().file_type();
            assert!(!ft.is_file(), "{name} left as it was");
        }
    }
    // Listings skip them.
    let page = storage(&t.root)
        .list(
            &t.uri(""),
            &ListOptions {
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.objects, vec![]);
}

#[tokio::test]
async fn an_upload_lands_in_the_directory_it_resolved_even_if_swapped() {
    let t = Tree::new();
    std::fs::create_dir(t.root.join("d")).unwrap();
    std::os::unix::fs::symlink(&t.outside, t.root.join("s")).unwrap();
    for s in storages(&t.root) {
        let mut up = s.start_multipart(&t.uri("d/obj")).await.unwrap();
        up.put_part(Bytes::from_static(b"part one ")).await.unwrap();
        // `d` now names the outside directory; the real `d` is called `s`.
        let dir = rustix::fs::open(&t.root, OFlags::PATH, Mode::empty()).unwrap();
        let exchange = rustix::fs::RenameFlags::EXCHANGE;
        rustix::fs::renameat_with(&dir, "d", &dir, "s", exchange).unwrap();
        up.put_part(Bytes::from_static(b"part two")).await.unwrap();
        up.complete().await.unwrap();
        rustix::fs::renameat_with(&dir, "d", &dir, "s", exchange).unwrap();
        assert_eq!(
            std::fs::read(t.root.join("d/obj")).unwrap(),
            b"part one part two"
        );
        // An aborted one cleans up in its directory too.
        let mut up = s.start_multipart(&t.uri("d/gone")).await.unwrap();
        up.put_part(Bytes::from_static(b"x")).await.unwrap();
        rustix::fs::renameat_with(&dir, "d", &dir, "s", exchange).unwrap();
        drop(up);
        rustix::fs::renameat_with(&dir, "d", &dir, "s", exchange).unwrap();
        let left: Vec<_> = std::fs::read_dir(t.root.join("d")).unwrap().collect();
        assert_eq!(left.len(), 1, "only obj: {left:?}");
        std::fs::remove_file(t.root.join("d/obj")).unwrap();
    }
    assert_eq!(
        t.outside_snapshot(),
        [("secret".to_owned(), SECRET.to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_into_reads_in_place_and_checks_the_version() {
    let root = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let s = storage(&root_path);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root_path.join("o"), &data).unwrap();
    let u = uri(&root_path.join("o"));
    let version = Version::of(&s.head(&u).await.unwrap());
    let dst = crate::read_exact_at(&s, &u, 50_000, &version, 30_000)
        .await
        .unwrap();
    assert_eq!(dst, data[50_000..80_000]);
    let err = crate::read_exact_at(&s, &u, 0, &Version::etag("another-version"), 30_000)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Changed);
    // Past the end: the file is shorter than the part asked for.
    let err = crate::read_exact_at(&s, &u, 90_000, &version, 30_000)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Changed, "{err}");
}

#[test]
fn etags_are_size_mtime_ns_inode() {
    let t = Tree::new();
    std::fs::write(t.root.join("f"), b"12345").unwrap();
    let md = std::fs::metadata(t.root.join("f")).unwrap();
    let st = rustix::fs::stat(t.root.join("f")).unwrap();
    let ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    let want = format!("{:x}-{:x}-{:x}", 5, ns, md.ino());
    assert_eq!(meta_of(String::new(), &st).etag, Some(want));
}

#[test]
fn clamp_follows_the_contract() {
    let u = ObjectUri::parse("file:///x").unwrap();
    assert_eq!(clamp_range(&u, None, 10).unwrap(), 0..10);
    assert_eq!(clamp_range(&u, Some(2..100), 10).unwrap(), 2..10);
    assert_eq!(clamp_range(&u, Some(0..5), 0).unwrap(), 0..0);
    assert_eq!(
        clamp_range(&u, Some(10..12), 10).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// Components an attacker would try, and plain names.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("abs".to_owned()),
            Just("up".to_owned()),
            Just("inner".to_owned()),
            Just("loop".to_owned()),
            Just("f".to_owned()),
            Just("secret".to_owned()),
            Just("outside".to_owned()),
            "[a-z.%/\\\\ ]{1,6}",
            "\\PC{1,4}",
        ]
    }

    fn tree() -> Tree {
        let t = Tree::new();
        std::fs::create_dir(t.root.join("inner")).unwrap();
        std::fs::write(t.root.join("inner/f"), b"in").unwrap();
        std::os::unix::fs::symlink(&t.outside, t.root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", t.root.join("up")).unwrap();
        std::os::unix::fs::symlink("../..", t.root.join("inner/up")).unwrap();
        std::os::unix::fs::symlink("loop", t.root.join("loop")).unwrap();
        std::os::unix::fs::symlink("../f", t.root.join("inner/f-up")).unwrap();
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the path, an open beneath the root ends beneath it.
        #[test]
        fn arbitrary_paths_never_resolve_outside_the_root(
            parts in proptest::collection::vec(component(), 0..8),
        ) {
            let t = tree();
            let key = format!("{}/{}", t.root.display(), parts.join("/"));
            let Ok(u) = ObjectUri::parse(&format!("file://{key}")) else {
                return Ok(()); // a nul byte: refused by the parser
            };
            for resolver in resolvers(&t.root) {
                let roots = Roots::open(std::slice::from_ref(&t.root), Some(resolver), "file").unwrap();
                let Ok(at) = roots.locate(&u) else { continue };
                if let Ok(fd) = at.open(STAT_FLAGS) {
                    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
                    prop_assert!(real.starts_with(&t.root), "{key} -> {}", real.display());
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                for s in storages(&t.root) {
                    if let Ok(got) = s.get(&u, GetOptions::default()).await {
                        let body: Vec<Bytes> = futures::TryStreamExt::try_collect(got.body).await.unwrap();
                        assert_ne!(body.concat(), SECRET, "{key}");
                    }
                    let _ = s.put(&u, Bytes::from_static(b"w")).await;
                    let _ = s.delete(&u).await;
                    let _ = s.list(&u, &ListOptions { page_size: 5, ..Default::default() }).await;
                }
            });
            prop_assert_eq!(t.outside_snapshot(), [("secret".to_owned(), SECRET.to_vec())]);
        }
    }

    use std::os::fd::AsRawFd;
}

#[tokio::test]
async fn names_up_to_name_max_upload_and_longer_ones_are_invalid() {
    let t = Tree::new();
    let s = storage(&t.root);
    let longest = "n".repeat(255);
    s.put(&t.uri(&longest), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(s.head(&t.uri(&longest)).await.unwrap().size, 1);
    let too_long = "n".repeat(256);
    let e = s
        .put(&t.uri(&too_long), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        kind(s.head(&t.uri(&too_long)).await),
        ErrorKind::InvalidArgument
    );
}
