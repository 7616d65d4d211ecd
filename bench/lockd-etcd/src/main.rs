//! lockd vs etcd, side by side on the same machine, each as three replicas on 127.0.0.1.
//! Prints markdown tables; `bench/lockd-vs-etcd.sh` starts the clusters and files the results.
//!
//! A "cycle" is acquire + release of an exclusive lock, each committed through the replicated
//! log: `Session::lock` + `Session::release` for lockd, `Lock` + `Unlock` (with a lease, as
//! `etcdctl lock` does) for etcd. lockd's release is asynchronous (like `dlm_unlock`): the
//! next lock of the same resource carries it into the same commit, and a run ends only when
//! every release has committed. The "lockd, release awaited" row waits for each release's
//! commit inside the cycle, as etcd's unlock does.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use lockd_client::{LockOptions, Session, SessionOptions};
use lockd_client::Mode;
use tokio::sync::{Barrier, Notify};

#[derive(Parser)]
struct Args {
    /// lockd endpoints, comma separated.
    #[arg(long, value_delimiter = ',')]
    lockd: Vec<String>,
    /// etcd client URLs, comma separated (skip etcd when absent).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Hand-off rounds.
    #[arg(long, default_value_t = 200)]
    handoffs: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Lockd,
    /// lockd with every release awaited before the next acquire.
    LockdAwaited,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Lockd => "lockd",
            System::LockdAwaited => "lockd, release awaited",
            System::Etcd => "etcd",
        }
    }
}


/// One client's connection to either system.
enum Locker {
    Lockd { session: Session, await_release: bool },
    Etcd { client: etcd_client::Client, lease: i64 },
}

/// What `acquire` hands back for `release`. The lockd guard stays alive until release, so the
/// lock is in use (not merely cached) for the whole critical section.
enum Held {
    Lockd(String, lockd_client::LockGuard),
    Etcd(Vec<u8>),
}

impl Locker {
    async fn connect(sys: System, args: &Args, name: &str) -> Result<Locker> {
        Ok(match sys {
            System::Lockd | System::LockdAwaited => {
                let mut o = SessionOptions::new(name);
                o.lease = Duration::from_secs(10);
                Locker::Lockd {
                    session: Session::open(&args.lockd, o).await?,
                    await_release: sys == System::LockdAwaited,
                }
            }
            System::Etcd => {
                let mut client = etcd_client::Client::connect(&args.etcd, None).await?;
                let lease = client.lease_grant(600, None).await?.id();
                Locker::Etcd { client, lease }
            }
        })
    }

    async fn acquire(&mut self, name: &str) -> Result<Held> {
        match self {
            Locker::Lockd { session: s, .. } => {
                let g = s.lock(name, Mode::EX, LockOptions::wait(Duration::from_secs(60))).await?;
                Ok(Held::Lockd(name.to_string(), g))
            }
            Locker::Etcd { client, lease } => {
                let r = client.lock(name, Some(etcd_client::LockOptions::new().with_lease(*lease))).await?;
                Ok(Held::Etcd(r.key().to_vec()))
            }
        }
    }

    async fn release(&mut self, h: Held) -> Result<()> {
        match (self, h) {
            (Locker::Lockd { session: s, await_release }, Held::Lockd(name, guard)) => {
                drop(guard);
                s.release(&name, None).await?;
                if *await_release {
                    s.released().await?;
                }
                Ok(())
            }
            (Locker::Etcd { client, .. }, Held::Etcd(key)) => {
                client.unlock(key).await?;
                Ok(())
            }
            _ => anyhow::bail!("mismatched lock handle"),
        }
    }

    /// Waits until every release has committed (etcd's unlock already waits for it).
    async fn settle(&self) -> Result<()> {
        if let Locker::Lockd { session, .. } = self {
            session.released().await?;
        }
        Ok(())
    }
}

struct Stats {
    cycles: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `clients` tasks cycle on `names` resources (client i uses name i % names) for `secs`.
async fn throughput(sys: System, args: Arc<Args>, clients: usize, names: usize, tag: &str) -> Result<Stats> {
    let start_line = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let args = args.clone();
        let start_line = start_line.clone();
        let name = format!("bench/{tag}/{}", i % names);
        tasks.push(tokio::spawn(async move {
            let mut l = Locker::connect(sys, &args, &format!("bench-{i}")).await?;
            start_line.wait().await;
            let end = Instant::now() + Duration::from_secs_f64(args.secs);
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let h = l.acquire(&name).await?;
                l.release(h).await?;
                lat.push(t.elapsed());
            }
            // lockd's releases are asynchronous: the run is over when the last one committed.
            l.settle().await?;
            anyhow::Ok(lat)
        }));
    }
    start_line.wait().await;
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort();
    Ok(Stats { cycles: all.len(), secs, p50: pct(&all, 0.5), p99: pct(&all, 0.99) })
}

