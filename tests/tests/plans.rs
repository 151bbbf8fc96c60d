//! Epoch plans over the Session against a real daemon: prefetch ahead of
//! the position, positions moved by fetches, plans ended with their
//! session, refusals, and what `Stats` / `sluice stats` show to whom.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use sluice_client::{Client, SessionOptions};
use sluice_tests::daemon::{TestDaemon, bin};
use sluice_tests::grpc::pattern;
use tonic::Code;

async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    for _ in 0..6000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("waited a minute for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_read_ahead_followed_by_fetches_and_ends_with_its_session() {
    let d = TestDaemon::start_with(|c| c.prefetch.lookahead_items = 4).await;
    let mut uris = Vec::new();
    for i in 0..12 {
        std::fs::write(
            d.root().join(format!("{i:02}")),
            pattern(20_000 + i, i as u8),
        )
        .unwrap();
        uris.push(d.file_uri(&format!("{i:02}")));
    }
    let client = Client::connect(&d.address()).await.unwrap();
    let session = client.session(SessionOptions::default()).await.unwrap();
    assert!(session.takes_plans());
    assert_eq!(
        session
            .submit_plan(5, "job-a", uris.iter().map(String::as_str))
            .await
            .unwrap(),
        12
    );
    let plan_of = |stats: &sluice_client::StatsResponse| {
        let s = stats
            .sessions
            .iter()
            .find(|s| s.session_id == session.session_id())
            .expect("our session is listed");
        s.plans.first().cloned().expect("its plan is listed")
    };
    // The window fills: 4 items ahead of position 0.
    until("the window to fill", || async {
        let stats = client.stats().await.unwrap();
        stats.prefetched == 4 && plan_of(&stats).ahead_items == 4
    })
    .await;
    let plan = plan_of(&client.stats().await.unwrap());
    assert_eq!(
        (plan.plan_id, plan.job.as_str(), plan.items),
        (5, "job-a", 12)
    );
    assert!(plan.complete);

    // Fetching the plan's items moves the position and the window.
    for (i, uri) in uris.iter().take(6).enumerate() {
        let got = session.fetch(uri, None).await.unwrap();
        assert_eq!(got.to_vec(), pattern(20_000 + i, i as u8));
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(plan_of(&stats).position, 6);
    let me = stats
        .sessions
        .iter()
        .find(|s| s.session_id == session.session_id())
        .unwrap();
    assert_eq!(me.fetches, 6);
    assert_eq!(me.hits + me.stalled, 6);
    assert!(
        me.hits >= 1,
        "prefetched items were read from the cache: {me:?}"
    );
    // Items 6..10 are read ahead now (fetched by prefetch, or found cached).
    until("the window to move", || async {
        plan_of(&client.stats().await.unwrap()).ahead_items == 4
    })
    .await;

    // An explicit position, then the session's end ends the plan.
    session.plan_progress(5, 9).await.unwrap();
    until("the position to move", || async {
        plan_of(&client.stats().await.unwrap()).position == 9
    })
    .await;
    let id = session.session_id();
    drop(session);
    until("the session and its plan to go", || async {
        let stats = client.stats().await.unwrap();
        stats.sessions.iter().all(|s| s.session_id != id) && stats.lookahead_items == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused_whole() {
    let d = TestDaemon::start_with(|c| c.prefetch.max_plan_items = 5_000).await;
    let client = Client::connect(&d.address()).await.unwrap();
    let session = client.session(SessionOptions::default()).await.unwrap();
    let good = d.file_uri("a");
    // Each item is checked as a fetch of it would be.
    let err = session
        .submit_plan(1, "", [good.as_str(), "relative/path"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("relative/path"), "{err}");
    let err = session
        .submit_plan(1, "", [good.as_str(), "s3://no-such-endpoint:1/b/k"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("no-such-endpoint"), "{err}");
    let long = "x".repeat(300);
    let err = session
        .submit_plan(2, &long, [good.as_str()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("job name"), "{err}");
    // Over the item limit, across pages: refused, nothing kept.
    let many: Vec<String> = (0..6_000).map(|i| d.file_uri(&format!("m{i}"))).collect();
    let err = session.submit_plan(3, "", many).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("5000"), "{err}");
    let stats = client.stats().await.unwrap();
    let me = stats
        .sessions
        .iter()
        .find(|s| s.session_id == session.session_id())
        .unwrap();
    assert!(me.plans.is_empty(), "a refused plan is not kept: {me:?}");
    // The session still works, and takes a good plan.
    assert_eq!(
        session.submit_plan(4, "", [good.as_str()]).await.unwrap(),
        1
    );
}

/// Another user sees its own sessions only, and the node's counters; an
/// admin sees every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_other_users_sessions_only_to_admins() {
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    for admin in [false, true] {
        let d = TestDaemon::start_with(|c| {
            c.server.socket_mode = "0666".into();
            if admin {
                c.server.admin_uids = vec![NOBODY];
            }
        })
        .await;
        let run_dir = d.socket().parent().unwrap();
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let client = Client::connect(&d.address()).await.unwrap();
        let session = client.session(SessionOptions::default()).await.unwrap();
        session
            .submit_plan(1, "secret-job", [d.file_uri("x")])
            .await
            .unwrap();
        let out = Command::new(bin("sluice"))
            .args(["--address", &d.address(), "stats"])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("cache "), "{stdout}");
        if admin {
            assert!(stdout.contains("secret-job"), "{stdout}");
        } else {
            assert!(!stdout.contains("secret-job"), "{stdout}");
            assert!(stdout.contains("no sessions visible"), "{stdout}");
        }
        drop(session);
    }
}
