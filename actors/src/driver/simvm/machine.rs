//! The running SIMULATED VM: what the `herd sim-vm` process does, here so
//! that it can be tested in-process. The guest writes its memory at the
//! configured rate; the control channel ([`super::control`]) steers it; an
//! outgoing live migration sends the memory over the migration stream
//! ([`super::stream`]) to an incoming VM, as QEMU does:
//!
//! - **Pre-copy**: round 1 sends every page (zero pages as marks), each
//!   later round the pages the guest dirtied during the previous one, at
//!   most at the bandwidth cap.
//! - **Stop-and-copy** once the pages dirtied during the last round fit the
//!   downtime limit at the bandwidth measured so far: the guest is paused,
//!   the rest sent with the guest's state; the downtime is measured from
//!   the pause to the target's answer that it applied them all. Then (not
//!   counted in the downtime: a simulation's proof, which QEMU does not
//!   make) the source sends its memory's checksum, and the target compares
//!   it with its own before it calls the memory received. The source stays
//!   paused (`completed`) until it is stopped, or resumed by `cancel`.
//! - **Auto-converge** (QEMU's answer to a guest that dirties memory faster
//!   than the link, and what the real `vm` driver turns on): from round 2,
//!   a round in which the guest dirtied at least half as many bytes as the
//!   round sent raises the guest's throttle, first to
//!   [`THROTTLE_INITIAL`]%, then by [`THROTTLE_STEP`] points up to
//!   [`THROTTLE_MAX`]%: the guest writes that much slower. The throttle is
//!   in the progress (`throttle_pct`) and the log. As a bound, a move that
//!   still has not converged after [`MAX_ROUNDS`] rounds fails; the guest
//!   runs on here, unthrottled (as after a cancel or any failure).
//!
//! An incoming VM starts paused, listening; it applies the pages of one
//! stream at a time (a cut stream leaves it waiting for the next, which
//! starts again from round 1), and once a stream ends with matching
//! checksums it waits, paused, for `resume`, then goes on writing its
//! memory from the guest state that arrived.
//!
//! The stream is plain TCP, or mutual TLS with the node's certificate when
//! the process was given one ([`MachineConfig::tls`], see [`super::tls`]):
//! the target then admits the source node only (a refused peer is closed
//! and named in the log, and the target waits on for the right one), and
//! the source sends only to the node its agent named. Each side logs which
//! it was: `migration stream: TLS, from node NAME` / `to node NAME`, or
//! `migration stream: plain TCP`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herd_api::tls::identity::valid_name;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

use super::control::{
    GuestMode, InPhase, Incoming, OutPhase, Outgoing, Reply, Request, Status, MAX_LINE,
};
use super::memory::{SimulatedMemory, PAGE_SIZE};
use super::stream::{self, Answer, Frame};
use super::tls::StreamTls;

/// How often the simulated guest writes (thousands of simulated VMs on a
/// host each wake this often).
pub const TICK: Duration = Duration::from_millis(100);
/// How often it writes while it migrates out: finer, so that a pre-copy
/// round sees the writes of its own span rather than one burst.
pub const MIGRATING_TICK: Duration = Duration::from_millis(20);

/// Most page writes the guest makes per hold of its lock (see `tick`).
const WRITES_PER_SLICE: f64 = 256.0;
/// How often a status line is logged.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Pages copied out of the memory per lock.
const BATCH: usize = 32;
/// The first throttle auto-converge sets, percent.
pub const THROTTLE_INITIAL: u8 = 30;
/// How much each further non-converging round raises it, points.
pub const THROTTLE_STEP: u8 = 20;
/// The most the guest is slowed, percent.
pub const THROTTLE_MAX: u8 = 99;
/// Rounds after which a move that has not converged fails.
pub const MAX_ROUNDS: u32 = 64;
/// How long the source tries to reach the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the source waits for the target's acknowledgement.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a sender that fell behind the bandwidth cap may catch up.
const PACING_CREDIT: Duration = Duration::from_millis(100);
/// Socket buffers of the stream.
const STREAM_BUFFER: usize = 256 * 1024;

/// Where a status or event line goes (the process's stdout).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// The reading half of a migration stream, plain TCP or TLS.
type StreamRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a migration stream, plain TCP or TLS.
type StreamWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How to run one simulated VM.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Bytes the guest writes per second.
    pub dirty_bytes_per_sec: u64,
    /// Seed of its write pattern.
    pub seed: u64,
    /// The control socket to serve, if any.
    pub control: Option<PathBuf>,
    /// Start as an incoming migration's target, listening here
    /// (`HOST:0`: a free port of HOST, the node's migration host).
    pub incoming: Option<String>,
    /// The node's TLS identity for the migration stream, either way
    /// (`--migration-tls-*`); None: plain TCP.
    pub tls: Option<StreamTls>,
    /// The node an incoming migration comes from
    /// (`--migration-source-node`): under TLS only its certificate is
    /// admitted; None: any node of the cluster.
    pub source_node: Option<String>,
}

/// Why the simulated VM could not run.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// A socket could not be set up.
    #[error("{0}")]
    Io(String),
}

struct Guest {
    memory: SimulatedMemory,
    paused: bool,
    throttle_pct: u8,
    outgoing: Option<Outgoing>,
    incoming: Option<Incoming>,
    arrived: Option<super::memory::GuestState>,
}

struct Shared {
    guest: Mutex<Guest>,
    sender: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    dirty_rate: u64,
    tls: Option<StreamTls>,
    log: Log,
}

impl Shared {
    fn guest(&self) -> MutexGuard<'_, Guest> {
        // A panic elsewhere cannot leave the memory half-changed in a way
        // that matters to a simulation; keep going with it.
        self.guest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, line: &str) {
        (self.log)(line)
    }

    fn status(&self) -> Status {
        let g = self.guest();
        Status {
            pid: std::process::id(),
            guest: if g.paused {
                GuestMode::Paused
            } else {
                GuestMode::Running
            },
            pages: g.memory.pages() as u64,
            writes: g.memory.writes(),
            dirty_rate_bytes_per_sec: self.dirty_rate,
            outgoing: g.outgoing.clone(),
            incoming: g.incoming.clone(),
        }
    }

    fn outgoing(&self, update: impl FnOnce(&mut Outgoing)) {
        if let Some(out) = self.guest().outgoing.as_mut() {
            update(out);
        }
    }
}

