//! `herd tls ca create`, `herd tls cert create` and `herd tls cert renew`:
//! a cluster CA and the certificates of its coordinators, node agents and
//! clients, for the quick start and for small clusters (docs/security.md,
//! "Transport").
//!
//! Operators with their own PKI need none of this: any CA will do whose
//! certificates carry the identity URI `spiffe://herd/<role>/<name>`, the
//! DNS name `<role>.herd` (and for a node also `<name>.node.herd`, which a
//! dialer of that one node checks), and the key usages below.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use herd_api::tls::identity::{
    certificate_dns_names, certificate_identity, certificate_ip_addresses, check_own_dns_name,
    first_pem_certificate, node_dns_name, valid_name,
};
use herd_api::tls::{PeerIdentity, PeerRole};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::exit::CliError;

/// The CA's certificate and key, as `herd tls ca create` names them.
const CA_CERT_FILE: &str = "herd-ca.pem";
const CA_KEY_FILE: &str = "herd-ca-key.pem";

/// Longest validity accepted, in days (ten years).
const MAX_DAYS: u32 = 3650;

/// Subcommands of `herd tls`.
#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Create and manage the cluster's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create certificates signed by the CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Make whatever is missing in --dir: the CA, then a certificate for each
    /// name given. Safe to run again (a container's init step, say): what
    /// exists is kept, except a node certificate that lacks its DNS name
    /// NAME.node.herd (made by an older herd), which is re-issued.
    Quickstart {
        /// Where the CA and the certificates are.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A coordinator's name (repeatable).
        #[arg(long = "coordinator", value_name = "NAME")]
        coordinators: Vec<String>,
        /// A node agent's name, its --name (repeatable).
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
        /// A client's name (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Validity of new certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Subcommands of `herd tls ca`.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Write a new CA: herd-ca.pem and herd-ca-key.pem (mode 0600) in --dir.
    /// Never overwrites: a new CA invalidates every certificate of the old.
    Create {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity in days (at most 3650).
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

/// Subcommands of `herd tls cert`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Write a certificate and key for one coordinator, node or client:
    /// herd-<role>-<name>.pem and herd-<role>-<name>-key.pem (0600).
    Create {
        /// coordinator, node or client.
        #[arg(long = "for", value_name = "ROLE")]
        role: String,
        /// The member, node or client name (a node's certificate must carry
        /// the node's --name: an agent may only speak for its own node).
        name: String,
        /// The CA's certificate.
        #[arg(long, default_value = CA_CERT_FILE)]
        ca: PathBuf,
        /// The CA's private key.
        #[arg(long, default_value = CA_KEY_FILE)]
        ca_key: PathBuf,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity in days (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Extra DNS names (for tools that check the dialed host name).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Extra IP addresses, likewise.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
    /// Renew a certificate in place: a new key and a certificate of the
    /// same identity and names, signed by the CA, each written over the
    /// old file whole (by rename, keeping its owner and mode). A running
    /// coordinator or agent using them presents the new one within 10 s,
    /// or at once on SIGHUP.
    Renew {
        /// The certificate to renew (PEM), e.g. /etc/herd/tls/coordinator.pem.
        file: PathBuf,
        /// Its key (default: FILE with `-key` before `.pem`, as `cert
        /// create` and the deploy files name it).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The CA's certificate.
        #[arg(long, default_value = CA_CERT_FILE)]
        ca: PathBuf,
        /// The CA's private key.
        #[arg(long, default_value = CA_KEY_FILE)]
        ca_key: PathBuf,
        /// Validity of the new certificate in days (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Make the cluster refuse a certificate from now on (operator role):
    /// coordinators at once, agents within seconds, also while the
    /// coordinators are away afterwards. For a lost or stolen key, or a
    /// node taken out of service; cannot be undone (issue a new one).
    Revoke {
        /// The certificate (PEM), e.g. herd-node-h2.pem.
        #[arg(
            required_unless_present = "fingerprint",
            conflicts_with = "fingerprint"
        )]
        file: Option<PathBuf>,
        /// Its SHA-256 fingerprint instead (64 hex digits, colons allowed:
        /// `openssl x509 -noout -fingerprint -sha256`).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Why, for the record (default: the identity it names).
        #[arg(long)]
        note: Option<String>,
        /// The CA's private key: also sign a revocation list naming the
        /// certificate, which the QEMUs of moving VMs check (they take no
        /// fingerprints). Needs the certificate's FILE (its serial).
        #[arg(long, requires = "file")]
        ca_key: Option<PathBuf>,
        /// The CA's certificate, with --ca-key.
        #[arg(long, default_value = CA_CERT_FILE)]
        ca: PathBuf,
    },
    /// Every certificate the cluster refuses: fingerprint, when, note.
    Revoked {
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
}

impl TlsCommand {
    /// Whether it dials the cluster (only `cert revoke` and `cert revoked`
    /// do).
    pub fn dials(&self) -> bool {
        matches!(
            self,
            TlsCommand::Cert(CertCommand::Revoke { .. } | CertCommand::Revoked { .. })
        )
    }
}

/// Runs `herd tls ...`.
pub async fn run(ctx: &super::Context, command: TlsCommand) -> Result<(), CliError> {
    match command {
        TlsCommand::Cert(CertCommand::Revoke {
            file,
            fingerprint,
            note,
            ca_key,
            ca,
        }) => {
            let signer = ca_key.as_deref().map(|key| (ca.as_path(), key));
            super::tls_revoke::run(ctx, file.as_deref(), fingerprint.as_deref(), note, signer).await
        }
        TlsCommand::Cert(CertCommand::Revoked { stale }) => {
            super::tls_revoke::list(ctx, stale).await
        }
        TlsCommand::Quickstart {
            dir,
            coordinators,
            nodes,
            clients,
            days,
        } => {
            let wanted = [
                (PeerRole::Coordinator, coordinators),
                (PeerRole::Node, nodes),
                (PeerRole::Client, clients),
            ];
            quickstart(&dir, &wanted, days)
        }
        TlsCommand::Ca(CaCommand::Create { dir, days }) => create_ca(&dir, days),
        TlsCommand::Cert(CertCommand::Renew {
            file,
            key,
            ca,
            ca_key,
            days,
        }) => {
            let key = match key {
                Some(key) => key,
                None => key_beside(&file)?,
            };
            renew(&file, &key, &ca, &ca_key, days)
        }
        TlsCommand::Cert(CertCommand::Create {
            role,
            name,
            ca,
            ca_key,
            dir,
            days,
            dns,
            ips,
        }) => {
            let role = PeerRole::parse(&role).ok_or_else(|| {
                CliError::input(format!(
                    "--for {role:?}: expected coordinator, node or client"
                ))
            })?;
            let request = CertRequest {
                identity: PeerIdentity { role, name },
                days,
                dns,
                ips,
            };
            create_cert(&request, &ca, &ca_key, &dir)
        }
    }
}

/// Checks `--days`.
fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CliError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CliError::input(format!(
            "--days {days}: expected 1 to {MAX_DAYS}"
        )));
    }
    let now = OffsetDateTime::now_utc();
    // An hour back, for peers whose clocks are a little behind.
    Ok((
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    ))
}

