use super::*;
use lockd_common::MAX_RESOURCE_NAME;
use rand::{Rng, SeedableRng};
use Mode::*;

fn table_with(n: usize) -> (LockTable, Vec<SessionId>) {
    let mut t = LockTable::default();
    let ids = (0..n).map(|i| t.open_session(&format!("node{i}"), 5000, false).unwrap()).collect();
    (t, ids)
}

fn lock(t: &mut LockTable, s: SessionId, r: &str, m: Mode, fx: &mut Vec<Effect>) -> LockOutcome {
    t.lock(s, r, m, false, false, None, fx).unwrap()
}

fn granted(o: &LockOutcome) -> Grant {
    match o {
        LockOutcome::Granted(g) => g.clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn grants_in(fx: &[Effect]) -> Vec<(SessionId, Mode)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Granted { session, grant, .. } => Some((*session, grant.mode)),
            _ => None,
        })
        .collect()
}

#[test]
fn second_lock_is_granted_exactly_when_the_matrix_says_so() {
    for a in Mode::ALL {
        for b in Mode::ALL {
            let (mut t, s) = table_with(2);
            let mut fx = vec![];
            granted(&lock(&mut t, s[0], "r", a, &mut fx));
            let o = t.lock(s[1], "r", b, false, true, None, &mut fx).unwrap();
            let expect = a.compatible(b);
            assert_eq!(matches!(o, LockOutcome::Granted(_)), expect, "{a} then {b}");
            if !expect {
                assert_eq!(o, LockOutcome::NotGranted);
            }
        }
    }
}

#[test]
fn queue_is_fifo_and_a_compatible_latecomer_does_not_overtake() {
    let (mut t, s) = table_with(4);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", PR, &mut fx));
    assert_eq!(lock(&mut t, s[1], "r", EX, &mut fx), LockOutcome::Queued);
    // PR is compatible with the holder, but granting it would starve the EX waiter.
    assert_eq!(lock(&mut t, s[2], "r", PR, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, s[3], "r", PR, &mut fx), LockOutcome::Queued);
    fx.clear();
    t.release(s[0], "r", None, None, &mut fx).unwrap();
    assert_eq!(grants_in(&fx), vec![(s[1], EX)]);
    fx.clear();
    t.release(s[1], "r", None, None, &mut fx).unwrap();
    // Both PR waiters are granted together.
    assert_eq!(grants_in(&fx), vec![(s[2], PR), (s[3], PR)]);
}

#[test]
fn tokens_increase_on_every_grant_including_conversions() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    let g1 = granted(&lock(&mut t, s[0], "a", PR, &mut fx));
    let g2 = granted(&lock(&mut t, s[1], "b", EX, &mut fx));
    let g3 = granted(&t.lock(s[0], "a", EX, true, false, None, &mut fx).unwrap());
    let g4 = granted(&t.lock(s[0], "a", NL, true, false, None, &mut fx).unwrap());
    assert!(g1.token < g2.token && g2.token < g3.token && g3.token < g4.token);
    assert_eq!(t.next_token(), g4.token.get() + 1);
}

#[test]
fn up_conversion_waits_for_other_holders_and_goes_before_new_waiters() {
    let (mut t, s) = table_with(3);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", PR, &mut fx));
    granted(&lock(&mut t, s[1], "r", PR, &mut fx));
    assert_eq!(lock(&mut t, s[2], "r", EX, &mut fx), LockOutcome::Queued);
    fx.clear();
    assert_eq!(t.lock(s[0], "r", EX, true, false, None, &mut fx).unwrap(), LockOutcome::Queued);
    // s1 blocks the conversion and must hear about it.
    assert!(fx.iter().any(|e| matches!(e, Effect::Blocking { session, resource, held: PR, requested: EX, .. }
        if *session == s[1] && resource == "r")));
    fx.clear();
    t.release(s[1], "r", None, None, &mut fx).unwrap();
    assert_eq!(grants_in(&fx), vec![(s[0], EX)]);
    // The granted conversion now blocks s2's request: s0 is told.
    assert!(fx.iter().any(|e| matches!(e, Effect::Blocking { session, resource, held: EX, requested: EX, .. }
        if *session == s[0] && resource == "r")));
}

