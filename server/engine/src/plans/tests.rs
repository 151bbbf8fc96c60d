//! Unit tests of the plans and their look-ahead windows.

use super::*;

fn uri(i: usize) -> Arc<str> {
    Arc::from(format!("file:///d/{i}"))
}

fn plan_of(keys: &[usize]) -> Vec<Option<Arc<str>>> {
    keys.iter().map(|&i| Some(uri(i))).collect()
}

const P: PlanKey = PlanKey { session: 1, id: 1 };

#[test]
fn next_use_follows_the_position() {
    let mut plans = Plans::new(PlanLimits::default());
    plans
        .append(P, "job", &plan_of(&[0, 1, 2, 0, 1]), true, true)
        .unwrap();
    assert_eq!(plans.next_use(&uri(1)), Some(1));
    plans.advance(P, 2);
    assert_eq!(
        plans.next_use(&uri(1)),
        Some(2),
        "its second occurrence, at 4"
    );
    assert_eq!(plans.next_use(&uri(2)), Some(0));
    plans.advance(P, 5);
    assert_eq!(plans.next_use(&uri(0)), None);
    // Consumption by fetch moves the position past the object.
    plans.drop_plan(P);
    plans
        .append(P, "job", &plan_of(&[3, 4, 5]), true, true)
        .unwrap();
    assert!(plans.consumed(1, &uri(4)));
    assert!(!plans.consumed(2, &uri(5)), "another session's fetch");
    assert_eq!(plans.list()[0].position, 2);
}

#[test]
fn victims_are_unplanned_first_then_furthest() {
    // Plans end with their session here (lingering has a test of its own).
    let mut plans = Plans::new(PlanLimits {
        linger: Duration::ZERO,
        ..PlanLimits::default()
    });
    plans
        .append(P, "", &plan_of(&[0, 1, 2, 3]), true, true)
        .unwrap();
    for i in [9, 3, 1, 2] {
        plans.on_insert(&uri(i));
    }
    let all = |_: &str| true;
    assert_eq!(plans.victim(0, &all), Some(uri(9)), "never used again");
    plans.on_remove(&uri(9));
    assert_eq!(plans.victim(0, &all), Some(uri(3)));
    let not3 = |k: &str| k != &*uri(3);
    assert_eq!(
        plans.victim(0, &not3),
        Some(uri(2)),
        "pinned ones are skipped"
    );
    assert_eq!(plans.victim(3, &all), Some(uri(3)), "outside the window");
    assert_eq!(plans.victim(4, &all), None, "all inside the window");
    // A second plan that reads 3 first keeps it.
    let q = PlanKey { session: 2, id: 7 };
    plans.append(q, "", &plan_of(&[3]), true, true).unwrap();
    assert_eq!(plans.victim(0, &all), Some(uri(2)));
    plans.drop_session(2);
    assert_eq!(plans.victim(0, &all), Some(uri(3)));
    plans.drop_plan(P);
    assert!(plans.keys.is_empty(), "no key outlives its plans");
    assert_eq!(
        plans.unplanned.len(),
        3,
        "all cached objects are unplanned now"
    );
    assert!(plans.victim(0, &all).is_some());
}

#[test]
fn large_objects_are_prefetched_a_few_at_a_time() {
    let mut plans = Plans::new(PlanLimits::default());
    let keys: Vec<usize> = (0..20).collect();
    plans.append(P, "", &plan_of(&keys), true, true).unwrap();
    let first = plans.next_prefetch(100, &|_| None);
    assert_eq!(first.len(), 2, "two until a size is known");
    // 32 MiB objects: 64 MiB in flight is two of them.
    plans.prefetched(&first[0], Prefetched::Cached(32 << 20));
    let next = plans.next_prefetch(100, &|_| None);
    assert_eq!(next.len(), 1, "one running, two allowed");
    // 128 KiB objects: as many as the caller allows.
    let mut small = Plans::new(PlanLimits::default());
    let q = PlanKey { session: 2, id: 1 };
    small.append(q, "", &plan_of(&keys), true, true).unwrap();
    let first = small.next_prefetch(100, &|_| None);
    small.prefetched(&first[0], Prefetched::Cached(128 << 10));
    assert_eq!(small.next_prefetch(100, &|_| None).len(), 18);
}

#[test]
fn limits_refuse_and_keep_nothing() {
    let limits = PlanLimits {
        max_plan_items: 3,
        max_items: 5,
        max_session_plans: 2,
        ..PlanLimits::default()
    };
    let mut plans = Plans::new(limits);
    assert_eq!(
        plans.append(P, "", &plan_of(&[0, 1, 2, 3]), true, true),
        Err(PlanError::PlanTooLarge(3))
    );
    assert!(plans.is_empty() && plans.keys.is_empty());
    plans.append(P, "", &plan_of(&[0, 1]), true, false).unwrap();
    assert!(plans.append(P, "", &plan_of(&[2, 3]), false, true).is_err());
    assert!(plans.is_empty(), "a refused page drops its plan");
    let q = PlanKey { session: 1, id: 2 };
    let r = PlanKey { session: 1, id: 3 };
    plans
        .append(P, "", &plan_of(&[0, 1, 2]), true, true)
        .unwrap();
    assert_eq!(
        plans.append(q, "", &plan_of(&[0, 1, 2]), true, true),
        Err(PlanError::NodeFull(3))
    );
    plans.append(q, "", &plan_of(&[0]), true, true).unwrap();
    assert_eq!(
        plans.append(r, "", &plan_of(&[0]), true, true),
        Err(PlanError::TooManyPlans(2))
    );
    assert_eq!(plans.items(), 4);
}

