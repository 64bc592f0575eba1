//! A delay/drop proxy in front of every node's Raft peer port (this kernel has no `netem`).
//!
//! Nodes are told their peers' proxy addresses (node N's is [`net::proxy_ip`]`(N)`), so every
//! peer connection to N passes through the harness. The proxy learns which node dialled from
//! the connection's source address (the `nat` rule of [`net::setup`] gives each node its own)
//! and dials N from [`net::origin_ip`] of that node, so the partition rules still cut the
//! replies (see [`net::cut`]). While a fault holds, a link touching a slowed node delays every
//! chunk it forwards, and a link touching a lossy node cuts connections mid-stream: it forwards
//! a random prefix of a chunk and closes both sides, so the receiver sees a truncated frame.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::net;
use super::schedule::Rng;

/// What one node's links suffer now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Added to every chunk forwarded to or from the node.
    pub delay: Duration,
    /// Up to this much more, drawn per chunk.
    pub jitter: Duration,
    /// Chance per chunk, in thousandths, that the connection is cut after a prefix of it.
    pub cut_per_mille: u64,
}

/// The proxies of one run; dropping it stops them.
#[derive(Debug)]
pub struct Proxies {
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    /// Index n-1 is node n.
    impaired: Mutex<Vec<Impairment>>,
    rng: Mutex<Rng>,
    /// Chunks delayed and connections cut, for the report.
    delayed: AtomicU64,
    cut: AtomicU64,
}

impl State {
    /// The worse of the two nodes' impairments (0 is a client, never impaired).
    fn link(&self, a: usize, b: usize) -> Impairment {
        let list = self.impaired.lock().map(|l| l.clone()).unwrap_or_default();
        let get = |n: usize| n.checked_sub(1).and_then(|i| list.get(i).copied());
        let (x, y) = (get(a).unwrap_or_default(), get(b).unwrap_or_default());
        Impairment {
            delay: x.delay.max(y.delay),
            jitter: x.jitter.max(y.jitter),
            cut_per_mille: x.cut_per_mille.max(y.cut_per_mille),
        }
    }

    fn below(&self, n: u64) -> u64 {
        self.rng.lock().map(|mut r| r.below(n)).unwrap_or(0)
    }
}

impl Proxies {
    /// Listens on `proxy_ip(n):port` for each node, forwarding to `node_ip(n):port`.
    pub async fn start(nodes: usize, port: u16, seed: u64) -> anyhow::Result<Proxies> {
        let state = Arc::new(State {
            impaired: Mutex::new(vec![Impairment::default(); nodes]),
            rng: Mutex::new(Rng::new(seed ^ 0x0050_524f_5859)),
            delayed: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for n in 1..=nodes {
            let listener = TcpListener::bind((net::proxy_ip(n).as_str(), port)).await?;
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((conn, from)) = listener.accept().await {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = forward(conn, from, n, port, state).await;
                    });
                }
            }));
        }
        Ok(Proxies { state, tasks })
    }

    /// Sets what node `n`'s links suffer until the next call (default: nothing).
    pub fn impair(&self, n: usize, what: Impairment) {
        if let Ok(mut list) = self.state.impaired.lock() {
            if let Some(slot) = list.get_mut(n.wrapping_sub(1)) {
                *slot = what;
            }
        }
    }

    /// Chunks delayed and connections cut so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.state.delayed.load(Ordering::Relaxed),
            self.state.cut.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Which node (1-based) an address belongs to; 0 for anything else.
fn node_of(addr: SocketAddr) -> usize {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            if (a, b, c) == (127, 0, 0) && d > 10 {
                usize::from(d - 10)
            } else {
                0
            }
        }
        IpAddr::V6(_) => 0,
    }
}

async fn forward(
    down: TcpStream,
    from: SocketAddr,
    to: usize,
    port: u16,
    state: Arc<State>,
) -> anyhow::Result<()> {
    let origin = node_of(from);
    let socket = TcpSocket::new_v4()?;
    let source: Ipv4Addr = if origin == 0 {
        Ipv4Addr::LOCALHOST
    } else {
        net::origin_ip(origin).parse()?
    };
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let target: SocketAddr = format!("{}:{port}", net::node_ip(to)).parse()?;
    let up = tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await??;
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    // When one direction ends (closed, or cut), the other goes too: dropping both halves of
    // both sockets closes them.
    tokio::select! {
        _ = pump(dr, uw, origin, to, state.clone()) => {}
        _ = pump(ur, dw, origin, to, state) => {}
    }
    Ok(())
}

/// Copies one direction chunk by chunk, delaying or cutting as the link's impairment says.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    a: usize,
    b: usize,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let link = state.link(a, b);
        if link.delay > Duration::ZERO || link.jitter > Duration::ZERO {
            let extra = state.below(link.jitter.as_millis() as u64 + 1);
            tokio::time::sleep(link.delay + Duration::from_millis(extra)).await;
            state.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if link.cut_per_mille > 0 && state.below(1000) < link.cut_per_mille {
            let keep = state.below(n as u64) as usize;
            let _ = w.write_all(&buf[..keep]).await;
            state.cut.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_address_names_it_and_anything_else_is_a_client() {
        assert_eq!(node_of("127.0.0.13:4000".parse().unwrap()), 3);
        assert_eq!(node_of("127.0.0.1:4000".parse().unwrap()), 0);
        assert_eq!(node_of("127.0.2.3:4000".parse().unwrap()), 0);
    }
}
