//! Free loopback ports for test clusters.
//!
//! A port is picked now and bound later by another process (a member given
//! `--listen`). A port the OS hands out for `bind(0)` comes from its
//! ephemeral range, where every outgoing connection on the machine also
//! takes its local port: between the pick and the member's bind, a client
//! connection may take it, the member fails to bind and the cluster never
//! forms. So ports are drawn from below the ephemeral range, which the OS
//! never hands out on its own, and checked free by binding them.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_api::rng::SplitMix64;

/// The lowest port drawn: above the well-known and most registered ones.
const FLOOR: u16 = 10_000;
/// Draws tried before falling back to the OS's choice.
const DRAWS: usize = 64;

/// A loopback port that was free a moment ago, outside the OS's ephemeral
/// range where it can (see the module documentation).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let ceiling = ephemeral_low().unwrap_or(32_768);
    if ceiling > FLOOR + 1_000 {
        let mut rng = SplitMix64::new(seed());
        for _ in 0..DRAWS {
            let port = FLOOR + rng.below(u64::from(ceiling - FLOOR)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
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
}
