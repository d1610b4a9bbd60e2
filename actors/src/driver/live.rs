//! The data of a live move: what a target readied, the limits a move keeps
//! to, and the figures it reports. Drivers whose workloads move live
//! (migration mode `live`: QEMU, the simulated VM) implement
//! [`super::Driver::prepare_incoming`], [`super::Driver::migrate_out`],
//! [`super::Driver::cancel_out`] and [`super::Driver::finish_incoming`]
//! with these types; the agent's migration code drives them without
//! knowing the kind.

use std::collections::BTreeMap;
use std::time::Duration;

/// The environment variable, in the spec a target's agent hands
/// [`super::Driver::prepare_incoming`], naming the node the move comes
/// from (the migration assignment's peer): a target that checks who
/// connects (QEMU's `tls-authz` under TLS) admits that node only.
pub const SOURCE_NODE_ENV: &str = "HERD_MIGRATION_SOURCE_NODE";

/// Where a target readied an incoming live migration: what the source's
/// program connects to. Travels from target to source in
/// `PrepareIncomingReply` (`endpoint`, `endpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingEndpoints {
    /// The main endpoint (QEMU's `-incoming` address, `HOST:PORT`).
    pub main: String,
    /// Further endpoints by name (QEMU's NBD export of the disk: `"nbd"`).
    pub extra: BTreeMap<String, String>,
    /// The node the move goes to, as the source's agent knows it from the
    /// migration assignment (never from the target's answer): a source
    /// that checks whom it connects to under TLS admits that node only.
    /// None where no agent drives the move (a driver used on its own).
    pub target_node: Option<String>,
}

/// What the operator allows a live move (`herd alloc migrate
/// --downtime-limit --bandwidth`), and how long it may take in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveLimits {
    /// The longest pause of the workload the move may cause.
    pub downtime_limit: Duration,
    /// A cap on the bytes per second the move sends; None: no cap.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Past this the move gives up (the phase deadline the leader set).
    pub deadline: Duration,
}

/// How far a live move has come, reported while it runs (the agent turns
/// it into migration progress for the coordinators and `--wait`'s bar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveProgress {
    /// Bytes sent so far.
    pub bytes: u64,
    /// Pre-copy passes so far (QEMU's dirty-sync count).
    pub rounds: u32,
    /// How fast the workload dirties its memory, when known.
    pub dirty_rate_bytes_per_sec: Option<u64>,
    /// Bytes still to send, when known.
    pub remaining_bytes: Option<u64>,
}

/// The figures of a live move whose source's side is done: the source is
/// paused and has sent the whole state (which the target then confirms,
/// [`super::Driver::confirm_incoming`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Bytes sent in all.
    pub bytes: u64,
    /// Pre-copy passes.
    pub rounds: u32,
    /// How long the workload was paused (as the moving program measured it).
    pub downtime_ms: u64,
    /// From the start of the move to its end.
    pub total_ms: u64,
}

/// A sink for [`MoveProgress`] reports; called often, must not block.
pub type ProgressSink<'a> = &'a (dyn Fn(MoveProgress) + Send + Sync);

/// The host a node's incoming live migrations listen on and that the
/// endpoints it returns name: QEMU's migration listener and NBD server, the
/// simulated VM's stream. Other agents connect to it, so it must be an
/// address of this host that they can reach (by default the host part of
/// the agent's `advertise` address; the node setting `migration_host`).
/// Kept without brackets (`::1`, not `[::1]`); [`MigrationHost::with_port`]
/// adds them where an address needs them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MigrationHost(String);

/// Why a text is not a usable [`MigrationHost`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MigrationHostError(String);

/// Longest DNS name a migration host may be.
const MAX_HOST_NAME: usize = 253;
/// Longest label of a DNS name.
const MAX_HOST_LABEL: usize = 63;

impl MigrationHost {
    /// `127.0.0.1`: agents on one host (the default of a driver built
    /// without a node's configuration, as in tests).
    pub fn loopback() -> Self {
        Self(std::net::Ipv4Addr::LOCALHOST.to_string())
    }