/// Runs one simulated VM until `stop` resolves (or fails: the error is
/// returned). Returns the page writes made.
pub async fn run(
    config: MachineConfig,
    stop: impl Future<Output = Result<(), String>>,
    log: Log,
) -> Result<u64, MachineError> {
    let pages = usize::try_from(config.memory_mib.saturating_mul(1 << 20) / PAGE_SIZE as u64)
        .map_err(|_| MachineError::Config("--memory-mib is too large for this machine".into()))?;
    let rate = config.dirty_bytes_per_sec as f64 / PAGE_SIZE as f64;
    let control = match &config.control {
        Some(path) => Some(bind_control(path)?),
        None => None,
    };
    let listener = match &config.incoming {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            MachineError::Io(format!("cannot listen for the migration on {addr}: {e}"))
        })?),
        None => None,
    };
    let incoming = match &listener {
        Some(l) => Some(Incoming {
            addr: l
                .local_addr()
                .map_err(|e| MachineError::Io(format!("cannot read the listening address: {e}")))?
                .to_string(),
            phase: InPhase::Waiting,
            bytes: 0,
            rounds: 0,
            checksum: None,
            error: None,
        }),
        None => None,
    };
    let shared = Arc::new(Shared {
        guest: Mutex::new(Guest {
            memory: SimulatedMemory::new(pages, rate, config.seed),
            paused: incoming.is_some(),
            throttle_pct: 0,
            outgoing: None,
            incoming: incoming.clone(),
            arrived: None,
        }),
        sender: tokio::sync::Mutex::new(None),
        dirty_rate: config.dirty_bytes_per_sec,
        tls: config.tls.clone(),
        log,
    });
    shared.log(&format!(
        "sim-vm (simulated VM): {} MiB in {pages} pages, writing {rate:.0} pages/s",
        config.memory_mib
    ));
    if let Some(incoming) = &incoming {
        shared.log(&format!(
            "sim-vm (simulated VM): incoming migration: paused, listening on {}",
            incoming.addr
        ));
    }
    let mut tasks = Vec::new();
    if let Some(control) = control {
        tasks.push(tokio::spawn(serve_control(control, shared.clone())));
    }
    if let Some(listener) = listener {
        tasks.push(tokio::spawn(receive_loop(
            listener,
            shared.clone(),
            config.source_node.clone(),
        )));
    }
    let result = tick(&shared, stop).await;
    for task in &tasks {
        task.abort();
    }
    if let Some(sender) = shared.sender.lock().await.take() {
        sender.abort();
    }
    if let Some(path) = &config.control {
        let _ = std::fs::remove_file(path);
    }
    let writes = shared.guest().memory.writes();
    shared.log(&format!(
        "sim-vm (simulated VM): stopping after {writes} page writes"
    ));
    result.map(|_| writes)
}

fn bind_control(path: &std::path::Path) -> Result<UnixListener, MachineError> {
    if path.as_os_str().len() > super::control::MAX_SOCKET_PATH {
        return Err(MachineError::Config(format!(
            "the control socket path {} is longer than the {} bytes a unix socket allows",
            path.display(),
            super::control::MAX_SOCKET_PATH
        )));
    }
    // A socket left by an earlier run of this allocation.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(MachineError::Io(format!(
                "cannot remove the stale control socket {}: {e}",
                path.display()
            )))
        }
        _ => {}
    }
    UnixListener::bind(path).map_err(|e| {
        MachineError::Io(format!(
            "cannot listen on the control socket {}: {e}",
            path.display()
        ))
    })
}