#[test]
fn the_look_ahead_stays_within_its_bounds() {
    let limits = PlanLimits {
        lookahead_items: 4,
        lookahead_bytes: 250,
        ..PlanLimits::default()
    };
    let mut plans = Plans::new(limits);
    let keys: Vec<usize> = (0..20).collect();
    plans.append(P, "", &plan_of(&keys), true, true).unwrap();
    // Two at a time until a size is known, then by the average size.
    let jobs = plans.next_prefetch(100, &|_| None);
    assert_eq!(jobs.iter().map(|j| j.index).collect::<Vec<_>>(), [0, 1]);
    for job in &jobs {
        plans.prefetched(job, Prefetched::Cached(100));
    }
    let jobs = plans.next_prefetch(100, &|_| None);
    assert_eq!(jobs.iter().map(|j| j.index).collect::<Vec<_>>(), [2, 3]);
    for job in &jobs {
        plans.prefetched(job, Prefetched::Cached(100));
    }
    plans.advance(P, 2);
    assert_eq!(plans.ahead_bytes(), 200);
    // Up to the item bound again (sizes in flight are not known yet).
    let more = plans.next_prefetch(100, &|_| None);
    assert_eq!(more.iter().map(|j| j.index).collect::<Vec<_>>(), [4, 5]);
    plans.prefetched(&more[0], Prefetched::Cached(100));
    assert_eq!(plans.ahead_bytes(), 300);
    plans.prefetched(&more[1], Prefetched::NoRoom);
    assert!(plans.next_prefetch(100, &|_| None).is_empty(), "blocked");
    plans.advance(P, 3);
    assert_eq!(plans.ahead_bytes(), 200);
    let again = plans.next_prefetch(100, &|_| None);
    assert_eq!(
        again.iter().map(|j| j.index).collect::<Vec<_>>(),
        [5, 6],
        "the refused item comes back first"
    );
    for job in &again {
        plans.prefetched(job, Prefetched::Cached(100));
    }
    plans.advance(P, 4);
    assert_eq!(plans.ahead_bytes(), 300);
    assert!(
        plans.next_prefetch(100, &|_| None).is_empty(),
        "300 > 250 bytes ahead"
    );
}

/// A session's plan outlives it: its objects keep their distances (so a
/// sibling's misses do not take them) until the same plan comes from a new
/// session, or the linger time is up; meanwhile it prefetches nothing and
/// counts as no live plan.
#[test]
fn plans_linger_after_their_session_until_replaced_or_expired() {
    let limits = PlanLimits {
        linger: Duration::from_secs(10),
        ..PlanLimits::default()
    };
    let mut plans = Plans::new(limits);
    // Worker A (session 1) planned [0, 1, 2, 3] and read 0; worker B
    // (session 2) is live and has read everything of its own.
    plans
        .append(P, "", &plan_of(&[0, 1, 2, 3]), true, true)
        .unwrap();
    let b = PlanKey { session: 2, id: 1 };
    plans.append(b, "", &plan_of(&[8]), true, true).unwrap();
    plans.advance(P, 1);
    plans.advance(b, 1);
    for i in [8, 1, 3] {
        plans.on_insert(&uri(i));
    }
    let all = |_: &str| true;
    plans.drop_session(1);
    assert_eq!(plans.len(), 1, "only B's plan counts as live");
    assert_eq!(plans.list().len(), 1);
    // B misses: it evicts what no plan reads again (its own 8), not A's.
    assert_eq!(plans.victim(0, &all), Some(uri(8)));
    plans.on_remove(&uri(8));
    assert_eq!(plans.victim(0, &all), Some(uri(3)), "then A's furthest");
    // A lingering plan prefetches nothing.
    assert!(plans.next_prefetch(8, &|_| None).is_empty());
    // Expired: its objects are unplanned again.
    plans.expire_orphans(Instant::now() + Duration::from_secs(11));
    assert_eq!(plans.items(), 1, "only B's item is left");
    assert!(plans.next_use(&uri(1)).is_none());

    // Replaced: the same plan id from a new session takes its place.
    plans
        .append(P, "", &plan_of(&[0, 1, 2, 3]), true, true)
        .unwrap();
    plans.drop_session(1);
    let a2 = PlanKey { session: 3, id: 1 };
    plans.append(a2, "", &plan_of(&[5, 6]), true, true).unwrap();
    assert_eq!(
        plans.items(),
        3,
        "B's 1 and the new plan's 2: the lingering one is gone"
    );
    assert_eq!(plans.len(), 2);
    assert!(plans.next_use(&uri(2)).is_none());

    // A plan read to its end does not linger; nor does any with linger 0.
    plans.advance(a2, 2);
    plans.drop_session(3);
    assert_eq!(plans.items(), 1);
    let mut now_ends = Plans::new(PlanLimits {
        linger: Duration::ZERO,
        ..PlanLimits::default()
    });
    now_ends
        .append(P, "", &plan_of(&[0, 1]), true, true)
        .unwrap();
    now_ends.drop_session(1);
    assert_eq!(now_ends.items(), 0);
}
