//! Who is on the other end of a TLS connection: the role and name the
//! cluster's CA wrote into the peer's certificate.
//!
//! The identity is the URI SAN `spiffe://herd/<role>/<name>` (SPIFFE's
//! shape, so that operators who already run a SPIFFE-aware CA can issue
//! herd certificates with it). The chain was verified by rustls against
//! the cluster's CA before any request is read, so what the certificate
//! says can be trusted; this module only reads it.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// The trust domain of herd's SPIFFE-style identities.
pub const TRUST_DOMAIN: &str = "herd";

/// What a certificate allows its holder to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// A Raft member serving the API.
    Coordinator,
    /// A node agent.
    Node,
    /// A user's or a program's client (the CLI).
    Client,
}

impl PeerRole {
    /// Every role, for help texts and tables.
    pub const ALL: [PeerRole; 3] = [PeerRole::Coordinator, PeerRole::Node, PeerRole::Client];

    /// The word used on the command line and in the identity URI.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Coordinator => "coordinator",
            PeerRole::Node => "node",
            PeerRole::Client => "client",
        }
    }

    /// The role named `word`, if any.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == word)
    }

    /// The DNS name every certificate of this role carries, and that a
    /// dialer checks when any holder of the role will do:
    /// `coordinator.herd`, `node.herd`, `client.herd`.
    pub fn dns_name(self) -> String {
        format!("{}.{TRUST_DOMAIN}", self.as_str())
    }
}

/// The DNS name node `name`'s certificate carries besides `node.herd`,
/// `<name>.node.herd`, which a dialer of that one node checks (an agent
/// dialing the target of a move, QEMU's `tls-hostname`): `node.herd` alone
/// would admit any node of the cluster.
///
/// Refused when `name` does not make a DNS name that rustls (and GnuTLS,
/// for QEMU) accept: node names allow `.` and `-` anywhere, DNS labels do
/// not (`a..b`, `.a`, `-a`, `a-.b`). Such a node cannot hold a certificate
/// (`herd tls cert create` refuses it) and so cannot run under TLS; it
/// may run plaintext. No fallback to `node.herd`: a dialer that falls back
/// would again admit any node.
pub fn node_dns_name(name: &str) -> Result<String, TlsIdentityError> {
    let refuse = |reason: &'static str| TlsIdentityError::NotDnsName {
        name: name.to_string(),
        reason,
    };
    if !valid_name(name) {
        return Err(refuse(
            "not a node name: 1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(refuse("a '.' at an end or two in a row"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse("a part between dots starts or ends with '-'"));
        }
    }
    Ok(format!("{name}.{}", PeerRole::Node.dns_name()))
}

impl PeerIdentity {
    /// The DNS name that names this holder alone, as a dialer of exactly
    /// this peer checks it: `<name>.node.herd` for a node ([`node_dns_name`]);
    /// None for coordinators and clients, whose dialers accept any holder
    /// of the role.
    pub fn own_dns_name(&self) -> Option<Result<String, TlsIdentityError>> {
        (self.role == PeerRole::Node).then(|| node_dns_name(&self.name))
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role and name of a certificate's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// What the holder may act as.
    pub role: PeerRole,
    /// Which coordinator, node or client it is.
    pub name: String,
}

impl PeerIdentity {
    /// The URI SAN that carries this identity.
    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}/{}", self.role, self.name)
    }

    /// The identity in `uri`, if it is a herd identity.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let rest = rest.strip_prefix(TRUST_DOMAIN)?.strip_prefix('/')?;
        let (role, name) = rest.split_once('/')?;
        let role = PeerRole::parse(role)?;
        valid_name(name).then(|| Self {
            role,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// Whether `name` may be a certificate's name: what herd accepts as node
/// and member names (letters, digits, `-`, `_`, `.`; 1 to 63 bytes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a certificate does not give a usable identity.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TlsIdentityError {
    /// Not DER X.509.
    #[error("not an X.509 certificate: {0}")]
    Malformed(String),
    /// No `spiffe://herd/<role>/<name>` URI SAN.
    #[error("names no herd identity (a URI SAN spiffe://herd/<role>/<name>; make certificates with `herd tls cert create`)")]
    NoIdentity,
    /// More than one herd identity: ambiguous, refused.
    #[error("names more than one herd identity")]
    Ambiguous,
    /// Outside its validity period.
    #[error("is not valid now (valid from {not_before} to {not_after}, Unix seconds)")]
    NotValidNow {
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
    },
    /// A node name that cannot be made into its certificate's DNS name.
    #[error("node name {name:?} cannot be a DNS name ({reason}); a node's certificate carries <name>.node.herd, so a node under TLS needs a name of DNS labels: letters, digits, '-' and '_' between single dots, no part starting or ending with '-'")]
    NotDnsName {
        /// The node name.
        name: String,
        /// What about it is not DNS.
        reason: &'static str,
    },
    /// A node certificate without its own DNS name, `<name>.node.herd`
    /// (made before herd checked it): dialers of that node would refuse it.
    #[error("lacks the DNS name {want} of node {name:?} (it was made before herd checked the exact node a connection reaches); re-issue it with `herd tls cert create --for node {name}` (or `herd tls quickstart --node {name}`, which re-issues it) and restart the agent with it")]
    MissingNodeDnsName {
        /// The node the certificate is for.
        name: String,
        /// The DNS name it should carry.
        want: String,
    },
    /// A certificate of another role than the process's.
    #[error("is a {have} certificate; this process needs a {want} certificate")]
    WrongRole {
        /// The role the process runs as.
        want: PeerRole,
        /// The role the certificate names.
        have: PeerRole,
    },
}

/// The DER certificate `der`, parsed.
fn x509(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, TlsIdentityError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsIdentityError::Malformed(e.to_string()))
}