fn create_ca(dir: &Path, days: u32) -> Result<(), CliError> {
    let (not_before, not_after) = validity(days)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().map_err(|e| CliError::runtime(format!("CA key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "herd cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CliError::runtime(format!("signing the CA: {e}")))?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    println!(
        "wrote {} and {} (keep the key offline; every certificate it signs can join the cluster)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Makes the CA in `dir` unless it exists, then each certificate of
/// `wanted` that does not exist yet.
fn quickstart(dir: &Path, wanted: &[(PeerRole, Vec<String>)], days: u32) -> Result<(), CliError> {
    let (ca, ca_key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    match (ca.exists(), ca_key.exists()) {
        (true, true) => println!("kept the CA in {}", dir.display()),
        (false, false) => create_ca(dir, MAX_DAYS.min(days.saturating_mul(5)))?,
        _ => {
            return Err(CliError::input(format!(
            "{} holds only one of {CA_CERT_FILE} and {CA_KEY_FILE}: remove it or restore the other",
            dir.display()
        )))
        }
    }
    for (role, names) in wanted {
        for name in names {
            let stem = format!("herd-{role}-{name}");
            let request = CertRequest {
                identity: PeerIdentity {
                    role: *role,
                    name: name.clone(),
                },
                days,
                dns: vec![],
                ips: vec![],
            };
            let cert_path = dir.join(format!("{stem}.pem"));
            if !cert_path.exists() {
                create_cert(&request, &ca, &ca_key, dir)?;
                continue;
            }
            match lacks_own_dns_name(&cert_path, &request.identity)? {
                None => println!("kept {stem}.pem"),
                Some(why) => {
                    reissue(&request, &ca, &ca_key, dir)?;
                    println!("re-issued {stem}.pem and its key: the old one {why}");
                }
            }
        }
    }
    Ok(())
}

/// Why the certificate at `path`, kept by [`quickstart`], must be re-issued
/// for `identity`: a node certificate without its own DNS name (made by a
/// herd from before dialers checked the exact node), which its agent would
/// refuse to start with. None when it is fine to keep, for nodes and for
/// the other roles, whose certificates did not change.
fn lacks_own_dns_name(path: &Path, identity: &PeerIdentity) -> Result<Option<String>, CliError> {
    if identity.role != PeerRole::Node {
        return Ok(None);
    }
    let pem =
        std::fs::read(path).map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    let der = first_pem_certificate(&pem).ok_or_else(|| {
        CliError::input(format!(
            "{}: no PEM CERTIFICATE block (remove it to make a new one)",
            path.display()
        ))
    })?;
    match check_own_dns_name(&der, identity) {
        Ok(()) => Ok(None),
        Err(e @ herd_api::tls::TlsIdentityError::MissingNodeDnsName { .. }) => {
            Ok(Some(e.to_string()))
        }
        Err(e) => Err(CliError::input(format!("{}: {e}", path.display()))),
    }
}

/// Replaces the certificate and key of `request` in `dir` with new ones
/// signed by the CA: written under temporary names first (never over
/// anything, as [`create_cert`] writes), then renamed over the old files,
/// the key last, so that each file is whole at every moment.
fn reissue(request: &CertRequest, ca: &Path, ca_key: &Path, dir: &Path) -> Result<(), CliError> {
    let identity = &request.identity;
    let stem = format!("herd-{}-{}", identity.role, identity.name);
    let staging = dir.join(format!(".{stem}.reissue"));
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CliError::runtime(format!("{}: {e}", staging.display())))
        }
        _ => {}
    }
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&staging)
        .map_err(|e| CliError::runtime(format!("{}: {e}", staging.display())))?;
    create_cert(request, ca, ca_key, &staging)?;
    for name in [format!("{stem}.pem"), format!("{stem}-key.pem")] {
        std::fs::rename(staging.join(&name), dir.join(&name)).map_err(|e| {
            CliError::runtime(format!("replacing {}: {e}", dir.join(&name).display()))
        })?;
    }
    std::fs::remove_dir(&staging)
        .map_err(|e| CliError::runtime(format!("{}: {e}", staging.display())))
}

/// The key file `herd tls cert create` writes beside the certificate
/// `file`: `NAME.pem` → `NAME-key.pem`.
fn key_beside(file: &Path) -> Result<PathBuf, CliError> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".pem"))
        .ok_or_else(|| {
            CliError::input(format!(
                "{}: not a NAME.pem file, so its key cannot be guessed: give --key",
                file.display()
            ))
        })?;
    Ok(file.with_file_name(format!("{name}-key.pem")))
}

