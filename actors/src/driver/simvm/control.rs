//! The control channel of a SIMULATED VM: a unix socket in its allocation
//! directory ([`CONTROL_SOCKET`]) speaking JSON lines, one request and one
//! reply a line. It is what QMP is to a QEMU: the `simvm` driver asks the
//! `herd sim-vm` process for its state, has it send its memory to a target
//! (a live migration), cancels that, and lets a migrated guest run.
//!
//! A unix socket, not a TCP port, so that only who may enter the
//! allocation directory (the agent) can steer the VM. Requests are bounded
//! ([`MAX_LINE`]) and checked before anything is done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The socket's name in the allocation directory.
pub const CONTROL_SOCKET: &str = "simvm.sock";
/// Longest unix socket path the kernel accepts (sun_path, less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// The longest request or reply line, bytes: a `migrate` carries the
/// cluster's revoked fingerprints (67 bytes each in JSON), so room for
/// about 15,000 of them.
pub const MAX_LINE: u64 = 1024 * 1024;
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the driver asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The VM's state and its migrations' progress.
    Status,
    /// The CRC-32C of its memory now (stable while the guest is paused).
    Checksum,
    /// Start sending its memory to the incoming VM listening at `to`
    /// (`HOST:PORT`): pre-copy rounds, then stop-and-copy.
    Migrate {
        /// The target's migration address.
        to: String,
        /// The longest pause the move may cause, ms.
        downtime_limit_ms: u64,
        /// A cap on the bytes per second sent; None: no cap.
        #[serde(default)]
        bandwidth_bytes_per_sec: Option<u64>,
        /// The node the move goes to, as the source's agent knows it: under
        /// TLS the target's certificate must name it (`spiffe://herd/node/
        /// NAME`); None: any node of the cluster. Left out of the JSON when
        /// None, so a plaintext request reads as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_node: Option<String>,
        /// Under TLS, the fingerprints of the certificates the cluster
        /// revoked, as the source's agent knows them now: the target may
        /// not present one. Left out of the JSON when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        revoked_certificates: Vec<String>,
    },
    /// Abandon the outgoing migration (in flight or done): the guest runs
    /// on here, unthrottled.
    Cancel,
    /// Let a guest whose memory arrived run (an incoming migration's end).
    Resume,
}

/// Where the guest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMode {
    /// Writing its memory.
    Running,
    /// Frozen by a migration (a source that handed over or is in its last
    /// pass, a target that has not been resumed).
    Paused,
}

/// The phase of an outgoing migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutPhase {
    /// Sending pages while the guest runs.
    PreCopy,
    /// The guest paused, the rest being sent.
    StopAndCopy,
    /// The target holds the whole memory; the guest stays paused here.
    Completed,
    /// Gave up (see `error`); the guest runs on here.
    Failed,
    /// Cancelled; the guest runs on here.
    Cancelled,
}

/// The phase of an incoming migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InPhase {
    /// Listening; nothing (or only a cut stream) arrived.
    Waiting,
    /// A stream is arriving.
    Receiving,
    /// The whole memory arrived and matches the source's checksum; the
    /// guest waits, paused, for `resume`.
    Received,
    /// Resumed: the guest runs here.
    Resumed,
}

/// An outgoing migration's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Where it sends.
    pub to: String,
    /// Its phase.
    pub phase: OutPhase,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Pre-copy rounds begun so far.
    pub rounds: u32,
    /// Pages still to send in this round plus those dirtied since.
    pub remaining_pages: u64,
    /// How fast the guest dirtied pages in the last round, bytes/s.
    pub dirty_rate_bytes_per_sec: u64,
    /// The bandwidth measured so far, bytes/s.
    pub bandwidth_bytes_per_sec: u64,
    /// How much auto-converge slows the guest, percent (0: not at all).
    pub throttle_pct: u8,
    /// How long the guest was paused, ms (once completed).
    pub downtime_ms: u64,
    /// From the start to the end of the move, ms (once completed).
    pub total_ms: u64,
    /// The memory checksum at the pause point (once completed).
    pub checksum: Option<u32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// An incoming migration's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Where it listens for the stream (`127.0.0.1:PORT`).
    pub addr: String,
    /// Its phase.
    pub phase: InPhase,
    /// Bytes received by the current (or last) stream.
    pub bytes: u64,
    /// Rounds the current (or last) stream ended.
    pub rounds: u32,
    /// The memory checksum once received (equal to the source's).
    pub checksum: Option<u32>,
    /// Why the last stream was refused or cut, if it was.
    pub error: Option<String>,
}

