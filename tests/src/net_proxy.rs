//! Network faults between real processes on 127.0.0.1: one TCP proxy per directed link, each of
//! which can pass traffic, drop it (connections closed, new ones refused) or blackhole it
//! (connections stay open and silent, as behind a dead switch). A link is cut or healed while
//! the processes run; traffic on one link never depends on another's state.
use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    /// Open connections are closed and new ones are closed at once: the peer sees resets.
    Drop,
    /// Open connections stay up but carry nothing either way, new ones are accepted and
    /// ignored: the peer sees silence until its own timeouts fire.
    Blackhole,
}

/// One proxy: everything sent to `addr` goes to `target` while the mode is `Pass`.
pub struct LinkProxy {
    pub addr: String,
    mode: watch::Sender<LinkMode>,
}

impl LinkProxy {
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

/// A set of link proxies, keyed by (from, to), on a runtime of their own.
pub struct Net {
    rt: tokio::runtime::Runtime,
    links: HashMap<(u64, u64), Arc<LinkProxy>>,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Net {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("net-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        Net { rt, links: HashMap::new() }
    }

    /// Adds the link `from` -> `to` towards `target`; returns the address to send to.
    pub fn link(&mut self, from: u64, to: u64, target: &str) -> String {
        let listener = self.rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind a proxy port");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let (tx, rx) = watch::channel(LinkMode::Pass);
        let proxy = Arc::new(LinkProxy { addr: addr.clone(), mode: tx });
        self.rt.spawn(serve(listener, target.to_string(), rx));
        self.links.insert((from, to), proxy);
        addr
    }

    pub fn get(&self, from: u64, to: u64) -> &LinkProxy {
        self.links.get(&(from, to)).unwrap_or_else(|| panic!("no link {from} -> {to}"))
    }

    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        self.get(from, to).set(mode);
    }

    /// Every link back to `Pass`.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.set(LinkMode::Pass);
        }
    }
}

async fn serve(listener: TcpListener, target: String, mode: watch::Receiver<LinkMode>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        let _ = inbound.set_nodelay(true);
        let mode = mode.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let now = *mode.borrow();
            match now {
                LinkMode::Drop => drop(inbound),
                LinkMode::Blackhole => silent(inbound, None, mode).await,
                LinkMode::Pass => match TcpStream::connect(&target).await {
                    Ok(outbound) => {
                        let _ = outbound.set_nodelay(true);
                        pump(inbound, outbound, mode).await;
                    }
                    Err(_) => drop(inbound),
                },
            }
        });
    }
}

/// Copies both ways until either side closes or the mode changes: to `Drop` the connection
/// is closed, to `Blackhole` it goes silent. A byte stream cut in the middle cannot carry on
/// when the link comes back, so every later change closes it.
async fn pump(mut a: TcpStream, mut b: TcpStream, mut mode: watch::Receiver<LinkMode>) {
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        tokio::select! {
            r = a.read(&mut buf_a) => match r {
                Ok(n) if n > 0 && b.write_all(&buf_a[..n]).await.is_ok() => {}
                _ => return,
            },
            r = b.read(&mut buf_b) => match r {
                Ok(n) if n > 0 && a.write_all(&buf_b[..n]).await.is_ok() => {}
                _ => return,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                match *mode.borrow_and_update() {
                    LinkMode::Pass => {}
                    LinkMode::Drop => return,
                    LinkMode::Blackhole => break,
                }
            }
        }
    }
    silent(a, Some(b), mode).await;
}

/// Holds the connection(s) open, reading and discarding, until the mode changes again.
async fn silent(mut a: TcpStream, b: Option<TcpStream>, mut mode: watch::Receiver<LinkMode>) {
    let mut b = b;
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        tokio::select! {
            r = a.read(&mut buf_a) => if !matches!(r, Ok(n) if n > 0) { return },
            r = async { match b.as_mut() { Some(b) => b.read(&mut buf_b).await, None => std::future::pending().await } } => {
                if !matches!(r, Ok(n) if n > 0) { return }
            }
            _ = mode.changed() => return,
        }
    }
}