#[test]
fn down_conversion_is_immediate_and_lets_waiters_in() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(lock(&mut t, s[1], "r", PR, &mut fx), LockOutcome::Queued);
    assert!(fx.iter().any(|e| matches!(e, Effect::Blocking { session, resource, held: EX, requested: PR, .. }
        if *session == s[0] && resource == "r")));
    fx.clear();
    let g = granted(&t.lock(s[0], "r", PR, true, false, Some(b"v1"), &mut fx).unwrap());
    assert_eq!(g.mode, PR);
    assert_eq!(grants_in(&fx), vec![(s[1], PR)]);
    match &fx[0] {
        Effect::Granted { grant, .. } => assert_eq!(grant.lvb, b"v1"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn conversion_deadlock_is_refused() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", PR, &mut fx));
    granted(&lock(&mut t, s[1], "r", PR, &mut fx));
    assert_eq!(t.lock(s[0], "r", EX, true, false, None, &mut fx).unwrap(), LockOutcome::Queued);
    let e = t.lock(s[1], "r", EX, true, false, None, &mut fx).unwrap_err();
    assert!(matches!(e, LockError::Deadlock { .. }));
    // s1 gives up its PR; s0's conversion goes through.
    fx.clear();
    t.release(s[1], "r", None, None, &mut fx).unwrap();
    assert_eq!(grants_in(&fx), vec![(s[0], EX)]);
}

#[test]
fn lvb_is_written_only_by_pw_or_ex_and_read_on_grant() {
    let (mut t, s) = table_with(3);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    granted(&lock(&mut t, s[2], "r", NL, &mut fx)); // keeps the resource (and its LVB) alive
    t.release(s[0], "r", Some(b"hello"), None, &mut fx).unwrap();
    let g = granted(&lock(&mut t, s[1], "r", PR, &mut fx));
    assert_eq!(g.lvb, b"hello");
    t.release(s[1], "r", Some(b"ignored"), None, &mut fx).unwrap();
    let g = granted(&lock(&mut t, s[0], "r", CR, &mut fx));
    assert_eq!(g.lvb, b"hello");
    assert_eq!(t.lock(s[0], "x", EX, false, false, Some(&[0u8; 65]), &mut fx), Err(LockError::Input(InputError::LvbTooLarge(65))));
}

#[test]
fn a_writer_that_dies_or_leaves_without_a_release_resets_the_lvb_and_a_reader_does_not() {
    for (leaves_by, mode, kept) in [("expiry", EX, false), ("close", PW, false), ("close", PR, true), ("expiry", CR, true)] {
        let mut t = LockTable::default();
        let holder = t.open_session("holder", 5000, true).unwrap();
        let (keeper, other) = (t.open_session("keeper", 5000, false).unwrap(), t.open_session("other", 5000, false).unwrap());
        let mut fx = vec![];
        granted(&lock(&mut t, keeper, "r", NL, &mut fx)); // keeps the resource (and its LVB) alive
        granted(&lock(&mut t, other, "r", EX, &mut fx));
        t.release(other, "r", Some(b"v1"), None, &mut fx).unwrap();
        granted(&lock(&mut t, holder, "r", mode, &mut fx));
        match leaves_by {
            "expiry" => {
                t.expire_session(holder, &mut fx).unwrap();
                t.complete_recovery(holder, &mut fx).unwrap();
            }
            _ => {
                t.close_session(holder, &mut fx).unwrap();
            }
        }
        let g = granted(&lock(&mut t, other, "r", PR, &mut fx));
        let want: &[u8] = if kept { b"v1" } else { b"" };
        assert_eq!(g.lvb, want, "{mode} holder gone by {leaves_by}");
    }
}

#[test]
fn retrying_a_request_is_idempotent() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    let g = granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(granted(&lock(&mut t, s[0], "r", EX, &mut fx)), g);
    assert_eq!(lock(&mut t, s[1], "r", PR, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, s[1], "r", PR, &mut fx), LockOutcome::Queued);
    assert!(matches!(t.lock(s[1], "r", EX, false, false, None, &mut fx), Err(LockError::AlreadyQueued { .. })));
    assert!(matches!(t.lock(s[0], "r", PR, false, false, None, &mut fx), Err(LockError::AlreadyHeld { .. })));
    assert_eq!(t.counts().waiting, 1);
}