/// The herd identity the DER certificate `der` names, whatever its
/// validity (an expired certificate may still be revoked).
pub fn certificate_identity(der: &[u8]) -> Result<PeerIdentity, TlsIdentityError> {
    let cert = x509(der)?;
    identity_of(&cert)
}

/// When the DER certificate `der` expires (its `notAfter`, Unix seconds).
pub fn not_after(der: &[u8]) -> Result<i64, TlsIdentityError> {
    let cert = x509(der)?;
    Ok(cert.validity().not_after.timestamp())
}

/// The herd identity in the DER certificate `der`, checked to be valid at
/// `now` (Unix seconds).
pub fn parse_certificate(der: &[u8], now: i64) -> Result<PeerIdentity, TlsIdentityError> {
    let cert = x509(der)?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < not_before || now > not_after {
        return Err(TlsIdentityError::NotValidNow {
            not_before,
            not_after,
        });
    }
    identity_of(&cert)
}

/// The herd identity named in `cert`'s SANs.
fn identity_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<PeerIdentity, TlsIdentityError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsIdentityError::Malformed(e.to_string()))?;
    let mut found = None;
    for name in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(identity) = PeerIdentity::from_uri(uri) {
                if found.is_some() {
                    return Err(TlsIdentityError::Ambiguous);
                }
                found = Some(identity);
            }
        }
    }
    found.ok_or(TlsIdentityError::NoIdentity)
}

/// The DER bytes of the first certificate in the PEM text `pem`, if any:
/// for tools that check a certificate file (`herd tls quickstart`).
pub fn first_pem_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map_while(Result::ok)
        .find(|block| block.label == "CERTIFICATE")
        .map(|block| block.contents)
}

/// The DNS names (SAN `dNSName` entries) of the DER certificate `der`.
pub fn certificate_dns_names(der: &[u8]) -> Result<Vec<String>, TlsIdentityError> {
    let cert = x509(der)?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsIdentityError::Malformed(e.to_string()))?;
    Ok(sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect())
}

/// The IP addresses (SAN `iPAddress` entries) of the DER certificate
/// `der`: what `herd tls cert create --ip` put there, which a renewal
/// keeps.
pub fn certificate_ip_addresses(der: &[u8]) -> Result<Vec<std::net::IpAddr>, TlsIdentityError> {
    let cert = x509(der)?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsIdentityError::Malformed(e.to_string()))?;
    sans.iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::IPAddress(bytes) => Some(*bytes),
            _ => None,
        })
        .map(|bytes| match bytes.len() {
            4 => Ok(std::net::IpAddr::from(
                <[u8; 4]>::try_from(bytes).unwrap_or_default(),
            )),
            16 => Ok(std::net::IpAddr::from(
                <[u8; 16]>::try_from(bytes).unwrap_or_default(),
            )),
            n => Err(TlsIdentityError::Malformed(format!(
                "an IP address SAN of {n} bytes (4 or 16 expected)"
            ))),
        })
        .collect()
}

/// Refuses a node certificate `der` of `identity` that lacks its own DNS
/// name ([`node_dns_name`]): every dialer of that node would refuse it at
/// the handshake, so an agent holding it is stopped at start with what to
/// do instead. Coordinators' and clients' certificates pass.
pub fn check_own_dns_name(der: &[u8], identity: &PeerIdentity) -> Result<(), TlsIdentityError> {
    let Some(want) = identity.own_dns_name().transpose()? else {
        return Ok(());
    };
    // DNS names compare without regard to case, as rustls compares them.
    if certificate_dns_names(der)?
        .iter()
        .any(|have| have.eq_ignore_ascii_case(&want))
    {
        Ok(())
    } else {
        Err(TlsIdentityError::MissingNodeDnsName {
            name: identity.name.clone(),
            want,
        })
    }
}

