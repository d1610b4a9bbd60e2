//! Free loopback ports for test clusters.
//!
//! A port is picked now and bound later by another process (a member given
//! `--listen`). A port the OS hands out for `bind(0)` comes from its
//! ephemeral range, where every outgoing connection on the machine also
//! takes its local port: between the pick and the member's bind, a client
//! connection may take it, the member fails to bind and the cluster never
//! forms. So ports are drawn from below the ephemeral range, which the OS
//! never hands out on its own, and checked free by binding them.
//!
//! Two test processes may still draw the same free port a moment apart,
//! both before either daemon binds it (the test suite runs many at once):
//! one member then fails to start. So each draw is also *claimed*: a file
//! named after the port, made with `O_EXCL` in a directory every process
//! shares ([`claims_dir`]); a port claimed in the last [`CLAIM_TTL`] is not
//! drawn again, by this process or another. After that the daemon holds it
//! (the bind check refuses it) or it is free again.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herd_api::rng::SplitMix64;

/// The lowest port drawn: above the well-known and most registered ones.
const FLOOR: u16 = 10_000;
/// Draws tried before falling back to the OS's choice.
const DRAWS: usize = 64;
/// How long a claimed port is kept from other draws: far longer than any
/// daemon takes to bind the port it was given.
pub const CLAIM_TTL: Duration = Duration::from_secs(120);

/// Where claims are kept: one directory for every process of the machine.
fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("herd-test-ports")
}

/// Claims `port` for [`CLAIM_TTL`]; false when another draw claimed it
/// within that time. Where claims cannot be written at all, every port
/// counts as claimed by this draw (the bind check still applies).
fn claim(port: u16) -> bool {
    let dir = claims_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
    };
    match create() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let stale = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > CLAIM_TTL);
            // A stale claim is replaced; of two draws replacing it at once,
            // one creates the new claim.
            stale && std::fs::remove_file(&path).is_ok() && create().is_ok()
        }
        Err(_) => true,
    }
}

/// A loopback port that was free a moment ago, outside the OS's ephemeral
/// range where it can (see the module documentation).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let ceiling = ephemeral_low().unwrap_or(32_768);
    if ceiling > FLOOR + 1_000 {
        let mut rng = SplitMix64::new(seed());
        for _ in 0..DRAWS {
            let port = FLOOR + rng.below(u64::from(ceiling - FLOOR)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (Linux), if readable.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Different for every call, in this process and across processes.
fn seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ CALLS.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_free_and_below_the_ephemeral_range() {
        let low = ephemeral_low().unwrap_or(32_768);
        for _ in 0..20 {
            let port = free_loopback_port().expect("a port");
            if low > FLOOR + 1_000 {
                assert!((FLOOR..low).contains(&port), "{port} not in {FLOOR}..{low}");
            }
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }

    #[test]
    fn a_claimed_port_is_not_claimed_again() {
        // A port no draw picks (below the floor), claimed afresh.
        let port = FLOOR - 1 - (std::process::id() % 1_000) as u16;
        let _ = std::fs::remove_file(claims_dir().join(port.to_string()));
        assert!(claim(port), "a fresh claim");
        assert!(
            !claim(port),
            "claimed a moment ago, here or by another process"
        );
        std::fs::remove_file(claims_dir().join(port.to_string())).expect("remove the claim");
        assert!(claim(port), "free to claim once its claim is gone");
        std::fs::remove_file(claims_dir().join(port.to_string())).expect("tidy up");
    }

    #[test]
    fn consecutive_draws_never_repeat_a_port() {
        let drawn: std::collections::BTreeSet<u16> = (0..50)
            .map(|_| free_loopback_port().expect("a port"))
            .collect();
        assert_eq!(drawn.len(), 50);
    }
}