#[test]
fn cancel_withdraws_or_reports_the_grant() {
    let (mut t, s) = table_with(3);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(lock(&mut t, s[1], "r", EX, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, s[2], "r", PR, &mut fx), LockOutcome::Queued);
    assert_eq!(t.cancel(s[1], "r", None, &mut fx).unwrap(), CancelOutcome::Cancelled);
    fx.clear();
    t.release(s[0], "r", None, None, &mut fx).unwrap();
    assert_eq!(grants_in(&fx), vec![(s[2], PR)]);
    assert!(matches!(t.cancel(s[2], "r", None, &mut fx).unwrap(), CancelOutcome::Granted(g) if g.mode == PR));
    assert!(matches!(t.cancel(s[1], "r", None, &mut fx), Err(LockError::NothingToCancel { .. })));
}

#[test]
fn a_cancel_for_an_abandoned_call_leaves_the_retry_that_took_its_request_over() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    // Call 1 queues; the client gives up on it and retries as call 2 before call 1's cancel
    // (sent by the server when call 1 went away) is applied.
    let queued = |t: &mut LockTable, id, fx: &mut Vec<Effect>| {
        let o = lock(t, s[1], "r", EX, fx);
        t.own_request(RequestId::new(id), s[1], "r");
        o
    };
    assert_eq!(queued(&mut t, 1, &mut fx), LockOutcome::Queued);
    assert_eq!(queued(&mut t, 2, &mut fx), LockOutcome::Queued);
    assert!(matches!(t.cancel(s[1], "r", RequestId::new(1), &mut fx), Err(LockError::NothingToCancel { .. })));
    fx.clear();
    t.release(s[0], "r", None, None, &mut fx).unwrap();
    assert_eq!(grants_in(&fx), vec![(s[1], EX)], "the retry is still queued and gets the lock");

    // The call that owns the request can cancel it; so can a cancel naming no call.
    t.release(s[1], "r", None, None, &mut fx).unwrap();
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(queued(&mut t, 3, &mut fx), LockOutcome::Queued);
    assert_eq!(t.cancel(s[1], "r", RequestId::new(3), &mut fx).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(queued(&mut t, 4, &mut fx), LockOutcome::Queued);
    assert_eq!(t.cancel(s[1], "r", None, &mut fx).unwrap(), CancelOutcome::Cancelled);
}

#[test]
fn expiry_releases_locks_and_wakes_waiters() {
    let (mut t, s) = table_with(2);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(lock(&mut t, s[1], "r", EX, &mut fx), LockOutcome::Queued);
    fx.clear();
    t.expire_session(s[0], &mut fx).unwrap();
    assert_eq!(fx[0], Effect::Expired { session: s[0] });
    assert_eq!(grants_in(&fx), vec![(s[1], EX)]);
    assert_eq!(t.release(s[0], "r", None, None, &mut fx), Err(LockError::UnknownSession(s[0])));
}