/// The guest's clock: writes its memory every [`TICK`] (or
/// [`MIGRATING_TICK`]) unless paused,
/// slowed by its throttle.
async fn tick(
    shared: &Shared,
    stop: impl Future<Output = Result<(), String>>,
) -> Result<(), MachineError> {
    tokio::pin!(stop);
    let mut last = Instant::now();
    let mut reported = Instant::now();
    let mut period = TICK;
    loop {
        tokio::select! {
            signal = &mut stop => return signal.map_err(MachineError::Io),
            _ = tokio::time::sleep(period) => {
                let now = Instant::now();
                // The writes a tick owes, in slices that each hold the
                // guest's lock briefly: a write to a page never touched
                // costs a page fault (with transparent huge pages, the
                // zeroing of 2 MiB: see `memory::no_huge_pages`), and a
                // guest dirtying 64 MiB/s owes 1,600 writes per tick;
                // held for all of them, the lock kept the control socket
                // and the migration's sender waiting.
                let (seconds, slices) = {
                    let g = shared.guest();
                    let speed = 1.0 - f64::from(g.throttle_pct) / 100.0;
                    let seconds = if g.paused {
                        0.0
                    } else {
                        now.duration_since(last).as_secs_f64() * speed
                    };
                    let owed = seconds * g.memory.rate();
                    (seconds, (owed / WRITES_PER_SLICE).ceil().max(1.0))
                };
                let mut left = slices as u64;
                while left > 0 {
                    {
                        let mut g = shared.guest();
                        if !g.paused {
                            g.memory.advance(seconds / slices);
                        }
                    }
                    left -= 1;
                    if left > 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let line = {
                    let g = shared.guest();
                    let migrating = g
                        .outgoing
                        .as_ref()
                        .is_some_and(|o| o.phase == OutPhase::PreCopy);
                    period = if migrating { MIGRATING_TICK } else { TICK };
                    (now.duration_since(reported) >= REPORT_EVERY).then(|| {
                        let mut line = format!(
                            "sim-vm (simulated VM): {} page writes, {} pages dirty",
                            g.memory.writes(),
                            g.memory.dirty_pages()
                        );
                        if g.paused {
                            line.push_str(", paused");
                        }
                        if g.throttle_pct > 0 {
                            line.push_str(&format!(", throttled {}%", g.throttle_pct));
                        }
                        line
                    })
                };
                last = now;
                if let Some(line) = line {
                    reported = now;
                    shared.log(&line);
                }
            }
        }
    }
}

async fn serve_control(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
            Err(e) => {
                shared.log(&format!(
                    "sim-vm (simulated VM): control socket accept failed: {e}"
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (reply, last) = if !line.ends_with('\n') {
            let message = format!("a request line over {MAX_LINE} bytes, or cut");
            (Reply::Error { message }, true)
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(request) => (handle(&shared, request).await, false),
                Err(e) => (
                    Reply::Error {
                        message: format!("not a request: {e}"),
                    },
                    false,
                ),
            }
        };
        let Ok(mut text) = serde_json::to_vec(&reply) else {
            return;
        };
        text.push(b'\n');
        if write.write_all(&text).await.is_err() || last {
            return;
        }
    }
}

fn refuse(message: impl Into<String>) -> Reply {
    Reply::Error {
        message: message.into(),
    }
}

async fn handle(shared: &Arc<Shared>, request: Request) -> Reply {
    match request {
        Request::Status => Reply::Status(shared.status()),
        Request::Checksum => {
            let g = shared.guest();
            Reply::Checksum {
                checksum: g.memory.checksum(),
                paused: g.paused,
            }
        }
        Request::Migrate {
            to,
            downtime_limit_ms,
            bandwidth_bytes_per_sec,
            target_node,
            revoked_certificates,
        } => {
            if let Some(tls) = &shared.tls {
                let listed = revoked_certificates.join("\n");
                match super::tls::parse_revoked("revoked_certificates", &listed) {
                    Ok(set) => tls.set_revoked(set),
                    Err(message) => return Reply::Error { message },
                }
            }
            migrate(
                shared,
                to,
                downtime_limit_ms,
                bandwidth_bytes_per_sec,
                target_node,
            )
            .await
        }
        Request::Cancel => {
            cancel(shared).await;
            Reply::Ok
        }
        Request::Resume => resume(shared),
    }
}

async fn migrate(
    shared: &Arc<Shared>,
    to: String,
    downtime_limit_ms: u64,
    cap: Option<u64>,
    target_node: Option<String>,
) -> Reply {
    let Ok(addr) = to.parse::<SocketAddr>() else {
        return refuse(format!(
            "migrate: `to` is {to:?}, expected IP:PORT (the incoming VM's address)"
        ));
    };
    if cap == Some(0) {
        return refuse("migrate: a bandwidth cap of 0 bytes/s would never finish");
    }
    if let Some(name) = target_node.as_deref().filter(|n| !valid_name(n)) {
        return refuse(format!(
            "migrate: `target_node` {name:?} is not a node name"
        ));
    }
    let mut sender = shared.sender.lock().await;
    {
        let mut g = shared.guest();
        if let Some(incoming) = g.incoming.as_ref().filter(|i| i.phase != InPhase::Resumed) {
            return refuse(format!(
                "migrate: this simulated VM is an incoming migration's target, not resumed ({:?})",
                incoming.phase
            ));
        }
        if let Some(out) = g.outgoing.as_ref().filter(|o| {
            matches!(
                o.phase,
                OutPhase::PreCopy | OutPhase::StopAndCopy | OutPhase::Completed
            )
        }) {
            return refuse(format!(
                "migrate: a migration to {} is already {:?}; cancel it first",
                out.to, out.phase
            ));
        }
        if g.paused {
            return refuse("migrate: the guest is paused");
        }
        g.outgoing = Some(Outgoing {
            to: to.clone(),
            phase: OutPhase::PreCopy,
            bytes: 0,
            rounds: 0,
            remaining_pages: g.memory.pages() as u64,
            dirty_rate_bytes_per_sec: 0,
            bandwidth_bytes_per_sec: 0,
            throttle_pct: 0,
            downtime_ms: 0,
            total_ms: 0,
            checksum: None,
            error: None,
        });
    }
    shared.log(&format!(
        "sim-vm (simulated VM): migrating to {to} (downtime limit {downtime_limit_ms} ms, bandwidth {})",
        cap.map_or("uncapped".to_string(), |c| format!("{c} bytes/s"))
    ));
    let limit = Duration::from_millis(downtime_limit_ms);
    *sender = Some(tokio::spawn(send(
        shared.clone(),
        addr,
        target_node,
        limit,
        cap,
    )));
    Reply::Ok
}

async fn cancel(shared: &Shared) {
    if let Some(task) = shared.sender.lock().await.take() {
        task.abort();
        // Wait until it has stopped (an aborted task ends at its next
        // await), so that nothing it does lands after the reset below.
        let _ = task.await;
    }
    let reset = {
        let mut g = shared.guest();
        let Some(out) = g.outgoing.as_mut() else {
            return;
        };
        let active = matches!(
            out.phase,
            OutPhase::PreCopy | OutPhase::StopAndCopy | OutPhase::Completed
        );
        if active {
            out.phase = OutPhase::Cancelled;
        }
        out.throttle_pct = 0;
        g.paused = false;
        g.throttle_pct = 0;
        active
    };
    if reset {
        shared.log("sim-vm (simulated VM): migration cancelled; the guest runs on here");
    }
}

fn resume(shared: &Shared) -> Reply {
    let mut g = shared.guest();
    let phase = match g.incoming.as_ref() {
        Some(incoming) => incoming.phase,
        None => {
            return refuse("resume: not an incoming migration's target (cancel resumes a source)")
        }
    };
    match phase {
        InPhase::Resumed => Reply::Ok,
        InPhase::Received => {
            if let Some(state) = g.arrived.take() {
                g.memory.restore_guest_state(state);
            }
            g.paused = false;
            if let Some(incoming) = g.incoming.as_mut() {
                incoming.phase = InPhase::Resumed;
            }
            let writes = g.memory.writes();
            drop(g);
            shared.log(&format!(
                "sim-vm (simulated VM): migrated in; resumed after {writes} page writes"
            ));
            Reply::Ok
        }
        other => refuse(format!(
            "resume: the memory has not all arrived yet ({other:?})"
        )),
    }
}

/// The outgoing migration task: on failure the guest runs on here.
async fn send(
    shared: Arc<Shared>,
    to: SocketAddr,
    target_node: Option<String>,
    limit: Duration,
    cap: Option<u64>,
) {
    if let Err(message) = precopy(&shared, to, target_node.as_deref(), limit, cap).await {
        {
            let mut g = shared.guest();
            g.paused = false;
            g.throttle_pct = 0;
            if let Some(out) = g.outgoing.as_mut() {
                out.phase = OutPhase::Failed;
                out.throttle_pct = 0;
                out.error = Some(message.clone());
            }
        }
        shared.log(&format!(
            "sim-vm (simulated VM): migration to {to} failed: {message}; the guest runs on here"
        ));
    }
}

/// What a stream sender keeps across rounds.
struct Sender<'a> {
    shared: &'a Shared,
    w: BufWriter<StreamWrite>,
    /// When the pacing window opened, and the bytes sent before it.
    window: Instant,
    window_bytes: u64,
    cap: Option<u64>,
    bytes: u64,
}

impl Sender<'_> {
    /// Sends `pages` (zero pages as marks), at most at the cap; returns the
    /// bytes sent.
    async fn pages(&mut self, pages: &[usize]) -> Result<u64, String> {
        let before = self.bytes;
        let mut buf = vec![0u8; BATCH * PAGE_SIZE];
        let mut zero = [false; BATCH];
        for (i, chunk) in pages.chunks(BATCH).enumerate() {
            {
                let g = self.shared.guest();
                for (j, page) in chunk.iter().enumerate() {
                    zero[j] = g.memory.page_is_zero(*page);
                    if !zero[j] {
                        if let Some(bytes) = g.memory.page(*page) {
                            buf[j * PAGE_SIZE..(j + 1) * PAGE_SIZE].copy_from_slice(bytes);
                        }
                    }
                }
            }
            for (j, page) in chunk.iter().enumerate() {
                let index = *page as u64;
                if zero[j] {
                    stream::write_zero(&mut self.w, index).await
                } else {
                    stream::write_page(&mut self.w, index, &buf[j * PAGE_SIZE..(j + 1) * PAGE_SIZE])
                        .await
                }
                .map_err(|e| format!("the stream to the target was cut: {e}"))?;
                self.bytes += if zero[j] {
                    stream::ZERO_FRAME_BYTES
                } else {
                    stream::PAGE_FRAME_BYTES
                };
            }
            let left = (pages.len() - (i * BATCH + chunk.len())) as u64;
            let bytes = self.bytes;
            {
                let mut g = self.shared.guest();
                let dirty = g.memory.dirty_pages() as u64;
                if let Some(out) = g.outgoing.as_mut() {
                    out.bytes = bytes;
                    out.remaining_pages = left + dirty;
                }
            }
            self.pace().await;
        }
        Ok(self.bytes - before)
    }

    /// Sleeps as long as the bytes sent since the pacing window opened are
    /// ahead of the cap. A sender that fell behind (pages slow to read)
    /// keeps at most [`PACING_CREDIT`] of credit, so it never bursts far
    /// above the cap afterwards.
    async fn pace(&mut self) {
        let Some(cap) = self.cap else { return };
        let sent = self.bytes - self.window_bytes;
        let due = Duration::from_secs_f64(sent as f64 / cap as f64);
        let elapsed = self.window.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        } else if elapsed > due + PACING_CREDIT {
            let now = Instant::now();
            self.window = now.checked_sub(PACING_CREDIT).unwrap_or(now);
            self.window_bytes = self.bytes;
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.w
            .flush()
            .await
            .map_err(|e| format!("the stream to the target was cut: {e}"))
    }
}

