//! Journal unit tests: committed transactions replay, torn or corrupt ones do not, revoked
//! blocks are not replayed over their new contents, the journal wraps over many commits, and
//! a commit cut at any write is all or nothing.
use super::*;
use crate::device::CrashDevice;
use crate::format::header::{BlockType, HEADER_LEN};
use crate::format::le::*;
use crate::journal::read_slot;
use crate::mkfs::{mkfs, MkfsOptions};
use crate::volume::Volume;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

fn new_device(journal_blocks: u32) -> Arc<CrashDevice> {
    let dev = Arc::new(CrashDevice::new(16 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 1, journal_blocks: Some(journal_blocks), ..Default::default() }).expect("mkfs");
    dev
}

fn open(dev: &Arc<CrashDevice>) -> Volume {
    Volume::open(dev.clone(), 0, "journal-test", 4096).expect("open volume")
}

/// Mounts a copy of `img` (replaying its journal).
fn recover(img: Vec<u8>) -> (Arc<CrashDevice>, Volume) {
    let dev = Arc::new(CrashDevice::from_image(img));
    let vol = open(&dev);
    (dev, vol)
}

/// Blocks at the end of AG 0, which nothing else uses in these tests.
fn targets(vol: &Volume, n: u64) -> Vec<u64> {
    let l = vol.sb.layout;
    let end = l.ag_first_block(0) + l.ag_len(0) as u64;
    (1..=n).map(|i| end - i).rev().collect()
}

/// Writes `v` into each of `blocks` (as index-tree blocks) in one handle of the running
/// transaction.
fn stamp(vol: &Volume, blocks: &[u64], v: u64) {
    let h = vol.journal.begin().unwrap();
    for &b in blocks {
        let buf = vol.cache.create(BlockNo(b), BlockType::TreeNode, crate::cache::Cover::Volume);
        let mut d = h.write(&buf);
        put_u64(&mut d, HEADER_LEN, v);
        put_u64(&mut d, BLOCK_SIZE - 8, v ^ b);
    }
}

/// The value stamped in block `b` at home, if it holds a valid stamped block.
fn home_value(dev: &dyn BlockDevice, seed: u32, b: u64) -> Option<u64> {
    let mut d = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut d, BlockNo(b).byte_offset()).unwrap();
    header::verify(&d, BlockType::TreeNode, b, seed).ok()?;
    let v = u64_at(&d, HEADER_LEN);
    assert_eq!(u64_at(&d, BLOCK_SIZE - 8), v ^ b, "block {b} is a mix of two images");
    Some(v)
}

fn values(vol: &Volume, blocks: &[u64]) -> Vec<Option<u64>> {
    blocks.iter().map(|&b| home_value(&*vol.dev, vol.seed, b)).collect()
}

#[test]
fn committed_transactions_replay_and_sequences_continue() {
    let dev = new_device(256);
    let vol = open(&dev);
    let b = targets(&vol, 3);
    stamp(&vol, &b, 1);
    vol.commit().unwrap();
    stamp(&vol, &b[..1], 2);
    vol.commit().unwrap();
    // The last commit's home writes were never flushed: the cut drops them.
    let img = dev.crash_image(|_| false);
    {
        let d = CrashDevice::from_image(img.clone());
        let hdr = read_slot(&d, &vol.sb, 0).unwrap();
        let txns = replay::scan(&d, &vol.sb.layout, &hdr, vol.seed).unwrap();
        assert_eq!(txns.len(), 2);
        assert_eq!(txns[1].seq, txns[0].seq + 1);
        assert_eq!(txns[1].images.len(), 1);
    }
    let (dev2, vol2) = recover(img);
    assert_eq!(vol2.replayed.transactions, 2);
    assert_eq!(values(&vol2, &b), vec![Some(2), Some(1), Some(1)]);
    // The recovered volume journals on from where replay stopped, and that replays too.
    stamp(&vol2, &b[1..2], 3);
    vol2.commit().unwrap();
    stamp(&vol2, &b[2..], 4);
    vol2.commit().unwrap();
    let (_d3, vol3) = recover(dev2.crash_image(|_| false));
    assert_eq!(vol3.replayed.transactions, 2);
    assert_eq!(values(&vol3, &b), vec![Some(2), Some(3), Some(4)]);
    // A clean close leaves nothing to replay.
    vol3.close().unwrap();
    let (_d4, vol4) = recover(_d3.crash_image(|_| false));
    assert_eq!(vol4.replayed.transactions, 0);
    assert_eq!(values(&vol4, &b), vec![Some(2), Some(3), Some(4)]);
}

