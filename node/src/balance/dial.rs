//! FAULT-INJECTION hook for tests and the chaos harness: where this agent
//! dials a peer agent. With `HERD_FAULT_PEER_DIAL=1` in its environment an
//! agent reads `<data_dir>/fault-peer-dial` (re-read whenever it changes),
//! lines of `PEER_ADDR VIA_ADDR`: every agent-to-agent connection it opens
//! to `PEER_ADDR` (balancing gossip, migrations and offline moves) goes to
//! `VIA_ADDR` instead. Pointing `VIA_ADDR` at a fault-injecting proxy per
//! directed link (`herd_chaos::proxy::LinkProxy`) lets a test cut the
//! agent-to-agent network into halves while every process runs on, as
//! `herd coordinator --dial` does for the links between coordinators.
//!
//! Without the variable nothing is read and every address is dialled as
//! advertised. Request migrations (`serve::request_migration`) do not go
//! through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The variable that turns the hook on (`1`).
pub const FAULT_PEER_DIAL_ENV: &str = "HERD_FAULT_PEER_DIAL";

/// The file, in the agent's data dir, that maps peer addresses.
pub const DIAL_FILE: &str = "fault-peer-dial";

/// Longest a change of the file may take to be seen.
const RECHECK_EVERY: Duration = Duration::from_millis(100);

/// A line of the dial file that is not `PEER_ADDR VIA_ADDR`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: expected `PEER_ADDR VIA_ADDR` (two HOST:PORT separated by blanks), found {found:?}")]
pub struct DialFileError {
    /// The file.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// What the line held.
    pub found: String,
}

/// Parses the dial file's text: `#` starts a comment, blank lines are
/// skipped, every other line is `PEER_ADDR VIA_ADDR`.
pub fn parse(file: &Path, text: &str) -> Result<BTreeMap<String, String>, DialFileError> {
    let mut map = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let valid = |a: &str| {
            a.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        match words.as_slice() {
            [peer, via] if valid(peer) && valid(via) => {
                map.insert(peer.to_string(), via.to_string());
            }
            _ => {
                return Err(DialFileError {
                    file: file.display().to_string(),
                    line: index + 1,
                    found: raw.to_string(),
                })
            }
        }
    }
    Ok(map)
}

struct Dialer {
    file: PathBuf,
    checked: Option<Instant>,
    modified: Option<SystemTime>,
    map: BTreeMap<String, String>,
}

impl Dialer {
    fn refresh(&mut self) {
        if self.checked.is_some_and(|at| at.elapsed() < RECHECK_EVERY) {
            return;
        }
        self.checked = Some(Instant::now());
        let modified = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.modified {
            return;
        }
        self.modified = modified;
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), error = %e, "cannot read the peer dial file; keeping the last map");
                return;
            }
        };
        match parse(&self.file, &text) {
            Ok(map) => {
                tracing::info!(file = %self.file.display(), links = map.len(), "peer dial map (FAULT-INJECTION) read");
                self.map = map;
            }
            Err(e) => {
                tracing::error!(error = %e, "bad peer dial file; keeping the last map")
            }
        }
    }
}

static DIALER: OnceLock<Option<Mutex<Dialer>>> = OnceLock::new();

/// Turns the hook on for this process when `HERD_FAULT_PEER_DIAL=1`, with
/// the map read from `data_dir` (called once, by the balancer as it
/// starts; later calls change nothing).
pub fn init(data_dir: &Path) {
    DIALER.get_or_init(|| {
        let on = std::env::var(FAULT_PEER_DIAL_ENV).is_ok_and(|v| v == "1");
        on.then(|| {
            tracing::warn!(
                "{FAULT_PEER_DIAL_ENV} is set: peer agents are dialled through {} (FAULT-INJECTION, for tests only)",
                data_dir.join(DIAL_FILE).display()
            );
            Mutex::new(Dialer {
                file: data_dir.join(DIAL_FILE),
                checked: None,
                modified: None,
                map: BTreeMap::new(),
            })
        })
    });
}

/// Where to dial the peer agent that advertises `addr`: `addr` itself
/// unless the hook is on and its file maps it elsewhere.
pub fn resolve(addr: &str) -> String {
    let Some(Some(dialer)) = DIALER.get() else {
        return addr.to_string();
    };
    let mut dialer = dialer.lock().unwrap_or_else(|p| p.into_inner());
    dialer.refresh();
    dialer
        .map
        .get(addr)
        .cloned()
        .unwrap_or_else(|| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_map_peers_to_where_they_are_dialled() {
        let file = Path::new("/d/fault-peer-dial");
        let map = parse(
            file,
            "# cut test\n127.0.0.1:7001 127.0.0.1:9001\n\n  10.0.0.2:7000\t10.0.0.9:1 # note\n",
        )
        .expect("valid");
        assert_eq!(map.len(), 2);
        assert_eq!(map["127.0.0.1:7001"], "127.0.0.1:9001");
        assert_eq!(map["10.0.0.2:7000"], "10.0.0.9:1");
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_number() {
        let file = Path::new("/d/fault-peer-dial");
        for bad in [
            "127.0.0.1:7001",
            "127.0.0.1:7001 127.0.0.1:9001 x",
            "127.0.0.1 127.0.0.1:9001",
            "127.0.0.1:7001 127.0.0.1:99999",
            ":7001 127.0.0.1:9001",
        ] {
            let err = parse(file, &format!("# ok\n{bad}\n")).expect_err(bad);
            assert_eq!(err.line, 2, "{bad}");
            assert!(err.to_string().contains("/d/fault-peer-dial:2"), "{err}");
        }
    }

    #[test]
    fn without_the_hook_every_address_is_dialled_as_advertised() {
        // No unit test sets HERD_FAULT_PEER_DIAL: the hook stays off.
        init(Path::new("/nonexistent"));
        assert_eq!(resolve("127.0.0.1:7001"), "127.0.0.1:7001");
    }

    #[test]
    fn the_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(DIAL_FILE);
        let mut dialer = Dialer {
            file: file.clone(),
            checked: None,
            modified: None,
            map: BTreeMap::new(),
        };
        dialer.refresh();
        assert!(dialer.map.is_empty(), "no file: no map");
        std::fs::write(&file, "127.0.0.1:7001 127.0.0.1:9001\n").expect("write");
        dialer.checked = None;
        dialer.refresh();
        assert_eq!(dialer.map["127.0.0.1:7001"], "127.0.0.1:9001");
        std::fs::write(&file, "garbage\n").expect("write");
        dialer.checked = None;
        dialer.modified = None;
        dialer.refresh();
        assert_eq!(dialer.map["127.0.0.1:7001"], "127.0.0.1:9001");
        std::fs::write(&file, "").expect("write");
        dialer.checked = None;
        dialer.modified = None;
        dialer.refresh();
        assert!(dialer.map.is_empty(), "an empty file maps nothing");
    }
}