/// Whether the DER certificate `der` is a CA certificate (basic
/// constraints `CA:TRUE`).
pub fn is_ca_certificate(der: &[u8]) -> Result<bool, TlsIdentityError> {
    let cert = x509(der)?;
    Ok(cert.is_ca())
}

/// The identity of the peer of a request, from the certificate it showed
/// during the handshake. None on a plaintext connection.
pub fn peer_identity(extensions: &http::Extensions) -> Option<PeerIdentity> {
    let certs: Arc<Vec<_>> = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())?;
    let leaf = certs.first()?;
    // The chain was verified at the handshake, validity included; read the
    // identity only.
    certificate_identity(leaf.as_ref()).ok()
}

/// Refuses a request whose peer does not hold a certificate of one of
/// `allowed` roles, when this process speaks TLS (plaintext processes have
/// no peer identities: `--insecure` means exactly that). Returns the
/// peer's identity under TLS, None in plaintext.
pub fn require_role(
    extensions: &http::Extensions,
    allowed: &[PeerRole],
    what: &str,
) -> Result<Option<PeerIdentity>, Status> {
    if !super::enabled() {
        return Ok(None);
    }
    let Some(identity) = peer_identity(extensions) else {
        return Err(Status::unauthenticated(format!(
            "{what}: the connection shows no herd certificate"
        )));
    };
    if allowed.contains(&identity.role) {
        Ok(Some(identity))
    } else {
        let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(Status::permission_denied(format!(
            "{what}: needs a {} certificate, the caller holds {identity}",
            allowed.join(" or ")
        )))
    }
}

/// Refuses a node agent's call that speaks for `node` unless its
/// certificate names that node (under TLS; nothing to check in plaintext).
/// An agent may only report for its own node.
pub fn require_node(extensions: &http::Extensions, node: &str, what: &str) -> Result<(), Status> {
    match require_role(extensions, &[PeerRole::Node], what)? {
        Some(identity) if identity.name != node => Err(Status::permission_denied(format!(
            "{what}: the caller's certificate is for node {:?}, not {node:?}",
            identity.name
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for role in PeerRole::ALL {
            let identity = PeerIdentity {
                role,
                name: "gpu-07.rack_2".into(),
            };
            assert_eq!(PeerIdentity::from_uri(&identity.uri()), Some(identity));
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_not_identities() {
        for uri in [
            "spiffe://other/node/n1",
            "spiffe://herd/admin/n1",
            "spiffe://herd/node/",
            "spiffe://herd/node/a/b",
            "spiffe://herd/node/n 1",
            "https://herd/node/n1",
            "spiffe://herdx/node/n1",
        ] {
            assert_eq!(PeerIdentity::from_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn a_node_name_gives_its_dns_name_or_a_clear_refusal() {
        for (name, want) in [
            ("t1", "t1.node.herd"),
            ("gpu-07.rack_2", "gpu-07.rack_2.node.herd"),
            ("10.0.0.7", "10.0.0.7.node.herd"),
        ] {
            assert_eq!(node_dns_name(name).as_deref(), Ok(want));
        }
        for name in ["a..b", ".a", "a.", "-a", "a-", "a.-b", "a/b", ""] {
            let error = node_dns_name(name).expect_err(name).to_string();
            assert!(error.contains(&format!("{name:?}")), "{error}");
            assert!(error.contains("DNS"), "{error}");
        }
        let node = PeerIdentity {
            role: PeerRole::Node,
            name: "n1".into(),
        };
        assert_eq!(node.own_dns_name(), Some(Ok("n1.node.herd".into())));
        let client = PeerIdentity {
            role: PeerRole::Client,
            name: "n1".into(),
        };
        assert_eq!(client.own_dns_name(), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            parse_certificate(b"not der", 0),
            Err(TlsIdentityError::Malformed(_))
        ));
    }

    #[test]
    fn a_plaintext_process_checks_no_roles() {
        // No transport installed in unit tests: plaintext.
        let extensions = http::Extensions::new();
        assert!(matches!(
            require_role(&extensions, &[PeerRole::Coordinator], "Vote"),
            Ok(None)
        ));
        assert!(require_node(&extensions, "n1", "Heartbeat").is_ok());
    }
}