/// Connects to the target at `to`: plain TCP, or TLS checked to reach
/// node `target_node` (any node when None) when this VM has an identity.
async fn connect(
    shared: &Shared,
    to: SocketAddr,
    target_node: Option<&str>,
) -> Result<(StreamRead, StreamWrite), String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| format!("cannot reach the target at {to} within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot reach the target at {to}: {e}"))?;
    let _ = stream.set_nodelay(true);
    match &shared.tls {
        None => {
            shared.log(&format!(
                "sim-vm (simulated VM): migration stream: plain TCP, to {to}"
            ));
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Some(tls) => {
            let (stream, peer) = tls
                .connect(stream, target_node)
                .await
                .map_err(|e| format!("refused the target at {to}: {e}"))?;
            shared.log(&format!(
                "sim-vm (simulated VM): migration stream: TLS, to node {} at {to}",
                peer.name
            ));
            let (read, write) = tokio::io::split(stream);
            Ok((Box::new(read), Box::new(write)))
        }
    }
}

async fn precopy(
    shared: &Shared,
    to: SocketAddr,
    target_node: Option<&str>,
    limit: Duration,
    cap: Option<u64>,
) -> Result<(), String> {
    let started = Instant::now();
    let (mut read, write) = connect(shared, to, target_node).await?;
    let mut tx = Sender {
        shared,
        w: BufWriter::with_capacity(STREAM_BUFFER, write),
        window: started,
        window_bytes: 0,
        cap,
        bytes: 0,
    };
    let pages = {
        let mut g = shared.guest();
        // Dirt from before the move does not matter: round 1 sends all.
        g.memory.take_dirty();
        g.memory.pages()
    };
    stream::write_header(&mut tx.w, pages as u64)
        .await
        .map_err(|e| format!("the stream to the target was cut: {e}"))?;
    tx.bytes += 20;
    let mut pending: Vec<usize> = (0..pages).collect();
    let mut round = 0u32;
    let mut send_time = Duration::ZERO;
    let mut sent_in_rounds = 0u64;
    let dirtied = loop {
        round += 1;
        if round > MAX_ROUNDS {
            return Err(format!(
                "did not converge after {MAX_ROUNDS} rounds, even throttled to {}%",
                shared.guest().throttle_pct
            ));
        }
        shared.outgoing(|o| o.rounds = round);
        let round_started = Instant::now();
        let round_bytes = tx.pages(&pending).await?;
        stream::write_round_end(&mut tx.w, round)
            .await
            .map_err(|e| format!("the stream to the target was cut: {e}"))?;
        tx.flush().await?;
        let took = round_started.elapsed();
        send_time += took;
        sent_in_rounds += round_bytes;
        let measured = sent_in_rounds as f64 / send_time.as_secs_f64().max(1e-6);
        let bandwidth = cap.map_or(measured, |c| measured.min(c as f64));
        let (dirtied, throttle) = {
            let mut g = shared.guest();
            (g.memory.take_dirty(), g.throttle_pct)
        };
        let dirty_bytes = (dirtied.len() * PAGE_SIZE) as u64;
        let dirty_rate = dirty_bytes as f64 / took.as_secs_f64().max(1e-6);
        shared.outgoing(|o| {
            o.remaining_pages = dirtied.len() as u64;
            o.dirty_rate_bytes_per_sec = dirty_rate as u64;
            o.bandwidth_bytes_per_sec = bandwidth as u64;
        });
        let expected = Duration::from_secs_f64(dirty_bytes as f64 / bandwidth.max(1.0));
        if expected <= limit {
            break dirtied;
        }
        if round >= 2 && dirty_bytes.saturating_mul(2) >= round_bytes && throttle < THROTTLE_MAX {
            let raised = if throttle == 0 {
                THROTTLE_INITIAL
            } else {
                throttle.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX)
            };
            shared.guest().throttle_pct = raised;
            shared.outgoing(|o| o.throttle_pct = raised);
            shared.log(&format!(
                "sim-vm (simulated VM): round {round}: the guest dirtied {dirty_bytes} bytes while {round_bytes} were sent ({:.0} bytes/s vs {:.0} bytes/s); auto-converge throttles it to {raised}%",
                dirty_rate, bandwidth
            ));
        }
        pending = dirtied;
    };

    // Stop-and-copy: the guest paused, the rest sent.
    let paused_at = Instant::now();
    let (rest, state) = {
        let mut g = shared.guest();
        g.paused = true;
        let mut rest = dirtied;
        rest.extend(g.memory.take_dirty());
        rest.sort_unstable();
        rest.dedup();
        if let Some(out) = g.outgoing.as_mut() {
            out.phase = OutPhase::StopAndCopy;
            out.remaining_pages = rest.len() as u64;
        }
        (rest, g.memory.guest_state())
    };
    tx.pages(&rest).await?;
    let cut = |e: std::io::Error| format!("the stream to the target was cut: {e}");
    stream::write_guest(&mut tx.w, &state).await.map_err(cut)?;
    stream::write_end(&mut tx.w).await.map_err(cut)?;
    tx.bytes += 25 + 1;
    tx.flush().await?;
    match answer(&mut read).await? {
        Answer::Applied => {}
        Answer::Refused(why) => return Err(format!("the target refused the stream: {why}")),
        other => {
            return Err(format!(
                "the target answered {other:?} to the end of the pages"
            ))
        }
    }
    // The target holds the whole state: the downtime ends here. What
    // follows proves the copy exact (a simulation's check, not counted).
    let downtime = paused_at.elapsed();
    let checksum = shared.guest().memory.checksum();
    stream::write_done(&mut tx.w, checksum).await.map_err(cut)?;
    tx.bytes += 5;
    tx.flush().await?;
    match answer(&mut read).await? {
        Answer::Ack(theirs) if theirs == checksum => {}
        Answer::Ack(theirs) => {
            return Err(format!(
                "the target's memory checksum {theirs:08x} differs from this one's {checksum:08x}"
            ))
        }
        Answer::Refused(why) => return Err(format!("the target refused the stream: {why}")),
        Answer::Applied => return Err("the target answered twice that it applied the pages".into()),
    }
    let total = started.elapsed();
    let bytes = tx.bytes;
    shared.outgoing(|o| {
        o.phase = OutPhase::Completed;
        o.bytes = bytes;
        o.remaining_pages = 0;
        o.downtime_ms = downtime.as_millis() as u64;
        o.total_ms = total.as_millis() as u64;
        o.checksum = Some(checksum);
    });
    shared.log(&format!(
        "sim-vm (simulated VM): migrated to {to}: {bytes} bytes in {round} rounds, downtime {} ms, total {} ms, memory checksum {checksum:08x}; paused here",
        downtime.as_millis(),
        total.as_millis()
    ));
    Ok(())
}