#[test]
fn recovering_session_keeps_granted_locks_until_recovery_completes() {
    let mut t = LockTable::default();
    let mut fx = vec![];
    let a = t.open_session("a", 5000, true).unwrap();
    let b = t.open_session("b", 5000, false).unwrap();
    granted(&lock(&mut t, a, "inode/1", EX, &mut fx));
    assert_eq!(
        lock(&mut t, a, "inode/2", EX, &mut fx),
        LockOutcome::Granted(Grant { mode: EX, token: FencingToken::following(1), lvb: vec![] })
    );
    granted(&lock(&mut t, b, "inode/3", EX, &mut fx));
    assert_eq!(lock(&mut t, a, "inode/3", PR, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, b, "inode/1", PR, &mut fx), LockOutcome::Queued);
    fx.clear();
    t.expire_session(a, &mut fx).unwrap();
    assert!(grants_in(&fx).is_empty(), "nothing may be granted while a's locks are recovering");
    assert_eq!(t.counts().waiting, 1, "a's own pending request is withdrawn");
    assert_eq!(t.check_session(a), Err(LockError::SessionRecovering(a)));
    assert!(matches!(t.lock(a, "x", EX, false, false, None, &mut fx), Err(LockError::SessionRecovering(_))));
    fx.clear();
    assert_eq!(t.complete_recovery(a, &mut fx).unwrap(), 2);
    assert_eq!(grants_in(&fx), vec![(b, PR)]);
    assert_eq!(t.complete_recovery(b, &mut fx), Err(LockError::NotRecovering(b)));
}

#[test]
fn every_live_session_hears_that_a_peer_awaits_recovery_and_nobody_else_does() {
    let mut t = LockTable::default();
    let mut fx = vec![];
    let dead = t.open_session("node1", 5000, true).unwrap();
    let live = t.open_session("node2", 5000, true).unwrap();
    let other = t.open_session("tool", 5000, false).unwrap();
    let recovering = t.open_session("node3", 5000, true).unwrap();
    t.expire_session(recovering, &mut fx).unwrap();
    fx.clear();
    t.expire_session(dead, &mut fx).unwrap();
    let told: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::PeerRecovering { session, dead, node } => Some((*session, *dead, node.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(live, dead, "node1"), (other, dead, "node1")], "the live sessions, not the dead or the recovering");
    // A session expired without keeping its locks needs no recovery: nobody is told.
    fx.clear();
    t.expire_session(other, &mut fx).unwrap();
    assert!(!fx.iter().any(|e| matches!(e, Effect::PeerRecovering { .. })), "{fx:?}");
}

#[test]
fn a_recovering_session_gives_up_its_reading_grants_at_once_and_keeps_the_changing_ones() {
    let mut t = LockTable::default();
    let mut fx = vec![];
    let a = t.open_session("a", 5000, true).unwrap();
    let b = t.open_session("b", 5000, false).unwrap();
    granted(&lock(&mut t, a, "volume", PR, &mut fx));
    granted(&lock(&mut t, a, "open/7", CR, &mut fx));
    granted(&lock(&mut t, a, "slot/0", EX, &mut fx));
    granted(&lock(&mut t, a, "inode/9", PW, &mut fx));
    assert_eq!(lock(&mut t, b, "volume", EX, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, b, "slot/0", EX, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, b, "inode/9", PR, &mut fx), LockOutcome::Queued);
    fx.clear();
    assert_eq!(t.expire_session(a, &mut fx).unwrap(), 2, "PR and CR released at expiry");
    assert_eq!(grants_in(&fx), vec![(b, EX)], "the volume goes to b without waiting for the recovery");
    assert!(matches!(lock(&mut t, b, "open/7", EX, &mut fx), LockOutcome::Granted(_)));
    fx.clear();
    assert_eq!(t.complete_recovery(a, &mut fx).unwrap(), 2, "EX and PW held until the recovery completes");
    let g = grants_in(&fx);
    assert!(g.len() == 2 && g.contains(&(b, PR)) && g.contains(&(b, EX)), "{g:?}");
}

#[test]
fn bad_input_is_refused() {
    let (mut t, s) = table_with(1);
    let mut fx = vec![];
    let long = "x".repeat(MAX_RESOURCE_NAME + 1);
    assert!(matches!(t.lock(s[0], &long, EX, false, false, None, &mut fx), Err(LockError::Input(InputError::BadResource(_)))));
    assert!(matches!(t.lock(s[0], "", EX, false, false, None, &mut fx), Err(LockError::Input(InputError::BadResource(_)))));
    assert!(t.lock(s[0], &"x".repeat(MAX_RESOURCE_NAME), EX, false, false, None, &mut fx).is_ok());
    assert_eq!(t.lock(99, "r", EX, false, false, None, &mut fx), Err(LockError::UnknownSession(99)));
    assert!(matches!(t.release(s[0], "r", None, None, &mut fx), Err(LockError::NotHeld { .. })));
    assert!(matches!(t.lock(s[0], "r", EX, true, false, None, &mut fx), Err(LockError::NotHeld { .. })));
    assert!(t.open_session("", 1000, false).is_err());
    assert!(!t.resources.contains_key("r"), "failed requests leave no empty resource behind");
}