/// The VM's state, as `status` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The `herd sim-vm` process.
    pub pid: u32,
    /// Running or paused.
    pub guest: GuestMode,
    /// Pages of memory.
    pub pages: u64,
    /// Page writes so far (the guest's progress).
    pub writes: u64,
    /// The configured dirty rate, bytes/s (before any throttling).
    pub dirty_rate_bytes_per_sec: u64,
    /// The outgoing migration, if one was asked for.
    pub outgoing: Option<Outgoing>,
    /// The incoming migration, if this VM was started to receive one.
    pub incoming: Option<Incoming>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// The state.
    Status(Status),
    /// The memory checksum and whether the guest was paused (stable).
    Checksum {
        /// CRC-32C of the memory.
        checksum: u32,
        /// Whether the guest was paused when it was taken.
        paused: bool,
    },
    /// Refused or failed, and why.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Why talking to a simulated VM failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No connection, a cut one, or a timeout.
    #[error("the simulated VM's control socket {path}: {message}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// It answered something that is not a reply.
    #[error("the simulated VM's control socket {path} answered {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// It refused the request.
    #[error("the simulated VM refused: {0}")]
    Refused(String),
}

/// Sends one request on a connection of its own and reads the reply; a
/// refusal comes back as [`ControlError::Refused`].
pub async fn request(socket: &Path, request: &Request) -> Result<Reply, ControlError> {
    let io = |e: String| ControlError::Io {
        path: socket.to_path_buf(),
        message: e,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut line = serde_json::to_vec(request).map_err(|e| io(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut reader = BufReader::new(stream).take(MAX_LINE);
        let mut reply = String::new();
        reader
            .read_line(&mut reply)
            .await
            .map_err(|e| io(e.to_string()))?;
        Ok::<_, ControlError>(reply)
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| io(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
    let protocol = |message: String| ControlError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    if !reply.ends_with('\n') {
        return Err(protocol(format!(
            "no complete line (cut, or over {MAX_LINE} bytes)"
        )));
    }
    match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Error { message }) => Err(ControlError::Refused(message)),
        Ok(reply) => Ok(reply),
        Err(e) => Err(protocol(format!("{reply:?}: {e}"))),
    }
}

/// The VM's state.
pub async fn status(socket: &Path) -> Result<Status, ControlError> {
    match request(socket, &Request::Status).await? {
        Reply::Status(status) => Ok(status),
        other => Err(unexpected(socket, &other)),
    }
}

/// The VM's memory checksum, and whether it was paused.
pub async fn checksum(socket: &Path) -> Result<(u32, bool), ControlError> {
    match request(socket, &Request::Checksum).await? {
        Reply::Checksum { checksum, paused } => Ok((checksum, paused)),
        other => Err(unexpected(socket, &other)),
    }
}

/// Sends a request that answers `ok`.
pub async fn command(socket: &Path, req: &Request) -> Result<(), ControlError> {
    match request(socket, req).await? {
        Reply::Ok => Ok(()),
        other => Err(unexpected(socket, &other)),
    }
}

fn unexpected(socket: &Path, reply: &Reply) -> ControlError {
    ControlError::Protocol {
        path: socket.to_path_buf(),
        message: format!("an unexpected reply {reply:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_stable_json() {
        let migrate = Request::Migrate {
            to: "127.0.0.1:4000".into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            target_node: None,
            revoked_certificates: Vec::new(),
        };
        let text = serde_json::to_string(&migrate).expect("json");
        assert_eq!(
            text,
            r#"{"op":"migrate","to":"127.0.0.1:4000","downtime_limit_ms":300,"bandwidth_bytes_per_sec":null}"#
        );
        let to_node = Request::Migrate {
            to: "127.0.0.1:4000".into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            target_node: Some("t2".into()),
            revoked_certificates: Vec::new(),
        };
        let text = serde_json::to_string(&to_node).expect("json");
        assert!(text.ends_with(r#","target_node":"t2"}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<Request>(&text).expect("round trip"),
            to_node
        );
        let parsed: Request =
            serde_json::from_str(r#"{"op":"migrate","to":"x:1","downtime_limit_ms":5}"#)
                .expect("cap optional");
        assert!(matches!(
            parsed,
            Request::Migrate {
                bandwidth_bytes_per_sec: None,
                ..
            }
        ));
        assert_eq!(
            serde_json::to_string(&Request::Cancel).expect("json"),
            r#"{"op":"cancel"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        let reply = Reply::Checksum {
            checksum: 5,
            paused: true,
        };
        let text = serde_json::to_string(&reply).expect("json");
        assert_eq!(text, r#"{"reply":"checksum","checksum":5,"paused":true}"#);
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join(CONTROL_SOCKET);
        let err = status(&socket).await.expect_err("nothing listens");
        assert!(err.to_string().contains("simvm.sock"), "{err}");
    }
}