/// The target's next answer.
async fn answer(read: &mut StreamRead) -> Result<Answer, String> {
    tokio::time::timeout(ANSWER_TIMEOUT, stream::read_answer(read))
        .await
        .map_err(|_| format!("the target did not answer within {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| format!("the target did not answer: {e}"))
}

/// Takes incoming streams one at a time until one arrives whole. Under
/// TLS each connection's handshake and check of the peer (node
/// `source_node`, any node when None) run beside the accepting, so that a
/// stranger holding a connection open does not keep the source out; a
/// refused peer is closed and logged, and the target waits on.
async fn receive_loop(listener: TcpListener, shared: Arc<Shared>, source_node: Option<String>) {
    let awaited = match &source_node {
        Some(name) => format!("node {name:?}, the source"),
        None => "a node of the cluster".to_string(),
    };
    let mut handshakes = JoinSet::new();
    loop {
        let (read, write, peer): (StreamRead, StreamWrite, SocketAddr) = tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        shared.log(&format!(
                            "sim-vm (simulated VM): migration accept failed: {e}"
                        ));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match &shared.tls {
                    None => {
                        shared.log(&format!(
                            "sim-vm (simulated VM): migration stream: plain TCP, from {peer}"
                        ));
                        let (read, write) = stream.into_split();
                        (Box::new(read), Box::new(write), peer)
                    }
                    Some(tls) => {
                        let (tls, source) = (tls.clone(), source_node.clone());
                        handshakes.spawn(async move {
                            (peer, tls.accept(stream, source.as_deref()).await)
                        });
                        continue;
                    }
                }
            }
            Some(joined) = handshakes.join_next() => {
                let Ok((peer, admitted)) = joined else { continue };
                match admitted {
                    Ok((stream, identity)) => {
                        shared.log(&format!(
                            "sim-vm (simulated VM): migration stream: TLS, from node {} at {peer}",
                            identity.name
                        ));
                        let (read, write) = tokio::io::split(stream);
                        (Box::new(read), Box::new(write), peer)
                    }
                    Err(why) => {
                        set_incoming(&shared, |i| {
                            i.error = Some(format!("refused {peer}: {why}"));
                        });
                        shared.log(&format!(
                            "sim-vm (simulated VM): migration stream from {peer} refused: {why}; still waiting for {awaited}"
                        ));
                        continue;
                    }
                }
            }
        };
        set_incoming(&shared, |i| {
            i.phase = InPhase::Receiving;
            i.bytes = 0;
            i.rounds = 0;
            i.error = None;
        });
        match receive(read, write, &shared).await {
            Ok(checksum) => {
                shared.log(&format!(
                    "sim-vm (simulated VM): the memory arrived from {peer} (checksum {checksum:08x}); paused until resumed"
                ));
                return;
            }
            Err(e) => {
                set_incoming(&shared, |i| {
                    i.phase = InPhase::Waiting;
                    i.error = Some(e.clone());
                });
                shared.log(&format!(
                    "sim-vm (simulated VM): the migration stream from {peer} ended: {e}; waiting for another"
                ));
            }
        }
    }
}

