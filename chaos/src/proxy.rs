//! A fault-injecting TCP proxy, one per directed link between coordinators.
//!
//! In loopback mode every member dials every other through its own proxy
//! (`herd coordinator --dial ID=PROXY`), so the harness can cut, slow or
//! make lossy any one direction of any link while the processes keep their
//! sockets, as a real network fault would. A cut link *stalls*: bytes
//! already sent wait in the proxy and arrive after the heal, as TCP's
//! retransmissions would deliver them, and new connections are accepted but
//! not carried through until then. Loss is modelled at that level too: a
//! lost segment is a retransmission timeout's worth of extra delay, not a
//! hole in the byte stream (TCP never shows applications one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::nemesis::rng::Rng;

/// The extra delay a lost segment costs: Linux's minimum retransmission timeout.
pub const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);

/// Chunks in flight per direction before the proxy stops reading (back-pressure).
const IN_FLIGHT_CHUNKS: usize = 64;

/// What a link does to the bytes crossing it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    /// Nothing crosses until the cut heals.
    pub cut: bool,
    /// Added to every chunk's delivery time.
    pub delay: Duration,
    /// Up to this much more, uniformly drawn per chunk.
    pub jitter: Duration,
    /// Probability, per chunk, that it is lost once (and costs
    /// [`RETRANSMIT_DELAY`] more), in parts per thousand.
    pub loss_per_mille: u32,
}

impl LinkFault {
    /// A link that carries everything at once.
    pub const HEALTHY: LinkFault = LinkFault {
        cut: false,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss_per_mille: 0,
    };

    /// A link that carries nothing.
    pub const CUT: LinkFault = LinkFault {
        cut: true,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss_per_mille: 0,
    };

    fn chunk_delay(&self, rng: &mut Rng) -> Duration {
        let mut delay = self.delay;
        if !self.jitter.is_zero() {
            delay += Duration::from_micros(rng.below(self.jitter.as_micros() as u64 + 1));
        }
        // Each loss is retransmitted; a retransmission may be lost again.
        while self.loss_per_mille > 0 && rng.below(1000) < u64::from(self.loss_per_mille) {
            delay += RETRANSMIT_DELAY;
        }
        delay
    }
}