#[test]
fn a_torn_commit_is_not_replayed_and_the_error_is_latched() {
    let dev = new_device(256);
    let vol = open(&dev);
    let b = targets(&vol, 2);
    stamp(&vol, &b, 1);
    vol.commit().unwrap();
    stamp(&vol, &b, 2);
    // The body is written and flushed; the commit record's write fails (a torn commit).
    dev.fail_writes_after(1);
    assert!(vol.commit().is_err());
    assert!(matches!(vol.journal.begin(), Err(FsError::Stopped(_))), "the journal latches a failed commit");
    assert!(matches!(vol.commit(), Err(FsError::Stopped(_))));
    let (_d, v2) = recover(dev.crash_image(|_| true));
    assert_eq!(v2.replayed.transactions, 1);
    assert_eq!(values(&v2, &b), vec![Some(1), Some(1)]);
}

#[test]
fn a_transaction_with_a_damaged_block_is_not_replayed() {
    let dev = new_device(256);
    let vol = open(&dev);
    let b = targets(&vol, 2);
    stamp(&vol, &b, 1);
    vol.commit().unwrap(); // journal blocks 0..3: descriptor, 2 images, commit
    stamp(&vol, &b, 2);
    vol.commit().unwrap(); // journal blocks 4..7
    let (jstart, _) = vol.sb.layout.journal_range(0);
    // A damaged image, commit record or descriptor of the second transaction stops replay
    // before it; the first one (already home) is untouched. Damage to the first stops replay
    // at once.
    for (victim, replayed) in [(5, 1), (6, 1), (7, 1), (4, 1), (1, 0), (3, 0)] {
        let mut img = dev.crash_image(|_| false);
        img[(jstart + victim) as usize * BLOCK_SIZE + 100] ^= 0x40;
        let (_d, v2) = recover(img);
        assert_eq!(v2.replayed.transactions, replayed, "damaged journal block {victim}");
        assert_eq!(values(&v2, &b), vec![Some(1), Some(1)], "damaged journal block {victim}");
    }
    let (_d, v2) = recover(dev.crash_image(|_| false));
    assert_eq!(v2.replayed.transactions, 2);
    assert_eq!(values(&v2, &b), vec![Some(2), Some(2)]);
}

#[test]
fn revoked_blocks_are_not_replayed_over_their_new_contents() {
    let dev = new_device(256);
    let vol = open(&dev);
    let b = targets(&vol, 2);
    stamp(&vol, &b, 1);
    vol.commit().unwrap();
    // b[0] is freed (revoked) and then reused as file data, written in place.
    {
        let h = vol.journal.begin().unwrap();
        h.revoke(BlockNo(b[0]));
    }
    vol.commit().unwrap();
    let data = vec![0xd5u8; BLOCK_SIZE];
    dev.write_at(&data, BlockNo(b[0]).byte_offset()).unwrap();
    dev.flush().unwrap();
    let (d2, v2) = recover(dev.crash_image(|_| false));
    assert_eq!(v2.replayed.transactions, 2);
    assert_eq!(v2.replayed.blocks_revoked, 1);
    let mut got = vec![0u8; BLOCK_SIZE];
    d2.read_at(&mut got, BlockNo(b[0]).byte_offset()).unwrap();
    assert!(got == data, "a revoked block's old image was replayed over its new contents");
    assert_eq!(home_value(&*d2, v2.seed, b[1]), Some(1));

    // Revoked and then journaled again (reused as metadata): the newer image wins.
    stamp(&vol, &b[..1], 3);
    vol.commit().unwrap();
    let (_d3, v3) = recover(dev.crash_image(|_| false));
    assert_eq!(values(&v3, &b), vec![Some(3), Some(1)]);

    // Written and revoked in one transaction: no image is logged, the revoke is.
    stamp(&vol, &b[1..], 4);
    {
        let h = vol.journal.begin().unwrap();
        h.revoke(BlockNo(b[1]));
    }
    vol.commit().unwrap();
    dev.write_at(&data, BlockNo(b[1]).byte_offset()).unwrap();
    dev.flush().unwrap();
    let (d4, _v4) = recover(dev.crash_image(|_| false));
    d4.read_at(&mut got, BlockNo(b[1]).byte_offset()).unwrap();
    assert!(got == data);
}

