//! Asynchronous releases (the client library's `Session::release`) against real `mafs lockd`
//! replicas: a release is confirmed only once it has committed, `close` waits for it so its lock
//! value block lands, and releases in flight when the leader is killed with -9 are sent again
//! to the new leader: nothing stays held, and no two sessions ever hold one resource at once.
//! A TryLockMany whose answer never came (the request may commit later) is released the same
//! way: the session cannot be left holding locks it never heard it was granted.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_client::Mode;
use lockd_client::{LockOptions, Session, SessionOptions};
use mafs_tests::lockd_cluster::LockdCluster;

fn endpoints(c: &LockdCluster) -> Vec<String> {
    c.endpoints().split(',').map(str::to_string).collect()
}

fn opts(name: &str) -> SessionOptions {
    let mut o = SessionOptions::new(name);
    o.lease = Duration::from_secs(10);
    o.retry_for = Duration::from_secs(30);
    o
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

#[test]
fn a_release_is_confirmed_only_after_it_commits_and_close_waits_for_it() {
    let c = LockdCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(15));
    let eps = endpoints(&c);
    runtime().block_on(async {
        let keeper = Session::open(&eps, opts("keeper")).await.expect("session");
        // An NL holder keeps the resource, and its lock value block, in existence.
        let _nl = keeper.lock("lvb", Mode::NL, LockOptions::default()).await.expect("NL");
        let a = Session::open(&eps, opts("a")).await.expect("session");
        drop(a.lock("lvb", Mode::EX, LockOptions::default()).await.expect("EX"));

        // With both followers silent nothing can commit: the release is on its way, not done.
        let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        for &id in &followers {
            c.freeze(id, true);
        }
        a.release("lvb", Some(b"written".to_vec())).await.expect("release returns at once");
        let early = tokio::time::timeout(Duration::from_secs(1), a.released()).await;
        assert!(early.is_err(), "released() returned before the release could commit: {early:?}");
        let closing = tokio::spawn(async move { a.close().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!closing.is_finished(), "close did not wait for the unconfirmed release");
        for &id in &followers {
            c.freeze(id, false);
        }
        closing.await.expect("close task").expect("close");

        let b = Session::open(&eps, opts("b")).await.expect("session");
        let g = b.lock("lvb", Mode::PR, LockOptions::wait(Duration::from_secs(10))).await.expect("PR");
        assert_eq!(g.grant.lvb, b"written", "the release's lock value block was lost");
    });
}

#[test]
fn asynchronous_releases_survive_a_leader_crash() {
    const SESSIONS: usize = 4;
    let mut c = LockdCluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(15));
    let eps = endpoints(&c);
    let rt = runtime();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (resource, from grant, to release call) as each session saw it.
    let windows = Arc::new(Mutex::new(Vec::<(usize, Instant, Instant, usize, Option<lockd_client::FencingToken>)>::new()));
    let workers: Vec<_> = (0..SESSIONS)
        .map(|w| {
            let (eps, stop, windows) = (eps.clone(), stop.clone(), windows.clone());
            rt.spawn(async move {
                let s = Session::open(&eps, opts(&format!("w{w}"))).await.expect("session");
                let mut round = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Three rounds in a row on one resource: locks that follow their own release.
                    let r = (w + round / 3) % 2;
                    let name = format!("crash/{r}");
                    let g = s
                        .lock(&name, Mode::EX, LockOptions::wait(Duration::from_secs(30)))
                        .await
                        .unwrap_or_else(|e| panic!("w{w} round {round}: {e}"));
                    let start = Instant::now();
                    let token = g.grant.token;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    // Taken before the guard goes: from the drop on, a revocation may hand the
                    // lock on, and this thread may be preempted before reading the clock.
                    let end = Instant::now();
                    drop(g);
                    s.release(&name, None).await.unwrap_or_else(|e| panic!("w{w} round {round}: {e}"));
                    windows.lock().expect("windows").push((r, start, end, w, token));
                    round += 1;
                }
                s.released().await.expect("every release confirmed");
                s
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    let old = c.wait_leader(Duration::from_secs(10));
    let before_crash = windows.lock().expect("windows").len();
    c.kill(old);
    std::thread::sleep(Duration::from_millis(1500));
    c.spawn(old, false);
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    rt.block_on(async {
        let mut sessions = Vec::new();
        for w in workers {
            sessions.push(w.await.expect("worker"));
        }
        let probe = Session::open(&eps, opts("probe")).await.expect("session");
        for r in 0..2 {
            let g = probe.lock(&format!("crash/{r}"), Mode::EX, LockOptions::try_now()).await;
            assert!(g.is_ok(), "crash/{r} still held after every release was confirmed: {:?}", g.err());
        }
    });
    let mut w = windows.lock().expect("windows").clone();
    assert!(w.len() > before_crash, "no cycle completed after the leader crash");
    w.sort_by_key(|x| (x.0, x.1));
    for pair in w.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[1].1 >= pair[0].2,
                "two sessions held crash/{} at once: {:?}",
                pair[0].0,
                (pair[0].3, pair[0].4, pair[1].3, pair[1].4, pair[0].2 - pair[1].1)
            );
        }
    }
}

#[test]
fn a_try_lock_many_whose_answer_never_came_leaves_no_lock_held() {
    let c = LockdCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(15));
    let eps = endpoints(&c);
    let names: Vec<String> = (0..3).map(|i| format!("batch/{i}")).collect();
    runtime().block_on(async {
        let mut o = opts("a");
        o.retry_for = Duration::from_secs(2);
        // Alive throughout: an expired session would lose its locks anyway, proving nothing.
        o.lease = Duration::from_secs(60);
        let a = Session::open(&eps, o).await.expect("session");
        // With both followers silent the request is in the leader's log but cannot commit:
        // the call gives up without an answer, and the grants may still happen once they are
        // back.
        let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        for &id in &followers {
            c.freeze(id, true);
        }
        let r = a.try_lock_many(&names, Mode::EX).await;
        assert!(r.is_err(), "TryLockMany answered with no follower to commit it: {r:?}");
        for &id in &followers {
            c.freeze(id, false);
        }
        for n in &names {
            assert!(a.cached_grant(n).is_none(), "session a caches {n} after a TryLockMany that got no answer");
        }
        // Whatever committed, nothing stays held by a: another session takes every one.
        let b = Session::open(&eps, opts("b")).await.expect("session");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let taken = b.try_lock_many(&names, Mode::EX).await.expect("TryLockMany of b");
            if taken.iter().all(|&t| t) {
                break;
            }
            for (n, _) in names.iter().zip(&taken).filter(|(_, &t)| t) {
                b.release(n, None).await.expect("release");
            }
            b.released().await.expect("released");
            assert!(Instant::now() < deadline, "session a still holds some of {names:?} ({taken:?} taken by b)");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