fn set_incoming(shared: &Shared, update: impl FnOnce(&mut Incoming)) {
    if let Some(incoming) = shared.guest().incoming.as_mut() {
        update(incoming);
    }
}

/// Applies one stream; returns the memory checksum once it ended whole.
async fn receive(read: StreamRead, mut write: StreamWrite, shared: &Shared) -> Result<u32, String> {
    let mut r = BufReader::with_capacity(STREAM_BUFFER, read);
    let pages = shared.guest().memory.pages() as u64;
    stream::read_header(&mut r, pages)
        .await
        .map_err(|e| e.to_string())?;
    let mut page = Box::new([0u8; PAGE_SIZE]);
    let mut arrival = Arrival {
        state: None,
        ended: false,
        bytes: 20,
        pages,
    };
    loop {
        let frame = stream::read_frame(&mut r, &mut page)
            .await
            .map_err(|e| e.to_string())?;
        let answer = apply(shared, frame, &page, &mut arrival)?;
        let Some(answer) = answer else { continue };
        let result = match &answer {
            Answer::Applied => None,
            Answer::Ack(mine) => Some(Ok(*mine)),
            Answer::Refused(why) => Some(Err(why.clone())),
        };
        let written = stream::write_answer(&mut write, &answer)
            .await
            .map_err(|e| format!("cannot answer the source: {e}"));
        match result {
            None => written?,
            Some(result) => return result.and_then(|mine| written.map(|_| mine)),
        }
    }
}

/// What one incoming stream has brought so far.
struct Arrival {
    state: Option<super::memory::GuestState>,
    ended: bool,
    bytes: u64,
    pages: u64,
}

