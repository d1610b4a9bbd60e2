//! Mutual TLS between every herd process (docs/security.md, "Transport").
//!
//! One cluster, one certificate authority. Every process holds a
//! certificate the CA signed for one *role* and one *name*:
//!
//! - `coordinator` NAME: serves the API and Raft; dials other coordinators;
//! - `node` NAME: a node agent; dials coordinators and other agents;
//! - `client` NAME: the CLI, scripts, dashboards' scrapers.
//!
//! The identity travels in the certificate as a SPIFFE-style URI SAN,
//! `spiffe://herd/<role>/<name>` ([`identity`]); the DNS SAN `<role>.herd`
//! is what a dialer checks, whatever address it dialed (Nomad's
//! `server.<region>.nomad` scheme): an agent dialing `10.0.0.7:7400`
//! verifies that the peer holds a `coordinator.herd` certificate of the
//! cluster's CA, so addresses can change without reissuing certificates.
//! A node's certificate also carries `<name>.node.herd`
//! ([`identity::node_dns_name`]): a dialer that wants one node (an agent
//! dialing the target of a move, the CLI dialing an allocation's agent)
//! checks that name ([`node_endpoint`]), so another node's certificate,
//! however valid, does not pass for it.
//!
//! Servers require a client certificate from the same CA (no anonymous
//! TLS). What each role may call is checked on top of that
//! ([`identity::require_role`]); a node agent may only speak for the node
//! its certificate names.
//!
//! A process has one identity, so the transport is installed once per
//! process ([`install`]) and every dial and every server reads it
//! ([`transport`]), the way rustls installs one crypto provider per
//! process: the alternative, threading a TLS handle through every client
//! constructor of every crate, bought nothing, since no process ever needs
//! two identities. A process that installs nothing (tests that run several
//! members in one process, `herd dev`, the deterministic simulation) is
//! plaintext.

pub mod crl;
pub mod current;
pub mod dial;
mod guard;
pub mod identity;
mod material;
pub mod revocation;
mod serve;

use std::sync::{Arc, OnceLock};

pub use dial::Dial;
pub use guard::{roles_only, PeerRoles, RolesOnly};
pub use identity::{require_node, require_role, PeerIdentity, PeerRole, TlsIdentityError};
pub use material::{Reloaded, TlsError, TlsFiles, TlsMaterial};

use tonic::transport::Endpoint;

use identity::node_dns_name;

/// How this process talks to the others.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    /// No encryption, no peer authentication: only with `--insecure`, or in
    /// a process that runs a whole cluster (`herd dev`, tests).
    #[default]
    Plaintext,
    /// Mutual TLS with this process's certificate.
    Tls(Arc<TlsMaterial>),
}

static TRANSPORT: OnceLock<Transport> = OnceLock::new();

/// The transport was already installed: a process has one identity.
#[derive(Debug, thiserror::Error)]
#[error("the process's transport (TLS or plaintext) is already set")]
pub struct AlreadyInstalled;

/// Sets this process's transport, once, before any server starts or any
/// channel is made.
pub fn install(transport: Transport) -> Result<(), AlreadyInstalled> {
    TRANSPORT.set(transport).map_err(|_| AlreadyInstalled)
}

/// This process's transport: plaintext unless [`install`] set TLS.
pub fn transport() -> &'static Transport {
    static PLAINTEXT: Transport = Transport::Plaintext;
    TRANSPORT.get().unwrap_or(&PLAINTEXT)
}

/// Whether this process speaks mutual TLS.
pub fn enabled() -> bool {
    matches!(transport(), Transport::Tls(_))
}

impl Transport {
    /// A dial of `addr` (`HOST:PORT`), a peer expected to hold a
    /// certificate of role `peer`: under TLS with this process's
    /// certificate, the peer's checked for `<role>.herd` (not the dialed
    /// address) and against the revocations ([`dial`]); plaintext
    /// otherwise.
    pub fn endpoint(&self, addr: &str, peer: PeerRole) -> Result<Dial, String> {
        match self {
            Transport::Plaintext => Endpoint::from_shared(format!("http://{addr}"))
                .map(Dial::plain)
                .map_err(|e| e.to_string()),
            Transport::Tls(material) => Dial::tls(addr, material, peer.dns_name()),
        }
    }

    /// A dial of `addr` (`HOST:PORT`), the agent of node `node` and of no
    /// other: under TLS its certificate must carry `<node>.node.herd`
    /// ([`node_dns_name`], refused for a name that cannot be a DNS name:
    /// no such node holds a certificate), not merely `node.herd`.
    pub fn node_endpoint(&self, addr: &str, node: &str) -> Result<Dial, String> {
        match self {
            Transport::Plaintext => self.endpoint(addr, PeerRole::Node),
            Transport::Tls(material) => {
                let name =
                    node_dns_name(node).map_err(|e| format!("TLS settings for {addr}: {e}"))?;
                Dial::tls(addr, material, name)
            }
        }
    }

    /// The rustls settings a server accepts with under TLS (this process's
    /// current certificate, a certificate of the cluster's CA asked of
    /// every client: [`serve`]); None when plaintext. Servers hand them to
    /// `herd_metrics::accept::handshaken` rather than to tonic, so that a
    /// reloaded certificate reaches new connections.
    pub fn server_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        match self {
            Transport::Plaintext => None,
            Transport::Tls(material) => Some(material.server_config()),
        }
    }
}

/// [`Transport::endpoint`] on this process's transport.
pub fn endpoint(addr: &str, peer: PeerRole) -> Result<Dial, String> {
    transport().endpoint(addr, peer)
}

/// [`Transport::node_endpoint`] on this process's transport: dial the
/// agent of node `node` at `addr`, checking under TLS that it is that node.
pub fn node_endpoint(addr: &str, node: &str) -> Result<Dial, String> {
    transport().node_endpoint(addr, node)
}

/// The settings this process's servers accept TLS with, if it speaks TLS
/// ([`Transport::server_tls`]).
pub fn server_tls() -> Option<Arc<rustls::ServerConfig>> {
    transport().server_tls()
}

/// The cryptography of every TLS connection herd makes or accepts: ring,
/// as tonic's `tls-ring` feature uses (no aws-lc in the build).
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    // Deprecated for lacking post-quantum key exchange, which ring does not
    // offer; the aws-lc provider that does is not in the build.
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}
