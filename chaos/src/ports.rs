//! Free loopback ports for test clusters.

use std::net::TcpListener;

/// A loopback port that was free a moment ago (the OS picks it).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