/// `herd tls cert renew`: a new certificate for the identity, DNS names
/// and IP addresses of the one at `file`, with a new key, both written
/// over `file` and `key` (see [`replace_whole`]). The old certificate may
/// have expired: renewing is how an operator recovers from that too.
fn renew(file: &Path, key: &Path, ca: &Path, ca_key: &Path, days: u32) -> Result<(), CliError> {
    let pem =
        std::fs::read(file).map_err(|e| CliError::input(format!("{}: {e}", file.display())))?;
    let der = first_pem_certificate(&pem)
        .ok_or_else(|| CliError::input(format!("{}: no PEM CERTIFICATE block", file.display())))?;
    let named =
        |e: herd_api::tls::TlsIdentityError| CliError::input(format!("{}: {e}", file.display()));
    let identity = certificate_identity(&der).map_err(named)?;
    // The names `cert create` adds by itself come back by themselves.
    let implied = [
        Some(identity.role.dns_name()),
        node_dns_name(&identity.name)
            .ok()
            .filter(|_| identity.role == PeerRole::Node),
    ];
    let dns = certificate_dns_names(&der)
        .map_err(named)?
        .into_iter()
        .filter(|name| {
            !implied
                .iter()
                .flatten()
                .any(|i| i.eq_ignore_ascii_case(name))
        })
        .collect();
    let ips = certificate_ip_addresses(&der).map_err(named)?;
    let request = CertRequest {
        identity,
        days,
        dns,
        ips,
    };
    let params = leaf_params(&request)?;
    let (_, issuer) = load_issuer(ca, ca_key)?;
    let new_key = KeyPair::generate().map_err(|e| CliError::runtime(format!("key: {e}")))?;
    let cert = params
        .signed_by(&new_key, &issuer)
        .map_err(|e| CliError::runtime(format!("signing: {e}")))?;
    // Both staged before either replaces anything: a failure (no right to
    // give the file its owner...) leaves the old pair as it was, never a
    // new key beside the old certificate, which would stop the process
    // at its next start.
    let staged_key = stage_beside(key, new_key.serialize_pem().as_bytes(), 0o600)?;
    let staged_cert = match stage_beside(file, cert.pem().as_bytes(), 0o644) {
        Ok(staged) => staged,
        Err(e) => {
            let _ = std::fs::remove_file(&staged_key);
            return Err(e);
        }
    };
    // The key first: a process that looks in between sees a certificate
    // that does not match its key and keeps what it has until the next look.
    for (staged, path) in [(&staged_key, key), (&staged_cert, file)] {
        std::fs::rename(staged, path)
            .map_err(|e| CliError::runtime(format!("replacing {}: {e}", path.display())))?;
    }
    println!(
        "renewed {} and {} for {} (valid {days} days); a coordinator or agent using them \
         presents the new certificate within 10 s, or at once on SIGHUP",
        file.display(),
        key.display(),
        request.identity
    );
    Ok(())
}