/// One proxy: listens on a loopback port and carries every connection to
/// `target` under the link's current [`LinkFault`].
pub struct LinkProxy {
    listen: String,
    control: watch::Sender<LinkFault>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Starts a proxy on a free port of `host` (loopback, or in Docker mode
    /// the gateway of the run's own container network) towards `target`;
    /// `seed` drives its jitter and loss. Ports in `avoid` are never taken:
    /// they were picked for members that have not bound them yet.
    pub async fn start(
        host: &str,
        target: String,
        seed: u64,
        avoid: &BTreeSet<u16>,
    ) -> std::io::Result<Self> {
        let listener = bind_avoiding(host, avoid).await?;
        let listen = listener.local_addr()?.to_string();
        let (control, faults) = watch::channel(LinkFault::HEALTHY);
        let rng = Arc::new(Mutex::new(Rng::new(seed)));
        let task = tokio::spawn(accept_loop(listener, target, faults, rng));
        Ok(Self {
            listen,
            control,
            task,
        })
    }

    /// Where to dial to cross this link.
    pub fn addr(&self) -> &str {
        &self.listen
    }

    /// Makes the link behave as `fault` from now on, connections already
    /// open included.
    pub fn set(&self, fault: LinkFault) {
        self.control.send_replace(fault);
    }

    /// The link's current behaviour.
    pub fn fault(&self) -> LinkFault {
        *self.control.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    faults: watch::Receiver<LinkFault>,
    rng: Arc<Mutex<Rng>>,
) {
    // Dropped with this task: a stopped proxy leaves no connection carrying traffic.
    let mut connections = AbortOnDrop(Vec::new());
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        connections.0.retain(|c| !c.is_finished());
        let task = tokio::spawn(carry(inbound, target.clone(), faults.clone(), rng.clone()));
        connections.0.push(task.abort_handle());
    }
}

/// Aborts tasks when dropped, so that tasks spawned by an aborted task end with it.
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn carry(
    inbound: TcpStream,
    target: String,
    mut faults: watch::Receiver<LinkFault>,
    rng: Arc<Mutex<Rng>>,
) {
    // A connection made during a cut waits, as a SYN would be retransmitted.
    if faults.wait_for(|f| !f.cut).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(&target).await else {
        // The member is down: the client sees its connection closed.
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = tokio::spawn(pump(in_read, out_write, faults.clone(), rng.clone()));
    let down = tokio::spawn(pump(out_read, in_write, faults, rng));
    let _pumps = AbortOnDrop(vec![up.abort_handle(), down.abort_handle()]);
    // Either direction ending (EOF or error) ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// One direction: a reader stamps each chunk with its delivery time; a
/// writer delivers chunks in order, not before their time and not while
/// the link is cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: watch::Receiver<LinkFault>,
    rng: Arc<Mutex<Rng>>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let reader_faults = faults.clone();
    let reader = tokio::spawn(async move {
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = *reader_faults.borrow();
            let delay = {
                let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                fault.chunk_delay(&mut rng)
            };
            // TCP delivers in order: a chunk never overtakes an earlier one.
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(vec![reader.abort_handle()]);
    let mut faults = faults;
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if faults.wait_for(|f| !f.cut).await.is_err() {
            return;
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// A listener on a free port of `host` that is not in `avoid`. The ports
/// refused stay bound until one is found, so the system cannot offer them
/// again meanwhile.
async fn bind_avoiding(host: &str, avoid: &BTreeSet<u16>) -> std::io::Result<TcpListener> {
    let mut refused = Vec::new();
    loop {
        let listener = TcpListener::bind((host, 0)).await?;
        if !avoid.contains(&listener.local_addr()?.port()) {
            return Ok(listener);
        }
        refused.push(listener);
        if refused.len() > 64 {
            return Err(std::io::Error::other(
                "the system keeps offering ports reserved for members",
            ));
        }
    }
}

/// The ports of `addrs` (`HOST:PORT` each), which proxies must leave free.
fn ports_of<'a>(addrs: impl IntoIterator<Item = &'a String>) -> BTreeSet<u16> {
    addrs
        .into_iter()
        .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

/// Proxies for every directed link between a set of members.
pub struct ProxyNet {
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl ProxyNet {
    /// Starts a proxy on `host` for every ordered pair of distinct members
    /// in `addrs` (member id → the address it listens on).
    pub async fn start(
        host: &str,
        addrs: &BTreeMap<u64, String>,
        seed: u64,
    ) -> std::io::Result<Self> {
        let mut rng = Rng::new(seed);
        let avoid = ports_of(addrs.values());
        let mut links = BTreeMap::new();
        for from in addrs.keys() {
            for (to, target) in addrs {
                if from == to {
                    continue;
                }
                let proxy = LinkProxy::start(host, target.clone(), rng.next_u64(), &avoid).await?;
                links.insert((*from, *to), proxy);
            }
        }
        Ok(Self { links })
    }

    /// The `--dial` value member `from` needs to reach every other member
    /// through its proxies (`2=127.0.0.1:P,3=...`).
    pub fn dial_arg(&self, from: u64) -> String {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|((_, to), proxy)| format!("{to}={}", proxy.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets one direction of one link.
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.set(fault);
        }
    }

    /// Sets every link.
    pub fn set_all(&self, fault: LinkFault) {
        for link in self.links.values() {
            link.set(fault);
        }
    }

    /// Cuts every link between members that `connected` says cannot talk,
    /// both directions, and heals the rest.
    pub fn partition(&self, connected: impl Fn(u64, u64) -> bool) {
        for ((from, to), link) in &self.links {
            let fault = if connected(*from, *to) {
                LinkFault::HEALTHY
            } else {
                LinkFault::CUT
            };
            link.set(fault);
        }
    }

    /// Every link healthy again.
    pub fn heal(&self) {
        self.set_all(LinkFault::HEALTHY);
    }

    /// The fault on the link from `from` to `to` (healthy when unknown).
    pub fn fault(&self, from: u64, to: u64) -> LinkFault {
        self.links
            .get(&(from, to))
            .map(LinkProxy::fault)
            .unwrap_or(LinkFault::HEALTHY)
    }
}

/// Proxies between node agents and coordinators: each agent is given its
/// own proxy per coordinator as its `--coordinators` list, so the harness
/// can cut one node off from the control plane while it and its workloads
/// run on. (Agents reach the leader through the address they were given
/// for it, so every path from an agent crosses these proxies.)
pub struct AgentLinks {
    links: BTreeMap<(String, u64), LinkProxy>,
}

impl AgentLinks {
    /// Starts a proxy on `host` from every agent in `agents` to every
    /// coordinator in `coordinators` (id → address).
    pub async fn start(
        host: &str,
        agents: &[String],
        coordinators: &BTreeMap<u64, String>,
        seed: u64,
    ) -> std::io::Result<Self> {
        let mut rng = Rng::new(seed);
        let avoid = ports_of(coordinators.values());
        let mut links = BTreeMap::new();
        for agent in agents {
            for (id, target) in coordinators {
                let proxy = LinkProxy::start(host, target.clone(), rng.next_u64(), &avoid).await?;
                links.insert((agent.clone(), *id), proxy);
            }
        }
        Ok(Self { links })
    }

    /// The `--coordinators` list agent `name` is started with.
    pub fn coordinators_arg(&self, name: &str) -> String {
        self.links
            .iter()
            .filter(|((agent, _), _)| agent == name)
            .map(|(_, proxy)| proxy.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts agent `name` off from every coordinator.
    pub fn isolate(&self, name: &str) {
        for ((agent, _), link) in &self.links {
            if agent == name {
                link.set(LinkFault::CUT);
            }
        }
    }

    /// Every agent link healthy again.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.set(LinkFault::HEALTHY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write");
        let mut got = vec![0u8; message.len()];
        stream.read_exact(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn a_healthy_link_carries_bytes_both_ways() {
        let proxy = LinkProxy::start("127.0.0.1", echo_server().await, 1, &BTreeSet::new())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
    }

    #[tokio::test]
    async fn a_cut_link_stalls_open_and_new_connections_until_it_heals() {
        let proxy = LinkProxy::start("127.0.0.1", echo_server().await, 2, &BTreeSet::new())
            .await
            .expect("proxy");
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut open, b"before").await, b"before");
        proxy.set(LinkFault::CUT);
        open.write_all(b"during").await.expect("write");
        let mut buf = [0u8; 6];
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), open.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "bytes crossed a cut link");
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        fresh.write_all(b"new").await.expect("write");
        let mut small = [0u8; 3];
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), fresh.read_exact(&mut small)).await;
        assert!(
            stalled.is_err(),
            "a connection made during the cut got through"
        );
        proxy.set(LinkFault::HEALTHY);
        // What was sent during the cut arrives after the heal, in order.
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut buf))
            .await
            .expect("delivered after heal")
            .expect("read");
        assert_eq!(&buf, b"during");
        tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut small))
            .await
            .expect("connected after heal")
            .expect("read");
        assert_eq!(&small, b"new");
    }