#[test]
fn many_commits_wrap_the_journal_and_every_cut_recovers_the_last_commit() {
    let dev = new_device(256);
    let vol = open(&dev);
    let blocks = targets(&vol, 24);
    let mut model: HashMap<u64, u64> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(42);
    let first_tail = vol.journal.slot().tail_seq;
    let mut wraps = 0;
    let mut last_tail = first_tail;
    for k in 1..=400u64 {
        let n = rng.gen_range(1..=blocks.len());
        let start = rng.gen_range(0..=blocks.len() - n);
        let mut pick: Vec<u64> = blocks[start..start + n].to_vec();
        pick.retain(|_| rng.gen_bool(0.7));
        if pick.is_empty() {
            pick.push(blocks[start]);
        }
        stamp(&vol, &pick, k);
        for b in &pick {
            model.insert(*b, k);
        }
        vol.commit().unwrap();
        let tail = vol.journal.slot().tail_seq;
        if tail != last_tail {
            wraps += 1;
            last_tail = tail;
        }
        if k % 9 == 0 || k > 395 {
            let p: f64 = rng.gen_range(0.0..1.0);
            for img in [dev.crash_image(|_| false), dev.crash_image(|_| rng.gen_bool(p))] {
                let (_d, v2) = recover(img);
                for &b in &blocks {
                    assert_eq!(home_value(&*v2.dev, v2.seed, b), model.get(&b).copied(), "commit {k}, block {b}");
                }
            }
        }
    }
    assert!(wraps >= 10, "the journal wrapped only {wraps} times");
}

/// Commits a transaction whose journal position is `fillers` commits into the journal (so
/// some land across the wrap) and cuts the power at its `fail_at`-th write.
fn interrupted_commit(fillers: u64, fail_at: u64, rng: &mut StdRng) {
    let dev = new_device(256);
    let vol = open(&dev);
    let all = targets(&vol, 80);
    // Two runs and some scattered blocks, so home writes come in several pieces.
    let t: Vec<u64> = all[..20].iter().chain(all[30..45].iter()).chain(all[50..].iter().step_by(6)).copied().collect();
    let filler_blocks = &all[20..30];
    stamp(&vol, &t, 1);
    vol.commit().unwrap();
    for f in 0..fillers {
        stamp(&vol, filler_blocks, 100 + f);
        vol.commit().unwrap();
    }
    stamp(&vol, &t, 2);
    dev.fail_writes_after(fail_at);
    let ok = vol.commit().is_ok();
    let what = format!("{fillers} fillers, writes fail after {fail_at}");
    let p: f64 = rng.gen_range(0.1..0.9);
    let images = [
        dev.crash_image(|_| false),
        dev.crash_image(|_| true),
        dev.crash_image(|_| rng.gen_bool(p)),
        dev.crash_image(|_| rng.gen_bool(0.5)),
    ];
    for img in images {
        let (_d, v2) = recover(img);
        let got = values(&v2, &t);
        let all_old = got.iter().all(|v| *v == Some(1));
        let all_new = got.iter().all(|v| *v == Some(2));
        assert!(all_new || (!ok && all_old), "{what}: commit returned ok={ok}, recovered {got:?}");
        if fillers > 0 {
            let f = values(&v2, filler_blocks);
            assert!(f.iter().all(|v| *v == Some(100 + fillers - 1)), "{what}: committed filler transaction lost: {f:?}");
        }
    }
}