    /// Reads a host: an IPv4 address, an IPv6 address (bare or in
    /// brackets) or a DNS name, without a port. The unspecified addresses
    /// (`0.0.0.0`, `::`) are refused: they cannot be published to the
    /// agent that connects.
    pub fn parse(text: &str) -> Result<Self, MigrationHostError> {
        let bad = |why: &str| Err(MigrationHostError(format!("{text:?} {why}")));
        let bare = match text.strip_prefix('[') {
            Some(rest) => match rest.strip_suffix(']') {
                Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner,
                _ => return bad("is not an IPv6 address in brackets"),
            },
            None => text,
        };
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            if ip.is_unspecified() || ip.is_multicast() {
                return bad(
                    "cannot be published to other agents: name an address of this host they reach",
                );
            }
            return Ok(Self(ip.to_string()));
        }
        if text.is_empty() {
            return bad("is empty: name an address or DNS name of this host");
        }
        if text.contains(':') {
            return bad("is not a host: give an IP address or a DNS name, without a port");
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= MAX_HOST_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.len() > MAX_HOST_NAME || !name.split('.').all(label_ok) {
            return bad("is neither an IP address nor a DNS name (letters, digits, '-', '_', '.')");
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The host as a listener binds it and QEMU's `inet` address takes it
    /// (no brackets).
    pub fn host(&self) -> &str {
        &self.0
    }

    /// `HOST:PORT`, an IPv6 host in brackets: what an endpoint says and a
    /// `tcp:` URI or a socket address parse.
    pub fn with_port(&self, port: u16) -> String {
        if self.0.contains(':') {
            format!("[{}]:{port}", self.0)
        } else {
            format!("{}:{port}", self.0)
        }
    }

    /// Checks that a listener can bind this host here (it is an address of
    /// this machine, or a name resolving to one), so that a wrong setting
    /// fails when the agent starts, not at its first incoming migration.
    pub fn check_bindable(&self) -> Result<(), MigrationHostError> {
        std::net::TcpListener::bind((self.0.as_str(), 0))
            .map(drop)
            .map_err(|e| {
                MigrationHostError(format!(
                    "{:?} cannot be listened on here ({e}): name an address of this host",
                    self.0
                ))
            })
    }
}

impl Default for MigrationHost {
    fn default() -> Self {
        Self::loopback()
    }
}

impl std::fmt::Display for MigrationHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_host_is_an_address_or_a_name_without_a_port() {
        for (text, host, endpoint) in [
            ("10.0.0.7", "10.0.0.7", "10.0.0.7:7"),
            ("127.0.0.3", "127.0.0.3", "127.0.0.3:7"),
            ("::1", "::1", "[::1]:7"),
            ("[fe80::1]", "fe80::1", "[fe80::1]:7"),
            ("Node-7.Example", "node-7.example", "node-7.example:7"),
            ("gpu-7.", "gpu-7", "gpu-7:7"),
            ("herd_node_1", "herd_node_1", "herd_node_1:7"),
        ] {
            let parsed = MigrationHost::parse(text).expect(text);
            assert_eq!(parsed.host(), host, "{text}");
            assert_eq!(parsed.with_port(7), endpoint, "{text}");
        }
        for (text, why) in [
            ("", "empty"),
            ("0.0.0.0", "cannot be published"),
            ("::", "cannot be published"),
            ("[::]", "cannot be published"),
            ("224.0.0.1", "cannot be published"),
            ("10.0.0.7:7200", "without a port"),
            ("[10.0.0.7]", "IPv6 address in brackets"),
            ("[::1", "IPv6 address in brackets"),
            ("node 7", "neither"),
            ("-node", "neither"),
            ("a..b", "neither"),
            ("nöde", "neither"),
        ] {
            let err = MigrationHost::parse(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "names the value: {err}");
        }
        assert_eq!(MigrationHost::default().with_port(0), "127.0.0.1:0");
    }

    #[test]
    fn a_migration_host_must_be_an_address_of_this_host() {
        // All of 127.0.0.0/8 is loopback on Linux; 192.0.2.0/24 is
        // documentation space, on no machine.
        MigrationHost::parse("127.0.0.3")
            .expect("valid")
            .check_bindable()
            .expect("loopback binds");
        let err = MigrationHost::parse("192.0.2.1")
            .expect("valid")
            .check_bindable()
            .expect_err("not here");
        assert!(
            err.to_string().contains("cannot be listened on here"),
            "{err}"
        );
    }
}