/// A holds the lock, B waits for it; latency from A's release call to B's grant.
async fn handoff(sys: System, args: Arc<Args>) -> Result<(Duration, Duration)> {
    let name = "bench/handoff";
    let mut a = Locker::connect(sys, &args, "handoff-a").await?;
    let mut b = Locker::connect(sys, &args, "handoff-b").await?;
    let mut lat = Vec::new();
    for _ in 0..args.handoffs {
        let ha = a.acquire(name).await?;
        let released_at = Arc::new(parking_lot_free::Cell::default());
        let asked = Arc::new(Notify::new());
        let asked2 = asked.clone();
        let released2 = released_at.clone();
        let waiter = tokio::spawn(async move {
            asked2.notify_one();
            let h = b.acquire(name).await?;
            let granted = Instant::now();
            anyhow::Ok((b, h, granted, released2))
        });
        asked.notified().await;
        // Give B's request time to be queued behind A.
        tokio::time::sleep(Duration::from_millis(15)).await;
        released_at.set(Instant::now());
        a.release(ha).await?;
        let (b2, hb, granted, released) = waiter.await??;
        let r = released.get().context("release time")?;
        lat.push(granted.saturating_duration_since(r));
        b = b2;
        b.release(hb).await?;
    }
    lat.sort();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

/// A tiny set-once cell for the hand-off timestamp (std only).
mod parking_lot_free {
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    pub struct Cell(Mutex<Option<Instant>>);

    impl Cell {
        pub fn set(&self, t: Instant) {
            if let Ok(mut g) = self.0.lock() {
                *g = Some(t);
            }
        }
        pub fn get(&self) -> Option<Instant> {
            self.0.lock().ok().and_then(|g| *g)
        }
    }
}

/// Re-acquiring a lock the session already caches: no RPC at all.
async fn cached(args: &Args) -> Result<(u64, u64, Duration)> {
    let s = Session::open(&args.lockd, SessionOptions::new("bench-cached")).await?;
    drop(s.lock("bench/cached", Mode::EX, LockOptions::default()).await?);
    let before = s.round_trips();
    let n = 100_000u64;
    let t = Instant::now();
    for _ in 0..n {
        drop(s.lock("bench/cached", Mode::EX, LockOptions::default()).await?);
    }
    let per = t.elapsed() / n as u32;
    Ok((n, s.round_trips() - before, per))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let mut systems = vec![System::Lockd];
    if !args.etcd.is_empty() {
        systems.push(System::Etcd);
    }
    println!("| workload | clients | names | system | cycles/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---|---:|---:|---:|");
    let mut rows: Vec<(String, System, f64, Duration)> = Vec::new();
    let mut workloads: Vec<(String, usize, usize)> = args.clients.iter().map(|&c| ("uncontended".to_string(), c, c)).collect();
    workloads.push(("contended".into(), 64, 4));
    for (kind, clients, names) in &workloads {
        let mut systems = systems.clone();
        if *clients == 1 {
            systems.insert(1, System::LockdAwaited);
        }
        for &sys in &systems {
            let tag = format!("{kind}-{clients}-{}", sys.name());
            let s = throughput(sys, args.clone(), *clients, *names, &tag).await?;
            let rate = s.cycles as f64 / s.secs;
            println!("| {kind} | {clients} | {names} | {} | {rate:.0} | {} | {} |", sys.name(), ms(s.p50), ms(s.p99));
            rows.push((format!("{kind} {clients}/{names}"), sys, rate, s.p99));
        }
    }
    println!();
    if systems.contains(&System::Etcd) {
        println!("| workload | lockd / etcd throughput | lockd p99 / etcd p99 |");
        println!("|---|---:|---:|");
        for (w, sys, lr, lp) in &rows {
            let etcd = rows.iter().find(|r| &r.0 == w && r.1 == System::Etcd);
            if let (false, Some((_, _, er, ep))) = (*sys == System::Etcd, etcd) {
                let label = if *sys == System::Lockd { w.clone() } else { format!("{w} ({})", sys.name()) };
                println!("| {label} | {:.2}x | {:.2} |", lr / er, lp.as_secs_f64() / ep.as_secs_f64().max(1e-9));
            }
        }
        println!();
    }
    println!("| hand-off (release on A to grant on waiting B) | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    for &sys in &systems {
        let (p50, p99) = handoff(sys, args.clone()).await?;
        println!("| {} | {} | {} |", sys.name(), ms(p50), ms(p99));
    }
    println!();
    let (n, rtts, per) = cached(&args).await?;
    println!("Cached re-acquire (lockd client cache): {n} re-acquires of a held EX lock made {rtts} network round trips, {:.0} ns each.", per.as_nanos());
    Ok(())
}