#[test]
fn a_commit_cut_at_any_write_is_all_or_nothing_even_across_the_wrap() {
    let mut rng = StdRng::seed_from_u64(7);
    for fillers in [0, 1, 5, 10, 15, 17, 19, 20] {
        for fail_at in 0..7 {
            interrupted_commit(fillers, fail_at, &mut rng);
        }
    }
}

#[test]
fn a_full_transaction_goes_to_the_background_committer_until_the_hard_limit() {
    let dev = new_device(256); // limit: 64 blocks, hard limit 128
    let vol = open(&dev);
    let blocks = targets(&vol, 130);
    // No committer: the operation that finds the transaction full commits it itself.
    stamp(&vol, &blocks[..64], 1);
    let seq = vol.journal.running_seq();
    drop(vol.begin().unwrap());
    assert_eq!(vol.journal.running_seq(), seq + 1, "committed inline");

    // With one registered, the operation only asks, and goes on in the same transaction.
    assert!(!vol.journal.wait_for_commit_request(Duration::ZERO), "nothing asked yet");
    stamp(&vol, &blocks[..64], 2);
    let seq = vol.journal.running_seq();
    drop(vol.begin().unwrap());
    assert_eq!(vol.journal.running_seq(), seq, "not committed by the operation");
    assert!(vol.journal.wait_for_commit_request(Duration::ZERO), "the committer was asked");
    // A committer that falls behind: at twice the limit the operation commits after all.
    stamp(&vol, &blocks[64..128], 3);
    drop(vol.begin().unwrap());
    assert_eq!(vol.journal.running_seq(), seq + 1, "committed inline past the hard limit");
    assert_eq!(values(&vol, &blocks[..2]), vec![Some(2), Some(2)]);

    // A stopped committer hands the job back.
    vol.journal.committer_stopped();
    stamp(&vol, &blocks[..64], 4);
    drop(vol.begin().unwrap());
    assert_eq!(vol.journal.running_seq(), seq + 2);
}

/// The count cluster mode's "no handle across a lockd call" assertion reads: one per handle
/// this thread holds, none once they are dropped, and none seen from another thread.
#[test]
fn handles_held_here_counts_this_threads_open_handles() {
    let dev = new_device(256);
    let vol = open(&dev);
    assert_eq!(handles_held_here(), 0);
    let h1 = vol.begin().expect("begin");
    let h2 = vol.begin().expect("begin");
    assert_eq!(handles_held_here(), 2);
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(handles_held_here(), 0, "another thread's handles counted here"));
    });
    drop(h1);
    assert_eq!(handles_held_here(), 1);
    drop(h2);
    assert_eq!(handles_held_here(), 0);
}

#[test]
fn retiring_with_nothing_committed_since_the_last_retire_writes_and_flushes_nothing() {
    let dev = new_device(256);
    let vol = open(&dev);
    let blocks = targets(&vol, 2);
    stamp(&vol, &blocks, 1);
    vol.sync().unwrap();
    vol.journal.retire_committed().unwrap();
    let before = dev.counters();
    assert!(vol.journal.is_idle());
    vol.journal.retire_committed().unwrap();
    assert_eq!(dev.counters(), before, "a second retire with nothing new wrote or flushed");
    // Something committed again: the next retire flushes and moves the tail.
    stamp(&vol, &blocks, 2);
    vol.sync().unwrap();
    let committed = dev.counters();
    vol.journal.retire_committed().unwrap();
    let (w, f) = dev.counters();
    assert!(w > committed.0 && f > committed.1, "a retire after a commit did not write the slot and flush");
}