/// Writes `bytes` into a new file beside `path` (no one else can read it,
/// even briefly), given the old file's owner and mode (`default_mode` if
/// there was none) and synced, for a rename over `path` to replace it
/// whole: a reader sees the old bytes or the new, never a part. Returns
/// the new file's path; removes it again if any step fails.
fn stage_beside(path: &Path, bytes: &[u8], default_mode: u32) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let old = std::fs::metadata(path).ok();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::input(format!("{}: not a file name", path.display())))?;
    let beside = path.with_file_name(format!(".{file_name}.renew"));
    match std::fs::remove_file(&beside) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CliError::runtime(format!("{}: {e}", beside.display())))
        }
        _ => {}
    }
    write_new(&beside, bytes, 0o600)?;
    let mode = old.as_ref().map_or(default_mode, |m| m.mode() & 0o7777);
    let dressed = old
        .as_ref()
        .map_or(Ok(()), |old| {
            std::os::unix::fs::chown(&beside, Some(old.uid()), Some(old.gid()))
        })
        .and_then(|()| std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(mode)));
    if let Err(e) = dressed {
        let _ = std::fs::remove_file(&beside);
        return Err(CliError::runtime(format!(
            "{}: cannot give it the owner and mode of {}: {e}",
            beside.display(),
            path.display()
        )));
    }
    Ok(beside)
}