    #[tokio::test]
    async fn a_slow_link_delays_each_direction() {
        let proxy = LinkProxy::start("127.0.0.1", echo_server().await, 3, &BTreeSet::new())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut stream, b"warm").await;
        proxy.set(LinkFault {
            delay: Duration::from_millis(150),
            ..LinkFault::HEALTHY
        });
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
        // Both directions cross the proxy: at least twice the delay.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn loss_costs_retransmissions_and_follows_the_seed() {
        let lossy = LinkFault {
            loss_per_mille: 500,
            ..LinkFault::HEALTHY
        };
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| lossy.chunk_delay(&mut rng))
                .collect::<Vec<_>>()
        };
        let a = draws(9);
        assert_eq!(a, draws(9));
        let lost = a.iter().filter(|d| **d >= RETRANSMIT_DELAY).count();
        assert!((60..=140).contains(&lost), "{lost} of 200 lost at 50%");
        assert!(a.iter().all(|d| d.as_millis() % 200 == 0));
        let mut rng = Rng::new(1);
        assert_eq!(LinkFault::HEALTHY.chunk_delay(&mut rng), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_net_partitions_only_the_links_it_is_told_to() {
        let mut addrs = BTreeMap::new();
        for id in 1..=3 {
            addrs.insert(id, echo_server().await);
        }
        let net = ProxyNet::start("127.0.0.1", &addrs, 4).await.expect("net");
        assert_eq!(net.dial_arg(1).split(',').count(), 2);
        assert!(net.dial_arg(1).starts_with("2=127.0.0.1:"));
        // Isolate member 1.
        net.partition(|a, b| a != 1 && b != 1);
        assert!(net.fault(1, 2).cut && net.fault(2, 1).cut && net.fault(3, 1).cut);
        assert!(!net.fault(2, 3).cut && !net.fault(3, 2).cut);
        net.heal();
        assert!(!net.fault(1, 2).cut);
    }
}