/// Random operations against the invariants that matter: holders are pairwise compatible, every
/// token is handed out once, the queue never has a grantable head, and the state survives a
/// serde round trip (that is what a snapshot is).
#[test]
fn random_operations_keep_invariants() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut t, s) = table_with(6);
    let names = ["a", "b", "c"];
    let mut seen_tokens = BTreeSet::new();
    let mut last_token = 0;
    for step in 0..20_000 {
        let sess = s[rng.gen_range(0..s.len())];
        let name = names[rng.gen_range(0..names.len())];
        let mode = Mode::ALL[rng.gen_range(0..6)];
        let mut fx = vec![];
        let outcome = match rng.gen_range(0..5) {
            0 | 1 => t.lock(sess, name, mode, false, rng.gen_bool(0.2), None, &mut fx).map(Some),
            2 => t.lock(sess, name, mode, true, false, None, &mut fx).map(Some),
            3 => t.release(sess, name, None, None, &mut fx).map(|_| None),
            _ => t.cancel(sess, name, None, &mut fx).map(|_| None),
        };
        let mut new_tokens: Vec<u64> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Granted { grant, .. } => Some(grant.token.get()),
                _ => None,
            })
            .collect();
        if let Ok(Some(LockOutcome::Granted(g))) = &outcome {
            if g.token.get() > last_token {
                new_tokens.push(g.token.get());
            }
        }
        for tok in new_tokens {
            assert!(seen_tokens.insert(tok), "token {tok} granted twice at step {step}");
            last_token = last_token.max(tok);
        }
        for (rname, r) in &t.resources {
            for (i, a) in r.granted.iter().enumerate() {
                for b in &r.granted[i + 1..] {
                    assert!(a.mode.compatible(b.mode), "step {step}: {rname} has {a:?} and {b:?}");
                    assert_ne!(a.session, b.session);
                }
            }
            if let Some(head) = r.converting.front() {
                assert!(!r.compatible_with_holders(head.mode, Some(head.session)), "step {step}: stuck conversion");
            } else if let Some(head) = r.waiting.front() {
                assert!(!r.compatible_with_holders(head.mode, None), "step {step}: stuck waiter");
            }
            assert!(!r.is_idle());
        }
    }
    let json = serde_json::to_string(&t).unwrap();
    let back: LockTable = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

/// A holder that downgrades (for a reader queued behind a writer) and converts back up is
/// granted at once, ahead of the queue — and must then be told that it blocks the writer, or
/// it keeps the lock cached and the writer waits until its timeout (seen in cluster mode as a
/// 10 s stall of one node among three).
#[test]
fn an_up_conversion_granted_ahead_of_waiters_is_told_it_blocks_them() {
    let (mut t, s) = table_with(3);
    let mut fx = vec![];
    granted(&lock(&mut t, s[0], "r", EX, &mut fx));
    assert_eq!(lock(&mut t, s[2], "r", EX, &mut fx), LockOutcome::Queued);
    assert_eq!(lock(&mut t, s[1], "r", PR, &mut fx), LockOutcome::Queued);
    granted(&t.lock(s[0], "r", PR, true, false, None, &mut fx).unwrap());
    fx.clear();
    granted(&t.lock(s[0], "r", EX, true, false, None, &mut fx).unwrap());
    let told = fx.iter().any(|e| matches!(e, Effect::Blocking { session, requested: EX, .. } if *session == s[0]));
    assert!(told, "the converter was not told it blocks the EX waiter: {fx:?}");
}