/// What a certificate is for.
struct CertRequest {
    identity: PeerIdentity,
    days: u32,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

/// The parameters of the certificate `request` asks for.
fn leaf_params(request: &CertRequest) -> Result<CertificateParams, CliError> {
    let identity = &request.identity;
    if !valid_name(&identity.name) {
        return Err(CliError::input(format!(
            "name {:?}: expected 1 to 63 letters, digits, '-', '_' or '.'",
            identity.name
        )));
    }
    let (not_before, not_after) = validity(request.days)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{} {}", identity.role, identity.name),
    );
    let ia5 = |text: String, flag: &str| {
        text.clone()
            .try_into()
            .map_err(|e| CliError::input(format!("{flag} {text:?}: {e}")))
    };
    params.subject_alt_names = vec![
        SanType::URI(ia5(identity.uri(), "name")?),
        SanType::DnsName(ia5(identity.role.dns_name(), "name")?),
    ];
    // A node's own name too, which a dialer of that one node checks; a
    // node name that cannot be a DNS name (`a..b`) is refused here rather
    // than making a certificate no dialer would accept.
    if identity.role == PeerRole::Node {
        let own = node_dns_name(&identity.name).map_err(CliError::input)?;
        params
            .subject_alt_names
            .push(SanType::DnsName(ia5(own, "name")?));
    }
    for dns in &request.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(ia5(dns.clone(), "--dns")?));
    }
    params
        .subject_alt_names
        .extend(request.ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Coordinators and agents both serve and dial; clients only dial.
    params.extended_key_usages = match identity.role {
        PeerRole::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        PeerRole::Coordinator | PeerRole::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn create_cert(
    request: &CertRequest,
    ca_path: &Path,
    ca_key_path: &Path,
    dir: &Path,
) -> Result<(), CliError> {
    let params = leaf_params(request)?;
    let (_, issuer) = load_issuer(ca_path, ca_key_path)?;
    let identity = &request.identity;
    let stem = format!("herd-{}-{}", identity.role, identity.name);
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().map_err(|e| CliError::runtime(format!("key: {e}")))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| CliError::runtime(format!("signing: {e}")))?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    println!(
        "wrote {} and {} for {identity}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// The CA at `ca_path` (its PEM text) and the issuer that signs with its
/// key at `ca_key_path`: certificates (`cert create`) and CRLs
/// (`cert revoke --ca-key`).
pub(super) fn load_issuer(
    ca_path: &Path,
    ca_key_path: &Path,
) -> Result<(String, Issuer<'static, KeyPair>), CliError> {
    let read = |path: &Path, flag: &str| {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::input(format!("{flag} {}: {e}", path.display())))
    };
    let ca_pem = read(ca_path, "--ca")?;
    let ca_key_pem = read(ca_key_path, "--ca-key")?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        CliError::input(format!(
            "--ca-key {}: not a private key: {e}",
            ca_key_path.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
        CliError::input(format!(
            "--ca {}: not a CA certificate: {e}",
            ca_path.display()
        ))
    })?;
    Ok((ca_pem, issuer))
}

/// Refuses to go on when any of `paths` exists: certificates and keys are
/// never overwritten.
fn refuse_existing(paths: &[&Path]) -> Result<(), CliError> {
    for path in paths {
        if path.exists() {
            return Err(CliError::input(format!(
                "{} exists: not overwriting it (remove it first to replace it)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file `path` with `mode`, never over an existing
/// one (O_EXCL), so a key is never readable by others, even briefly.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::tls::identity::parse_certificate;

    /// Node gpu-1's certificate for 5 days, with a DNS name and an IP
    /// address of its own.
    fn gpu_node() -> CertRequest {
        CertRequest {
            identity: PeerIdentity {
                role: PeerRole::Node,
                name: "gpu-1".into(),
            },
            days: 5,
            dns: vec!["gpu-1.example".into()],
            ips: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn a_renewal_keeps_identity_names_and_modes_with_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), 10).unwrap();
        let (ca, ca_key) = (dir.path().join(CA_CERT_FILE), dir.path().join(CA_KEY_FILE));
        let mut request = gpu_node();
        request.ips.push("fd00::1".parse().unwrap());
        create_cert(&request, &ca, &ca_key, dir.path()).unwrap();
        let cert = dir.path().join("herd-node-gpu-1.pem");
        let key = dir.path().join("herd-node-gpu-1-key.pem");
        // An operator's looser mode on the certificate is kept.
        std::fs::set_permissions(
            &cert,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o640),
        )
        .unwrap();
        let (old_cert, old_key) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        let old_der = first_pem_certificate(&old_cert).unwrap();

        assert_eq!(key_beside(&cert).unwrap(), key);
        renew(&cert, &key_beside(&cert).unwrap(), &ca, &ca_key, 30).unwrap();

        let (new_cert, new_key) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        assert_ne!(new_cert, old_cert);
        assert_ne!(new_key, old_key);
        let der = first_pem_certificate(&new_cert).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(parse_certificate(&der, now).unwrap(), request.identity);
        // 30 days now, where the old one had 5.
        assert!(parse_certificate(&der, now + 20 * 86_400).is_ok());
        let mut names = certificate_dns_names(&der).unwrap();
        let mut old_names = certificate_dns_names(&old_der).unwrap();
        names.sort();
        old_names.sort();
        assert_eq!(names, old_names, "no name lost or doubled");
        assert_eq!(certificate_ip_addresses(&der).unwrap(), request.ips);
        // The key matches the certificate, as a reload will check.
        herd_api::tls::current::certified_key(&new_cert, &new_key).unwrap();
        let mode = |path: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
                & 0o777
        };
        assert_eq!((mode(&cert), mode(&key)), (0o640, 0o600));
        // Nothing left beside them.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".renew"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // Bad input names the file.
        let error = renew(&dir.path().join("nope.pem"), &key, &ca, &ca_key, 30).unwrap_err();
        assert!(error.message.contains("nope.pem"), "{}", error.message);
        let error = key_beside(Path::new("/etc/herd/cert.crt")).unwrap_err();
        assert!(error.message.contains("--key"), "{}", error.message);
    }

    #[test]
    fn a_signed_certificate_names_its_identity_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), 10).unwrap();
        let request = gpu_node();
        create_cert(
            &request,
            &dir.path().join(CA_CERT_FILE),
            &dir.path().join(CA_KEY_FILE),
            dir.path(),
        )
        .unwrap();
        let pem = std::fs::read(dir.path().join("herd-node-gpu-1.pem")).unwrap();
        let block = x509_parser::pem::Pem::iter_from_buffer(&pem)
            .next()
            .unwrap()
            .unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(
            parse_certificate(&block.contents, now).unwrap(),
            request.identity
        );
        // Not valid in six days.
        assert!(parse_certificate(&block.contents, now + 6 * 86_400).is_err());
        let key_mode = std::fs::metadata(dir.path().join("herd-node-gpu-1-key.pem"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
            0o600
        );
        // Never overwritten.
        let again = create_cert(
            &request,
            &dir.path().join(CA_CERT_FILE),
            &dir.path().join(CA_KEY_FILE),
            dir.path(),
        );
        assert!(again.unwrap_err().message.contains("exists"));
        assert!(create_ca(dir.path(), 10)
            .unwrap_err()
            .message
            .contains("exists"));
    }

    #[test]
    fn quickstart_makes_what_is_missing_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = [
            (PeerRole::Coordinator, vec!["c1".to_string()]),
            (PeerRole::Client, vec!["admin".to_string()]),
        ];
        quickstart(dir.path(), &wanted, 30).unwrap();
        let ca = std::fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let admin = std::fs::read(dir.path().join("herd-client-admin.pem")).unwrap();
        let more = [(PeerRole::Node, vec!["n1".to_string()])];
        quickstart(dir.path(), &more, 30).unwrap();
        assert_eq!(std::fs::read(dir.path().join(CA_CERT_FILE)).unwrap(), ca);
        quickstart(dir.path(), &wanted, 30).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("herd-client-admin.pem")).unwrap(),
            admin
        );
        assert!(dir.path().join("herd-node-n1-key.pem").exists());
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(quickstart(dir.path(), &more, 30).is_err());
    }

    /// The DNS names in the certificate file `path`.
    fn dns_names(path: &Path) -> Vec<String> {
        let pem = std::fs::read(path).unwrap();
        let der = first_pem_certificate(&pem).unwrap();
        herd_api::tls::identity::certificate_dns_names(&der).unwrap()
    }

    /// Writes node `name`'s certificate as herd wrote it before node
    /// certificates named their node in DNS (`node.herd` only).
    fn old_node_cert(dir: &Path, name: &str) {
        let request = CertRequest {
            identity: PeerIdentity {
                role: PeerRole::Node,
                name: name.into(),
            },
            days: 5,
            dns: vec![],
            ips: vec![],
        };
        let mut params = leaf_params(&request).unwrap();
        params.subject_alt_names.retain(
            |san| !matches!(san, SanType::DnsName(dns) if dns.as_str().ends_with(".node.herd")),
        );
        assert_eq!(params.subject_alt_names.len(), 2, "the URI and node.herd");
        let ca_pem = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let stem = format!("herd-node-{name}");
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
    }

    /// `--tls-*` flags for `role` `name`'s files in `dir`.
    fn flags(dir: &Path, role: &str, name: &str) -> super::super::transport::TransportFlags {
        super::super::transport::TransportFlags {
            ca: Some(dir.join(CA_CERT_FILE)),
            cert: Some(dir.join(format!("herd-{role}-{name}.pem"))),
            key: Some(dir.join(format!("herd-{role}-{name}-key.pem"))),
            insecure: false,
        }
    }

    #[test]
    fn a_node_certificate_names_its_node_in_dns_and_other_roles_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = [
            (PeerRole::Node, vec!["gpu-1".to_string()]),
            (PeerRole::Client, vec!["admin".to_string()]),
        ];
        quickstart(dir.path(), &wanted, 30).unwrap();
        assert_eq!(
            dns_names(&dir.path().join("herd-node-gpu-1.pem")),
            ["node.herd", "gpu-1.node.herd"]
        );
        assert_eq!(
            dns_names(&dir.path().join("herd-client-admin.pem")),
            ["client.herd"]
        );
        // A node name that is no DNS name gets no certificate, and says why.
        let request = CertRequest {
            identity: PeerIdentity {
                role: PeerRole::Node,
                name: "a..b".into(),
            },
            days: 5,
            dns: vec![],
            ips: vec![],
        };
        let error = leaf_params(&request).unwrap_err();
        assert_eq!(error.code, 2);
        assert!(error.message.contains("\"a..b\""), "{}", error.message);
        assert!(error.message.contains("DNS"), "{}", error.message);
        // ...while a client may still be called that.
        let client = CertRequest {
            identity: PeerIdentity {
                role: PeerRole::Client,
                name: "a..b".into(),
            },
            ..request
        };
        assert!(leaf_params(&client).is_ok());
    }

    #[test]
    fn an_agent_refuses_a_node_certificate_without_its_dns_name() {
        use super::super::transport::{choose, Use};
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), 10).unwrap();
        old_node_cert(dir.path(), "n1");
        let error = choose(&flags(dir.path(), "node", "n1"), Use::Serve(PeerRole::Node))
            .err()
            .unwrap();
        assert_eq!(error.code, 2, "a start check: exit 2");
        for part in [
            "n1.node.herd",
            "herd tls cert create --for node n1",
            "herd-node-n1.pem",
        ] {
            assert!(error.message.contains(part), "{part}: {}", error.message);
        }
        // A client borrowing it for a health check is not dialed as n1.
        assert!(choose(&flags(dir.path(), "node", "n1"), Use::Client).is_ok());
        // A certificate made now is taken.
        let fresh = [(PeerRole::Node, vec!["n2".to_string()])];
        quickstart(dir.path(), &fresh, 30).unwrap();
        assert!(choose(&flags(dir.path(), "node", "n2"), Use::Serve(PeerRole::Node)).is_ok());
    }

    #[test]
    fn quickstart_reissues_a_node_certificate_without_its_dns_name() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), 10).unwrap();
        old_node_cert(dir.path(), "n1");
        let cert = dir.path().join("herd-node-n1.pem");
        let key = dir.path().join("herd-node-n1-key.pem");
        let old_key = std::fs::read(&key).unwrap();
        assert_eq!(dns_names(&cert), ["node.herd"]);
        let wanted = [(PeerRole::Node, vec!["n1".to_string()])];
        quickstart(dir.path(), &wanted, 30).unwrap();
        assert_eq!(dns_names(&cert), ["node.herd", "n1.node.herd"]);
        assert_ne!(std::fs::read(&key).unwrap(), old_key, "a new key with it");
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Nothing left behind; the pair is one an agent starts with.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("reissue")), "{names:?}");
        assert!(super::super::transport::choose(
            &flags(dir.path(), "node", "n1"),
            super::super::transport::Use::Serve(PeerRole::Node)
        )
        .is_ok());
        // Run again: kept as it is now.
        let now = std::fs::read(&cert).unwrap();
        quickstart(dir.path(), &wanted, 30).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), now);
    }

    #[test]
    fn bad_names_and_validities_are_refused_before_any_file_is_written() {
        let request = |name: &str, days| CertRequest {
            identity: PeerIdentity {
                role: PeerRole::Client,
                name: name.into(),
            },
            days,
            dns: vec![],
            ips: vec![],
        };
        assert!(leaf_params(&request("a/b", 1)).is_err());
        assert!(leaf_params(&request("", 1)).is_err());
        assert!(leaf_params(&request("ok", 0)).is_err());
        assert!(leaf_params(&request("ok", MAX_DAYS + 1)).is_err());
        assert!(leaf_params(&request("ok", 1)).is_ok());
    }
}