/// Applies one frame to the memory; at the end of the pages and at the
/// checksum, the answer to send (the memory then marked received, or the
/// stream refused).
fn apply(
    shared: &Shared,
    frame: Frame,
    page: &[u8; PAGE_SIZE],
    arrival: &mut Arrival,
) -> Result<Option<Answer>, String> {
    let pages = arrival.pages;
    let (state, bytes) = (&mut arrival.state, &mut arrival.bytes);
    let mut g = shared.guest();
    match frame {
        Frame::Page(index) | Frame::Zero(index) if index >= pages => {
            return Err(format!("page {index} is out of range ({pages} pages)"));
        }
        Frame::Page(_) | Frame::Zero(_) | Frame::Guest(_) | Frame::RoundEnd(_) if arrival.ended => {
            return Err("a frame after the end of the pages".into());
        }
        Frame::End => {
            *bytes += 1;
            arrival.ended = true;
            return Ok(Some(match state {
                Some(_) => Answer::Applied,
                None => Answer::Refused("the pages ended without the guest's state".into()),
            }));
        }
        Frame::Done(_) if !arrival.ended => {
            return Ok(Some(Answer::Refused(
                "a checksum before the end of the pages".into(),
            )));
        }
        Frame::Page(index) => {
            g.memory.set_page(index as usize, &page[..]);
            *bytes += stream::PAGE_FRAME_BYTES;
        }
        Frame::Zero(index) => {
            g.memory.zero_page(index as usize);
            *bytes += stream::ZERO_FRAME_BYTES;
        }
        Frame::RoundEnd(round) => {
            *bytes += 5;
            if let Some(i) = g.incoming.as_mut() {
                i.rounds = round;
            }
        }
        Frame::Guest(s) => {
            *bytes += 25;
            *state = Some(s);
        }
        Frame::Done(theirs) => {
            *bytes += 5;
            let mine = g.memory.checksum();
            if mine != theirs {
                return Ok(Some(Answer::Refused(format!(
                    "memory checksums differ: source {theirs:08x}, target {mine:08x}"
                ))));
            }
            g.arrived = state.take();
            let total = *bytes;
            if let Some(i) = g.incoming.as_mut() {
                i.phase = InPhase::Received;
                i.bytes = total;
                i.checksum = Some(mine);
            }
            return Ok(Some(Answer::Ack(mine)));
        }
    }
    let total = *bytes;
    if let Some(i) = g.incoming.as_mut() {
        i.bytes = total;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::control::{self, Request};
    use super::*;

    /// One simulated VM running in this process, with its control socket.
    struct Vm {
        socket: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<Result<u64, MachineError>>,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl Vm {
        fn start(dir: &std::path::Path, name: &str, mib: u64, rate: u64, incoming: bool) -> Self {
            Self::start_tls(dir, name, mib, rate, incoming, None, None)
        }

        /// A VM whose migration stream uses `tls`, waiting (if incoming)
        /// for node `source`.
        fn start_tls(
            dir: &std::path::Path,
            name: &str,
            mib: u64,
            rate: u64,
            incoming: bool,
            tls: Option<StreamTls>,
            source: Option<&str>,
        ) -> Self {
            let socket = dir.join(format!("{name}.sock"));
            let config = MachineConfig {
                memory_mib: mib,
                dirty_bytes_per_sec: rate,
                seed: 5,
                control: Some(socket.clone()),
                incoming: incoming.then(|| "127.0.0.1:0".to_string()),
                tls,
                source_node: source.map(str::to_string),
            };
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let log: Log = Arc::new(move |l: &str| {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(l.to_string())
            });
            let task = tokio::spawn(run(
                config,
                async move { rx.await.map_err(|e| e.to_string()) },
                log,
            ));
            Vm {
                socket,
                stop: Some(tx),
                task,
                lines,
            }
        }

        async fn status(&self) -> Status {
            for _ in 0..100 {
                if let Ok(status) = control::status(&self.socket).await {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            control::status(&self.socket).await.expect("status")
        }

        async fn until(&self, what: &str, mut probe: impl FnMut(&Status) -> bool) -> Status {
            let started = Instant::now();
            loop {
                let status = self.status().await;
                if probe(&status) {
                    return status;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "never {what}: {status:#?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        fn log(&self) -> String {
            self.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join("\n")
        }

        async fn stop(mut self) -> u64 {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let writes = (&mut self.task).await.expect("joined").expect("ran");
            assert!(!self.socket.exists(), "control socket removed");
            writes
        }
    }

    fn out(status: &Status) -> &Outgoing {
        status.outgoing.as_ref().expect("an outgoing migration")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_moves_to_an_incoming_vm_which_resumes_where_the_source_paused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Vm::start(dir.path(), "s", 16, 2 << 20, false);
        let target = Vm::start(dir.path(), "t", 16, 2 << 20, true);
        let t = target.status().await;
        assert_eq!(t.guest, GuestMode::Paused, "an incoming VM waits");
        let addr = t.incoming.as_ref().expect("incoming").addr.clone();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        // A target refuses to resume, or to migrate, before anything arrived.
        let err = control::command(&target.socket, &Request::Resume)
            .await
            .expect_err("nothing arrived");
        assert!(err.to_string().contains("not all arrived"), "{err}");
        source.until("writing", |s| s.writes > 200).await;

        let bad = Request::Migrate {
            to: "somewhere".into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            target_node: None,
            revoked_certificates: Vec::new(),
        };
        let err = control::command(&source.socket, &bad)
            .await
            .expect_err("bad address");
        assert!(err.to_string().contains("expected IP:PORT"), "{err}");
        let migrate = Request::Migrate {
            to: addr,
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            target_node: None,
            revoked_certificates: Vec::new(),
        };
        control::command(&source.socket, &migrate)
            .await
            .expect("migrate");
        let done = source
            .until("completed", |s| out(s).phase == OutPhase::Completed)
            .await;
        let o = out(&done);
        assert!(o.rounds >= 1 && o.bytes > 0, "{o:?}");
        assert!(o.downtime_ms <= o.total_ms, "{o:?}");
        assert_eq!(done.guest, GuestMode::Paused, "the source handed over");
        let err = control::command(&source.socket, &migrate)
            .await
            .expect_err("a second move");
        assert!(err.to_string().contains("already Completed"), "{err}");

        // Both report the same memory over their control sockets.
        let (src, src_paused) = control::checksum(&source.socket).await.expect("checksum");
        let (dst, dst_paused) = control::checksum(&target.socket).await.expect("checksum");
        assert!(src_paused && dst_paused);
        assert_eq!(src, dst, "the target holds the source's memory");
        assert_eq!(o.checksum, Some(src));
        let arrived = target.status().await;
        let incoming = arrived.incoming.as_ref().expect("incoming");
        assert_eq!(incoming.phase, InPhase::Received);
        assert_eq!(incoming.checksum, Some(src));
        assert_eq!(arrived.writes, 0, "its guest state arrives with resume");

        control::command(&target.socket, &Request::Resume)
            .await
            .expect("resume");
        let paused_writes = done.writes;
        let resumed = target
            .until("writing again", |s| s.writes > paused_writes + 20)
            .await;
        assert_eq!(resumed.guest, GuestMode::Running);
        control::command(&target.socket, &Request::Resume)
            .await
            .expect("a second resume is harmless");
        assert_eq!(
            source.status().await.writes,
            paused_writes,
            "the source stays paused"
        );
        assert!(source.log().contains("migrated to"), "{}", source.log());
        assert!(target.log().contains("migrated in"), "{}", target.log());
        assert_eq!(source.stop().await, paused_writes);
        assert!(target.stop().await > paused_writes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_or_failed_move_leaves_the_guest_running_here() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Vm::start(dir.path(), "s", 16, 1 << 20, false);
        let target = Vm::start(dir.path(), "t", 16, 1 << 20, true);
        let addr = target.status().await.incoming.expect("incoming").addr;
        // Nothing listens there: the move fails, the guest runs on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let nowhere = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let migrate = |to: String, cap| Request::Migrate {
            to,
            downtime_limit_ms: 1,
            bandwidth_bytes_per_sec: cap,
            target_node: None,
            revoked_certificates: Vec::new(),
        };
        control::command(&source.socket, &migrate(nowhere, None))
            .await
            .expect("started");
        let failed = source
            .until("failed", |s| out(s).phase == OutPhase::Failed)
            .await;
        assert!(out(&failed)
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot reach")));
        assert_eq!(failed.guest, GuestMode::Running);

        // A slow move (32 KiB/s for 16 MiB) cancelled midway.
        source.until("writing", |s| s.writes > 100).await;
        control::command(&source.socket, &migrate(addr, Some(32 << 10)))
            .await
            .expect("started");
        source.until("sending", |s| out(s).bytes > 8 * 1024).await;
        target
            .until("receiving", |s| {
                s.incoming
                    .as_ref()
                    .is_some_and(|i| i.phase == InPhase::Receiving)
            })
            .await;
        control::command(&source.socket, &Request::Cancel)
            .await
            .expect("cancel");
        let cancelled = source.status().await;
        assert_eq!(out(&cancelled).phase, OutPhase::Cancelled);
        assert_eq!(cancelled.guest, GuestMode::Running);
        let writes = cancelled.writes;
        source.until("writing on", |s| s.writes > writes).await;
        // The target saw the stream cut and waits for another.
        let waiting = target
            .until("waiting again", |s| {
                s.incoming
                    .as_ref()
                    .is_some_and(|i| i.phase == InPhase::Waiting)
            })
            .await;
        assert!(waiting.incoming.and_then(|i| i.error).is_some());
        assert_eq!(waiting.guest, GuestMode::Paused);
        source.stop().await;
        target.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_dirtying_faster_than_the_link_is_throttled_until_it_converges() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 MiB/s of writes into 4 MiB, over a 16 MiB/s link.
        let source = Vm::start(dir.path(), "s", 4, 64 << 20, false);
        let target = Vm::start(dir.path(), "t", 4, 64 << 20, true);
        let addr = target.status().await.incoming.expect("incoming").addr;
        source.until("writing", |s| s.writes > 1000).await;
        let migrate = Request::Migrate {
            to: addr,
            downtime_limit_ms: 20,
            bandwidth_bytes_per_sec: Some(16 << 20),
            target_node: None,
            revoked_certificates: Vec::new(),
        };
        control::command(&source.socket, &migrate)
            .await
            .expect("migrate");
        let mut most = 0;
        let done = source
            .until("converged", |s| {
                most = most.max(out(s).throttle_pct);
                out(s).phase == OutPhase::Completed
            })
            .await;
        let o = out(&done);
        assert!(
            o.throttle_pct >= THROTTLE_INITIAL && most >= THROTTLE_INITIAL,
            "throttled: {o:?}"
        );
        assert!(o.rounds >= 3, "{o:?}");
        assert!(
            source.log().contains("auto-converge throttles it to"),
            "{}",
            source.log()
        );
        let (src, _) = control::checksum(&source.socket).await.expect("checksum");
        let (dst, _) = control::checksum(&target.socket).await.expect("checksum");
        assert_eq!(src, dst);
        // The target runs unthrottled once resumed.
        control::command(&target.socket, &Request::Resume)
            .await
            .expect("resume");
        let t = target.status().await;
        assert_eq!(t.guest, GuestMode::Running);
        assert!(t.outgoing.is_none());
        source.stop().await;
        target.stop().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_tls_only_the_source_node_may_send_and_only_to_the_assigned_target() {
        use super::super::tls::test_certs::Ca;
        use herd_api::tls::PeerRole;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new();
        let node = |name: &str| Some(ca.stream_tls(PeerRole::Node, name));
        let source = Vm::start_tls(dir.path(), "s", 8, 1 << 20, false, node("s1"), None);
        let target = Vm::start_tls(dir.path(), "t", 8, 1 << 20, true, node("t2"), Some("s1"));
        let addr = target.status().await.incoming.expect("incoming").addr;

        // Strangers first: plain TCP, then another node of the CA. Each is
        // refused, named in the log, and the target waits on.
        let mut plain = TcpStream::connect(&addr).await.expect("connect");
        plain
            .write_all(b"HERD pages in the clear")
            .await
            .expect("write");
        let mut rest = Vec::new();
        let _ = plain.read_to_end(&mut rest).await;
        let stranger = ca.stream_tls(PeerRole::Node, "x9");
        let tcp = TcpStream::connect(&addr).await.expect("connect");
        if let Ok((mut stream, _)) = stranger.connect(tcp, Some("t2")).await {
            // TLS 1.3: the target judges the client after the handshake;
            // it closes the connection rather than read pages.
            let _ = stream.write_all(b"pages").await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
        let waiting = target
            .until("both strangers refused", |_| {
                target.log().matches("refused").count() >= 2
            })
            .await;
        let log = target.log();
        assert!(log.contains("TLS handshake failed"), "{log}");
        assert!(
            log.contains(r#"the peer is node "x9" (spiffe://herd/node/x9), not node "s1""#),
            "{log}"
        );
        assert!(
            log.contains(r#"still waiting for node "s1", the source"#),
            "{log}"
        );
        let incoming = waiting.incoming.expect("incoming");
        assert_eq!(
            incoming.phase,
            InPhase::Waiting,
            "a stranger aborts nothing"
        );
        assert!(incoming.error.is_some_and(|e| e.contains("refused")));

        // The source, told the wrong target node: it fails, runs on here.
        source.until("writing", |s| s.writes > 50).await;
        let migrate = |node: &str| Request::Migrate {
            to: addr.clone(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            target_node: Some(node.to_string()),
            revoked_certificates: Vec::new(),
        };
        control::command(&source.socket, &migrate("t3"))
            .await
            .expect("started");
        let failed = source
            .until("failed", |s| out(s).phase == OutPhase::Failed)
            .await;
        let error = out(&failed).error.clone().unwrap_or_default();
        assert!(
            error.contains(r#"the peer is node "t2""#) && error.contains(r#"not node "t3""#),
            "{error}"
        );
        assert_eq!(failed.guest, GuestMode::Running);

        // The right target: the memory moves, over TLS, both sides say so.
        control::command(&source.socket, &migrate("t2"))
            .await
            .expect("started");
        source
            .until("completed", |s| out(s).phase == OutPhase::Completed)
            .await;
        let (src, _) = control::checksum(&source.socket).await.expect("checksum");
        let (dst, _) = control::checksum(&target.socket).await.expect("checksum");
        assert_eq!(src, dst, "the target holds the source's memory");
        assert!(
            source
                .log()
                .contains("migration stream: TLS, to node t2 at"),
            "{}",
            source.log()
        );
        assert!(
            target
                .log()
                .contains("migration stream: TLS, from node s1 at"),
            "{}",
            target.log()
        );
        assert!(!target.log().contains("plain TCP"), "{}", target.log());
        source.stop().await;
        target.stop().await;
    }
}
