//! The client library and the gRPC service against real replicas served in this process on
//! 127.0.0.1: blocking notifications and downgrade, the lock cache, LVBs, lease expiry, and
//! bad input answered with clear statuses.
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_client::{BlockingNotice, Error, ErrorKind, LockOptions, Mode, Revoke, Session, SessionOptions};
use lockd_common::wire::kind_name;
use lockd_server::ReplicaConfig;
use mafs_proto::v1 as pb;
use parking_lot::Mutex;
use pb::lockd_client::LockdClient;
use tonic::Code;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Starts `n` replicas in this process and waits for a leader; returns the endpoints.
async fn cluster(n: u64, dir: &std::path::Path) -> Vec<String> {
    cluster_at((0..n).map(|_| free_addr()).collect(), dir).await
}

/// [`cluster`] with one replica listening at each of `addrs`.
async fn cluster_at(addrs: Vec<String>, dir: &std::path::Path) -> Vec<String> {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("MAFS_LOG")).with_test_writer().try_init();
    let members: std::collections::BTreeMap<u64, String> = addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
    for (id, addr) in &members {
        let mut cfg = ReplicaConfig::new(*id, addr.clone(), dir.join(format!("r{id}")));
        cfg.members = members.clone();
        cfg.lease_margin = Duration::from_millis(200);
        cfg.snapshot_every = 50;
        tokio::spawn(async move {
            if let Err(e) = lockd_server::server::serve(cfg).await {
                panic!("replica failed: {e}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = LockdClient::connect(format!("http://{}", addrs[0])).await {
            if let Ok(s) = c.status(pb::StatusRequest {}).await {
                if s.get_ref().leader_id != 0 {
                    return addrs;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn opts(name: &str) -> SessionOptions {
    let mut o = SessionOptions::new(name);
    o.lease = Duration::from_secs(3);
    o
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_notification_makes_the_holder_downgrade() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(3, dir.path()).await;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut oa = opts("node-a");
    let seen = notices.clone();
    oa.on_blocking = Some(Arc::new(move |n| {
        seen.lock().push(n.clone());
        // Here the filesystem would flush what the lock covers and drop kernel caches.
        Revoke::Downgrade { mode: Mode::PR, lvb: Some(b"size=42".to_vec()) }
    }));
    let a = Session::open(&eps, oa).await.unwrap();
    let b = Session::open(&eps, opts("node-b")).await.unwrap();

    let g = a.lock("inode/7", Mode::EX, LockOptions::default()).await.unwrap();
    let ex_token = g.grant.token;
    drop(g); // unused but cached
    assert_eq!(a.cached("inode/7"), Some(Mode::EX));

    // A cached lock is reused with no round trip at all.
    let before = a.round_trips();
    for _ in 0..100 {
        let g = a.lock("inode/7", Mode::PR, LockOptions::default()).await.unwrap();
        assert_eq!(g.grant.token, ex_token);
    }
    assert_eq!(a.round_trips(), before, "cached re-acquire went to the network");

    let gb = b.lock("inode/7", Mode::PR, LockOptions::wait(Duration::from_secs(10))).await.unwrap();
    assert_eq!(gb.grant.mode, Mode::PR);
    assert!(gb.grant.token > ex_token);
    assert_eq!(gb.grant.lvb, b"size=42", "the LVB written on downgrade reaches the next holder");
    let n = notices.lock().clone();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!((n[0].resource.as_str(), n[0].held, n[0].requested), ("inode/7", Mode::EX, Mode::PR));
    wait_for("a's cache to show PR", Duration::from_secs(5), || a.cached("inode/7") == Some(Mode::PR)).await;
    // Both read now; a's PR is still cached.
    let before = a.round_trips();
    drop(a.lock("inode/7", Mode::PR, LockOptions::default()).await.unwrap());
    assert_eq!(a.round_trips(), before);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_cached_lock_is_released_on_demand_but_a_busy_one_waits_for_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let a = Session::open(&eps, opts("a")).await.unwrap();
    let b = Session::open(&eps, opts("b")).await.unwrap();
    let g = a.lock("ag/1", Mode::EX, LockOptions::default()).await.unwrap();
    let started = Instant::now();
    let eps2 = eps.clone();
    let waiter = tokio::spawn(async move {
        let r = b.lock("ag/1", Mode::EX, LockOptions::wait(Duration::from_secs(10))).await;
        (r.map(|g| g.grant.token), Instant::now(), b, eps2)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_use_until = Instant::now();
    drop(g); // the revocation may only proceed now
    let (tok, granted_at, b, _) = waiter.await.unwrap();
    assert!(tok.is_ok(), "{tok:?}");
    assert!(granted_at >= in_use_until, "granted while a was still using it");
    assert!(granted_at - started < Duration::from_secs(5));
    wait_for("a's cache to drop ag/1", Duration::from_secs(5), || a.cached("ag/1").is_none()).await;
    // try-lock against b's EX fails at once.
    let e = a.lock("ag/1", Mode::PR, LockOptions::try_now()).await.err();
    assert!(matches!(e, Some(Error::NotGranted { .. })), "{e:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_releases_locks_and_the_holder_learns_it_lost_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let mut o = opts("doomed");
    o.lease = Duration::from_millis(1000);
    let a = Session::open(&eps, o).await.unwrap();
    let b = Session::open(&eps, opts("survivor")).await.unwrap();
    let _g = a.lock("slot/3", Mode::EX, LockOptions::default()).await.unwrap();
    let id = a.id();
    drop(a); // a crash: heartbeats stop, no goodbye
    let t0 = Instant::now();
    let g = b.lock("slot/3", Mode::EX, LockOptions::wait(Duration::from_secs(10))).await.unwrap();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(700), "granted after {waited:?}, before the lease could lapse");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(g.grant.token.is_some_and(|t| t.get() > 1));
    // The expired session is gone for good.
    let mut c = LockdClient::connect(format!("http://{}", eps[0])).await.unwrap();
    let st = c.heartbeat(pb::HeartbeatRequest { session_id: id }).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses_and_the_service_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let mut c = LockdClient::connect(format!("http://{}", eps[0])).await.unwrap();
    let sid = c
        .open_session(pb::OpenSessionRequest { node_name: "n".into(), lease_ms: 5000, hold_locks_on_expiry: false })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let lock = |session_id: u64, resource: &str, mode: i32| pb::LockRequest {
        session_id,
        resource: resource.into(),
        mode,
        timeout_ms: 1000,
        ..Default::default()
    };
    let cases: Vec<(&str, pb::LockRequest, Code, &str)> = vec![
        ("unknown session", lock(9999, "r", Mode::EX.to_wire()), Code::NotFound, "unknown-session"),
        ("mode out of range", lock(sid, "r", 17), Code::InvalidArgument, "invalid"),
        ("name over 256 bytes", lock(sid, &"n".repeat(257), Mode::EX.to_wire()), Code::InvalidArgument, "bad-resource"),
        ("empty name", lock(sid, "", Mode::EX.to_wire()), Code::InvalidArgument, "bad-resource"),
        (
            "conversion of nothing",
            pb::LockRequest { convert: true, ..lock(sid, "r", Mode::EX.to_wire()) },
            Code::FailedPrecondition,
            "not-held",
        ),
        (
            "LVB over 64 bytes",
            pb::LockRequest { write_lvb: true, lvb: vec![0; 65], ..lock(sid, "r", Mode::EX.to_wire()) },
            Code::InvalidArgument,
            "lvb-too-large",
        ),
    ];
    for (what, req, code, kind) in cases {
        let st = c.lock(req).await.expect_err(what);
        assert_eq!(st.code(), code, "{what}: {st:?}");
        assert_eq!(kind_name(&st), Some(kind), "{what}");
    }
    let many = |resources: Vec<String>, mode: i32| pb::TryLockManyRequest { session_id: sid, resources, mode };
    let many_cases: Vec<(&str, pb::TryLockManyRequest, Code, &str)> = vec![
        ("no resources", many(vec![], Mode::EX.to_wire()), Code::InvalidArgument, "invalid"),
        ("over 1024 resources", many((0..1025).map(|i| format!("m{i}")).collect(), Mode::EX.to_wire()), Code::InvalidArgument, "invalid"),
        ("a name twice", many(vec!["m".into(), "m".into()], Mode::EX.to_wire()), Code::InvalidArgument, "invalid"),
        ("an empty name among good ones", many(vec!["m".into(), String::new()], Mode::EX.to_wire()), Code::InvalidArgument, "bad-resource"),
        ("mode out of range", many(vec!["m".into()], 17), Code::InvalidArgument, "invalid"),
        (
            "unknown session",
            pb::TryLockManyRequest { session_id: 9999, ..many(vec!["m".into()], Mode::EX.to_wire()) },
            Code::NotFound,
            "unknown-session",
        ),
    ];
    for (what, req, code, kind) in many_cases {
        let st = c.try_lock_many(req).await.expect_err(what);
        assert_eq!(st.code(), code, "{what}: {st:?}");
        assert_eq!(kind_name(&st), Some(kind), "{what}");
    }
    let rel = |resource: &str, fencing_token: u64, lvb: usize| pb::ManyRelease {
        resource: resource.into(),
        fencing_token,
        write_lvb: lvb > 0,
        lvb: vec![7; lvb],
    };
    let release_cases: Vec<(&str, Vec<pb::ManyRelease>, Code, &str)> = vec![
        ("no releases", vec![], Code::InvalidArgument, "invalid"),
        ("no token", vec![rel("m", 0, 0)], Code::InvalidArgument, "invalid"),
        ("a name twice", vec![rel("m", 1, 0), rel("m", 2, 0)], Code::InvalidArgument, "invalid"),
        ("LVB over 64 bytes", vec![rel("m", 1, 65)], Code::InvalidArgument, "lvb-too-large"),
        ("an empty name", vec![rel("", 1, 0)], Code::InvalidArgument, "bad-resource"),
    ];
    for (what, releases, code, kind) in release_cases {
        let st = c.release_many(pb::ReleaseManyRequest { session_id: sid, releases }).await.expect_err(what);
        assert_eq!(st.code(), code, "{what}: {st:?}");
        assert_eq!(kind_name(&st), Some(kind), "{what}");
    }
    let st = c.release(pb::ReleaseRequest { session_id: sid, resource: "never-held".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    let st = c.heartbeat(pb::HeartbeatRequest { session_id: 424242 }).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    let st = c.events(pb::EventsRequest { session_id: 424242 }).await.err().unwrap();
    assert_eq!(st.code(), Code::NotFound);
    let st = c.change_membership(pb::MembershipRequest { op: 0, id: 5, addr: "not an address".into() }).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st =
        c.open_session(pb::OpenSessionRequest { node_name: String::new(), lease_ms: 5000, hold_locks_on_expiry: false }).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    // Still serving, and the failed requests left nothing behind.
    let ok = c.lock(lock(sid, "r", Mode::EX.to_wire())).await.unwrap().into_inner();
    assert_eq!(ok.status, pb::LockStatus::Granted as i32);
    let s = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((s.resources, s.granted_locks, s.waiting_locks), (1, 1, 0));
}

/// A session named "crashes" with a 1 s lease whose locks stay held for recovery when it
/// lapses (dropping it is the crash: heartbeats stop, no goodbye).
async fn node_that_will_crash(eps: &[String]) -> Session {
    let mut o = opts("crashes");
    o.lease = Duration::from_millis(1000);
    o.hold_locks_on_expiry = true;
    Session::open(eps, o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_locks_stay_held_until_recovery_completes() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let a = node_that_will_crash(&eps).await;
    let aid = a.id();
    drop(a.lock("inode/1", Mode::EX, LockOptions::default()).await.unwrap());
    drop(a); // a crash: heartbeats stop, no goodbye
    let b = Session::open(&eps, opts("survivor")).await.unwrap();
    let e = b.lock("inode/1", Mode::PR, LockOptions::wait(Duration::from_secs(3))).await.err();
    assert!(matches!(e, Some(Error::TimedOut { .. })), "granted while the dead node's lock was recovering: {e:?}");
    let mut c = LockdClient::connect(format!("http://{}", eps[0])).await.unwrap();
    let d = c.dump(pb::DumpRequest { prefix: String::new() }).await.unwrap().into_inner();
    let sess = d.sessions.iter().find(|s| s.session_id == aid).expect("recovering session listed");
    assert_eq!(sess.state, "recovering");
    let r = c.complete_recovery(pb::CompleteRecoveryRequest { session_id: aid }).await.unwrap().into_inner();
    assert_eq!(r.released, 1);
    b.lock("inode/1", Mode::PR, LockOptions::wait(Duration::from_secs(3))).await.unwrap();
}

/// A session opened while lockd was still coming up counts its lease from the attempt lockd
/// answered, not from its first try: its holder does not see the lease run out (and a node
/// does not fence itself) just after it got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_after_retries_counts_its_lease_from_the_answered_try() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut o = opts("patient");
    o.retry_for = Duration::from_secs(30);
    let lease = o.lease;
    let eps = vec![addr.clone()];
    let opening = tokio::spawn(async move { Session::open(&eps, o).await });
    // Nobody answers for longer than the lease.
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    cluster_at(vec![addr], dir.path()).await;
    let s = opening.await.unwrap().expect("the session opens once lockd is up");
    let left = s.lease_watch().deadline().expect("a live session").saturating_duration_since(Instant::now());
    assert!(left > lease / 2, "only {left:?} of a {lease:?} lease left right after the session opened");
}

/// A survivor hears at once that a peer's lease lapsed with its locks kept (no polling): the
/// notice comes on its event stream within a moment of the expiry, and the dump then shows the
/// peer recovering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_told_when_a_peer_lapses_into_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let a = node_that_will_crash(&eps).await;
    let aid = a.id();
    drop(a.lock("slot/0", Mode::EX, LockOptions::default()).await.unwrap());
    let b = Session::open(&eps, opts("survivor")).await.unwrap();
    let mut notices = b.peer_recoveries();
    assert_eq!(*notices.borrow_and_update(), 0);
    drop(a); // a crash: heartbeats stop, no goodbye
    tokio::time::timeout(Duration::from_secs(10), notices.changed()).await.expect("no notice within 10 s").unwrap();
    let held = b.recovering_holders("slot/").await.unwrap();
    assert_eq!(held.iter().map(|h| (h.session_id, h.node_name.as_str())).collect::<Vec<_>>(), vec![(aid, "crashes")]);
}

/// Many sessions cycling lock + (asynchronous) release on a few resources: every cycle ends
/// with a grant, nothing stays held once each session has confirmed its releases, and no two
/// sessions ever held one resource at once (their grant-to-release windows do not overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_cycles_with_asynchronous_releases_all_complete_and_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(3, dir.path()).await;
    const SESSIONS: usize = 24;
    const ROUNDS: usize = 30;
    let windows = Arc::new(Mutex::new(Vec::<(usize, Instant, Instant)>::new()));
    let mut workers = Vec::new();
    for w in 0..SESSIONS {
        let eps = eps.clone();
        let windows = windows.clone();
        workers.push(tokio::spawn(async move {
            let s = Session::open(&eps, opts(&format!("w{w}"))).await.unwrap();
            for round in 0..ROUNDS {
                // Three rounds in a row on one resource: a lock that follows its own release.
                let r = (w + round / 3) % 4;
                let g = s
                    .lock(&format!("c/{r}"), Mode::EX, LockOptions::wait(Duration::from_secs(20)))
                    .await
                    .unwrap_or_else(|e| panic!("w{w} round {round}: {e}"));
                let start = Instant::now();
                // Before the drop: from then on a revocation may hand the lock on.
                let end = Instant::now();
                drop(g);
                s.release(&format!("c/{r}"), None).await.unwrap();
                windows.lock().push((r, start, end));
            }
            s.released().await.unwrap();
            s
        }));
    }
    let mut sessions = Vec::new();
    for w in workers {
        sessions.push(w.await.unwrap());
    }
    let probe = Session::open(&eps, opts("probe")).await.unwrap();
    for r in 0..4 {
        probe
            .lock(&format!("c/{r}"), Mode::EX, LockOptions::try_now())
            .await
            .unwrap_or_else(|e| panic!("c/{r} still held after every release was confirmed: {e}"));
    }
    let mut w = windows.lock().clone();
    assert_eq!(w.len(), SESSIONS * ROUNDS);
    w.sort_by_key(|x| (x.0, x.1));
    for pair in w.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(pair[1].1 >= pair[0].2, "two holders of c/{} at once", pair[0].0);
        }
    }
}

/// `release` does not wait for lockd; a lock of the same resource right after it is applied
/// after the release (it carries it), so it gets a new grant that sees the released LVB, and
/// the resource is free once `released` says every release committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relock_right_after_an_asynchronous_release_is_granted_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(3, dir.path()).await;
    let a = Session::open(&eps, opts("a")).await.unwrap();
    let other = Session::open(&eps, opts("other")).await.unwrap();
    // An NL holder keeps the resource, and its lock value block, in existence.
    let _keeper = other.lock("ar", Mode::NL, LockOptions::default()).await.unwrap();
    let probe = Session::open(&eps, opts("probe")).await.unwrap();
    for round in 0..20u8 {
        let g = a.lock("ar", Mode::EX, LockOptions::default()).await.unwrap();
        let first = g.grant.token;
        drop(g);
        a.release("ar", Some(vec![round])).await.unwrap();
        let again =
            a.lock("ar", Mode::PR, LockOptions::wait(Duration::from_secs(10))).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(again.grant.token > first, "round {round}: the old grant came back");
        assert_eq!(again.grant.lvb, vec![round], "round {round}: the release's LVB was not written first");
        drop(again);
        a.release("ar", None).await.unwrap();
    }
    a.released().await.unwrap();
    let g = probe.lock("ar", Mode::EX, LockOptions::try_now()).await;
    assert!(g.is_ok(), "ar still held after every release was confirmed: {:?}", g.err());
}

/// A release lockd would refuse (an LVB over 64 bytes) fails at once, while the caller can
/// still act on it, and the lock stays held and cached instead of leaking unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lockd_would_refuse_fails_at_once_and_keeps_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(1, dir.path()).await;
    let a = Session::open(&eps, opts("a")).await.unwrap();
    let probe = Session::open(&eps, opts("probe")).await.unwrap();
    drop(a.lock("big", Mode::EX, LockOptions::default()).await.unwrap());
    let e = a.release("big", Some(vec![0; 65])).await;
    assert!(matches!(&e, Err(e) if e.is_refusal(ErrorKind::LvbTooLarge)), "{e:?}");
    assert_eq!(a.cached("big"), Some(Mode::EX));
    a.released().await.unwrap();
    let p = probe.lock("big", Mode::PR, LockOptions::try_now()).await;
    assert!(matches!(p, Err(Error::NotGranted { .. })), "{:?}", p.err());
    a.release("big", Some(vec![1; 64])).await.unwrap();
    a.released().await.unwrap();
    probe.lock("big", Mode::PR, LockOptions::try_now()).await.unwrap();
}

/// A follower that has not applied a session yet (it lags the leader that opened it) must not
/// call it unknown: the client would take that for a lost session. It sends the client to the
/// leader instead; the leader, which has applied everything it answered, is the one that says
/// `unknown-session` for an id nobody opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sends_a_session_it_has_not_applied_to_the_leader_instead_of_calling_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(3, dir.path()).await;
    let mut roles = Vec::new();
    for ep in &eps {
        let mut c = LockdClient::connect(format!("http://{ep}")).await.unwrap();
        let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
        roles.push((st.role, c));
    }
    let never_opened = 424_242;
    for (role, c) in &mut roles {
        let st = c.events(pb::EventsRequest { session_id: never_opened }).await.err().unwrap();
        if role == "leader" {
            assert_eq!(st.code(), Code::NotFound, "leader: {st:?}");
            assert_eq!(kind_name(&st), Some("unknown-session"));
        } else {
            assert_eq!(kind_name(&st), Some("not-leader"), "{role}: {st:?}");
        }
    }
    // A session that exists is served by every replica once applied there.
    let s = Session::open(&eps, opts("s")).await.unwrap();
    for (role, c) in &mut roles {
        let id = s.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.events(pb::EventsRequest { session_id: id }).await {
                Ok(_) => break,
                Err(st) => {
                    assert_eq!(kind_name(&st), Some("not-leader"), "{role}: {st:?}");
                    assert!(Instant::now() < deadline, "{role} never applied session {id}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

async fn one_replica(dir: &std::path::Path) -> Vec<String> {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cfg = ReplicaConfig::new(1, addr.clone(), dir.join("r1"));
    tokio::spawn(async move {
        if let Err(e) = lockd_server::server::serve(cfg).await {
            panic!("replica failed: {e}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let eps = vec![addr];
    loop {
        if let Ok(s) = Session::open(&eps, SessionOptions::new("probe")).await {
            drop(s);
            return eps;
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn settled(s: &Session, resource: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.revocation_queued(resource) {
        assert!(Instant::now() < deadline, "the revocation never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A blocking notice delivered late, after the session gave that grant up and took the
/// resource again, is not about the lock it holds now: no flush, no release. (The notice
/// is injected where the event stream would hand it over, to control when it arrives.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_notice_about_a_grant_given_up_does_not_revoke_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let eps = one_replica(dir.path()).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let mut o = SessionOptions::new("a");
    o.on_blocking = Some(Arc::new(move |n: &BlockingNotice| {
        seen.lock().push(n.clone());
        Revoke::Release { lvb: None }
    }));
    let a = Session::open(&eps, o).await.unwrap();
    let first = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap().grant.clone();
    a.release("r", None).await.unwrap();
    let second = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap().grant.clone();
    assert!(second.token > first.token);
    let notice = |token| BlockingNotice { resource: "r".into(), held: Mode::EX, requested: Mode::EX, token };

    a.inject_blocking_notice(notice(first.token));
    settled(&a, "r").await;
    assert!(calls.lock().is_empty(), "the handler ran for a grant given up");
    assert_eq!(a.cached("r"), Some(Mode::EX), "the current grant was revoked");

    // A notice about the grant it holds is acted on.
    a.inject_blocking_notice(notice(second.token));
    settled(&a, "r").await;
    assert_eq!(calls.lock().len(), 1);
    assert_eq!(a.cached("r"), None);
}

/// A revocation that finds its lock already released must leave the resource alone: a `lock`
/// may have started a new entry for it meanwhile. (Found by the contended-cycles test: the
/// stale revocation ended the new, still-acquiring entry, so the grant that came back was
/// recorded nowhere, the caller's `release` found nothing to release, and the lock stayed held
/// at lockd for good.) Each round races a revocation against the caller's own release and
/// relock; whatever wins, a held guard has its cache entry, and the resource ends up free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_lost_the_race_to_a_release_leaves_the_next_grant_cached() {
    let dir = tempfile::tempdir().unwrap();
    let eps = one_replica(dir.path()).await;
    let a = Session::open(&eps, SessionOptions::new("a")).await.unwrap();
    let probe = Session::open(&eps, SessionOptions::new("probe")).await.unwrap();
    for round in 0..300 {
        let g = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap();
        assert_eq!(a.cached("r"), Some(Mode::EX), "round {round}: a held grant is not in the cache");
        a.inject_blocking_notice(BlockingNotice { resource: "r".into(), held: Mode::EX, requested: Mode::EX, token: g.grant.token });
        drop(g);
        a.release("r", None).await.unwrap();
    }
    a.released().await.unwrap();
    let g = probe.lock("r", Mode::EX, LockOptions::wait(Duration::from_secs(5))).await;
    assert!(g.is_ok(), "r still held after every release was confirmed: {:?}", g.err());
}

/// Once a notice says another session waits for a lock this one must give up, new local
/// users queue behind the revocation instead of taking the cached lock: otherwise users that
/// overlap without pause keep the lock busy for ever and the waiter starves (seen in cluster
/// mode: FUSE requests of one node kept the volume lock for a whole 10 s queue wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_local_users_wait_behind_a_pending_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let eps = one_replica(dir.path()).await;
    let a = Arc::new(Session::open(&eps, SessionOptions::new("a")).await.unwrap());
    let first = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap();
    let token = first.grant.token;
    a.inject_blocking_notice(BlockingNotice { resource: "r".into(), held: Mode::EX, requested: Mode::EX, token });
    let again = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("r", Mode::EX, LockOptions::default()).await.map(|g| g.grant.token) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!again.is_finished(), "a new local user took the cached lock while its revocation was pending");
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), again).await.expect("the new user never got the lock").unwrap().unwrap();
    assert!(second > token, "the new user got the old grant back instead of a new one after the revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_many_takes_the_free_locks_in_one_log_entry_and_leaves_the_held_ones_alone() {
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster(3, dir.path()).await;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut oa = opts("holder");
    let seen = notices.clone();
    oa.on_blocking = Some(Arc::new(move |n: &BlockingNotice| {
        seen.lock().push(n.clone());
        Revoke::Keep
    }));
    let a = Session::open(&eps, oa).await.unwrap();
    let b = Session::open(&eps, opts("batcher")).await.unwrap();
    drop(a.lock("inode/5", Mode::PR, LockOptions::default()).await.unwrap());
    drop(b.lock("inode/9", Mode::PR, LockOptions::default()).await.unwrap());
    let mut names: Vec<String> = (0..300).map(|i| format!("inode/{}", 1000 + i)).collect();
    names.extend(["inode/5".to_string(), "inode/9".to_string()]);
    let mut c = LockdClient::connect(format!("http://{}", eps[0])).await.unwrap();
    let commit_index = |s: pb::StatusResponse| s.commit_index;
    let leader = |s: &pb::StatusResponse| s.leader_addr.clone();
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    let mut c = LockdClient::connect(format!("http://{}", leader(&st))).await.unwrap();
    let before = commit_index(c.status(pb::StatusRequest {}).await.unwrap().into_inner());
    let trips = b.round_trips();
    let taken = b.try_lock_many(&names, Mode::EX).await.unwrap();
    assert_eq!(b.round_trips(), trips + 1, "one request for all of them");
    let after = commit_index(c.status(pb::StatusRequest {}).await.unwrap().into_inner());
    assert_eq!(after - before, 1, "one log entry for all of them");
    assert!(taken[..300].iter().all(|&t| t), "every free lock is taken");
    // inode/5 is a's, inode/9 is b's own PR (a cached lock is left to `lock`): neither taken.
    assert_eq!(&taken[300..], &[false, false]);
    assert_eq!(b.cached("inode/5"), None);
    assert_eq!(b.cached("inode/9"), Some(Mode::PR));
    // The holder was not asked for its lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(notices.lock().is_empty(), "{:?}", notices.lock());
    // The taken ones are cached: using them costs no round trip, and they are EX at lockd.
    let trips = b.round_trips();
    for n in &names[..300] {
        assert_eq!(b.lock(n, Mode::EX, LockOptions::default()).await.unwrap().grant.mode, Mode::EX);
    }
    assert_eq!(b.round_trips(), trips);
    assert!(matches!(a.lock("inode/1000", Mode::PR, LockOptions::try_now()).await, Err(Error::NotGranted { .. })));
    // Asked again, nothing new is taken and nothing is lost.
    assert!(b.try_lock_many(&names[..300], Mode::EX).await.unwrap().iter().all(|&t| !t));
    assert_eq!(b.cached("inode/1000"), Some(Mode::EX));
    // Given up as a batch: one request, one log entry, each with the value block it names.
    let before = commit_index(c.status(pb::StatusRequest {}).await.unwrap().into_inner());
    let trips = b.round_trips();
    let flushed = Arc::new(Mutex::new(Vec::new()));
    let seen = flushed.clone();
    let given = b
        .give_up_idle(names[..300].to_vec(), move |claimed| {
            seen.lock().extend(claimed.iter().cloned());
            claimed.into_iter().map(|r| (r, Some(b"v2".to_vec()))).collect()
        })
        .await
        .unwrap();
    assert_eq!((given, flushed.lock().len()), (300, 300));
    b.released().await.unwrap();
    assert_eq!(b.round_trips(), trips + 1, "one request for all the releases");
    let after = commit_index(c.status(pb::StatusRequest {}).await.unwrap().into_inner());
    assert_eq!(after - before, 1, "one log entry for all the releases");
    assert_eq!(b.cached("inode/1000"), None);
    let g = a.lock("inode/1000", Mode::EX, LockOptions::try_now()).await.unwrap();
    assert_eq!(g.grant.lvb, b"", "the released lock went idle, and its value block with it");
    drop(g);
    a.close().await.unwrap();
    b.close().await.unwrap();
}
