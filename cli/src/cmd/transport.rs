//! Chooses this process's transport from `--tls-ca|cert|key` and
//! `--insecure` before anything dials or listens (docs/security.md,
//! "Transport"): mutual TLS when the three files are given, plaintext
//! otherwise, and for daemons plaintext only when asked for by name.

use std::path::PathBuf;
use std::sync::Arc;

use herd_api::tls::{PeerRole, Reloaded, TlsFiles, TlsMaterial, Transport};

use crate::exit::CliError;

/// The transport flags as given.
#[derive(Debug, Default, Clone)]
pub struct TransportFlags {
    /// `--tls-ca`.
    pub ca: Option<PathBuf>,
    /// `--tls-cert`.
    pub cert: Option<PathBuf>,
    /// `--tls-key`.
    pub key: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
}

/// What a command does with the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A daemon serving as this role: TLS, or plaintext with --insecure.
    Serve(PeerRole),
    /// A client: TLS as a `client` when the files are given.
    Client,
    /// Runs whole clusters of its own, plaintext on loopback (named).
    WholeCluster(&'static str),
    /// Never dials a herd process (workload supervisors, file tools).
    Local,
    /// Makes its own CA and installs a client transport of it itself
    /// (`herd chaos run --tls`): nothing is installed for it here.
    InstallsItsOwn,
}

impl TransportFlags {
    /// The three files, when all are given; an error naming the missing
    /// ones when only some are.
    fn files(&self) -> Result<Option<TlsFiles>, CliError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            _ => {
                let missing: Vec<&str> = [
                    ("--tls-ca", self.ca.is_none()),
                    ("--tls-cert", self.cert.is_none()),
                    ("--tls-key", self.key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                Err(CliError::input(format!(
                    "TLS needs --tls-ca, --tls-cert and --tls-key together; missing {}",
                    missing.join(", ")
                )))
            }
        }
    }
}

/// The transport `flags` ask of a command that does `usage`.
pub fn choose(flags: &TransportFlags, usage: Use) -> Result<Transport, CliError> {
    let files = flags.files()?;
    if files.is_some() && flags.insecure {
        return Err(CliError::input(
            "--insecure and --tls-* contradict each other: give one or the other",
        ));
    }
    let load = |role: Option<PeerRole>, files: &TlsFiles| {
        TlsMaterial::load(files, role)
            .map(|material| Transport::Tls(Arc::new(material)))
            .map_err(CliError::input)
    };
    match (usage, files) {
        (Use::Serve(role), Some(files)) => load(Some(role), &files),
        (Use::Serve(role), None) if flags.insecure => {
            tracing_free_warning(&format!(
                "herd {role}: plaintext (--insecure): no encryption, and anyone who reaches its ports can call them"
            ));
            Ok(Transport::Plaintext)
        }
        (Use::Serve(role), None) => Err(CliError::input(format!(
            "herd {role} serves mutual TLS only: pass --tls-ca, --tls-cert and --tls-key \
             (make them with `herd tls ca create` and `herd tls cert create --for {role} NAME`), \
             or --insecure to serve plaintext"
        ))),
        // Any role's certificate: a daemon's own runs its health checks.
        (Use::Client, Some(files)) => load(None, &files),
        (Use::WholeCluster(_) | Use::Local | Use::Client | Use::InstallsItsOwn, _) => {
            Ok(Transport::Plaintext)
        }
    }
}

/// Says something on stderr before logging is set up.
fn tracing_free_warning(message: &str) {
    eprintln!("herd: warning: {message}");
}

/// Chooses and installs this process's transport; a daemon with TLS
/// serves its HTTP endpoints (dashboard, metrics, OpenAI-compatible) over
/// HTTPS with the same certificate (`herd_metrics::https`).
pub fn install(flags: &TransportFlags, usage: Use) -> Result<(), CliError> {
    if usage == Use::InstallsItsOwn {
        return Ok(());
    }
    let transport = choose(flags, usage)?;
    if let (Use::Serve(_), Transport::Tls(material)) = (usage, &transport) {
        let https =
            herd_metrics::https::server_config(material.current_key()).map_err(CliError::input)?;
        herd_metrics::https::install(https).map_err(CliError::runtime)?;
        herd_metrics::exporter::set_certificate_expiry(material.not_after());
        herd_metrics::exporter::set_revocation_counts(|| {
            (
                herd_api::tls::revocation::listed().len(),
                herd_api::tls::crl::held(),
            )
        });
    }
    herd_api::tls::install(transport).map_err(CliError::runtime)
}

/// How often a daemon looks at its certificate and key files for a
/// renewal made without SIGHUP: two `stat` calls each time.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps this process's certificate current, when it runs with TLS
/// (docs/security.md, "Renewing a certificate"): on SIGHUP, and when the
/// files named by `--tls-cert` and `--tls-key` change (looked at every
/// [`WATCH_EVERY`]), they are read again and, if they pass every check,
/// presented by every new handshake; refused, the process goes on with
/// what it had and says why. SIGHUP is what systemd's `ExecReload` and
/// `docker kill --signal HUP` send, as Nomad and Consul take theirs; the
/// files are watched too because certificate agents (cert-manager's
/// mounted secrets, Vault agent) replace files and signal nobody, and
/// etcd, say, picks such a renewal up by itself. Without TLS, nothing is
/// watched.
pub fn keep_certificate_current() -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let Transport::Tls(material) = herd_api::tls::transport() else {
        return Ok(());
    };
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| CliError::runtime(format!("cannot watch SIGHUP: {e}")))?;
    let material = material.clone();
    tokio::spawn(async move {
        let files = material.files().clone();
        let mut seen = stamp(&files);
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        watch.tick().await;
        loop {
            tokio::select! {
                hangup = hangups.recv() => {
                    if hangup.is_none() {
                        return;
                    }
                    seen = stamp(&files);
                    reload(&material, "SIGHUP");
                }
                _ = watch.tick() => {
                    let now = stamp(&files);
                    // Once per change, whatever its outcome: a refused
                    // renewal is said once, not every 10 s.
                    if now != seen {
                        seen = now;
                        reload(&material, "the files changed");
                    }
                }
            }
        }
    });
    Ok(())
}

/// What tells one version of the certificate and key files from another
/// without reading them: each one's modification time and size (None for
/// a file that cannot be looked at, itself a change to act on). `stat`
/// follows symbolic links, so a directory swapped behind a link (how
/// Kubernetes updates a mounted secret) is seen too.
fn stamp(files: &TlsFiles) -> [Option<(std::time::SystemTime, u64)>; 2] {
    [&files.cert, &files.key].map(|path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    })
}

/// One reload of `material` (asked by `trigger`), said in the log and the
/// expiry gauge.
fn reload(material: &TlsMaterial, trigger: &str) {
    let identity = material.identity();
    match material.reload() {
        Ok(Reloaded::Renewed {
            previous_not_after,
            not_after,
        }) => {
            herd_metrics::exporter::set_certificate_expiry(not_after);
            tracing::info!(
                role = %identity.role,
                name = %identity.name,
                trigger,
                previous_not_after,
                not_after,
                "TLS certificate reloaded: new connections present the renewed certificate"
            );
        }
        Ok(Reloaded::Unchanged) => tracing::info!(
            role = %identity.role,
            name = %identity.name,
            trigger,
            "TLS certificate reload: the files hold the certificate in use already"
        ),
        Err(e) => tracing::error!(
            role = %identity.role,
            name = %identity.name,
            trigger,
            error = %e,
            "TLS certificate reload refused"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_need_tls_or_insecure_by_name() {
        let none = TransportFlags::default();
        let error = choose(&none, Use::Serve(PeerRole::Node)).unwrap_err();
        assert!(error.message.contains("--insecure"), "{}", error.message);
        let insecure = TransportFlags {
            insecure: true,
            ..TransportFlags::default()
        };
        assert!(matches!(
            choose(&insecure, Use::Serve(PeerRole::Coordinator)),
            Ok(Transport::Plaintext)
        ));
        assert!(matches!(
            choose(&none, Use::Client),
            Ok(Transport::Plaintext)
        ));
        assert!(matches!(
            choose(&none, Use::WholeCluster("herd dev")),
            Ok(Transport::Plaintext)
        ));
    }

    #[test]
    fn partial_or_contradictory_flags_are_refused_by_name() {
        let partial = TransportFlags {
            ca: Some("ca.pem".into()),
            ..TransportFlags::default()
        };
        let error = choose(&partial, Use::Client).unwrap_err();
        assert!(
            error.message.contains("--tls-cert, --tls-key"),
            "{}",
            error.message
        );
        let both = TransportFlags {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            insecure: true,
        };
        assert!(choose(&both, Use::Serve(PeerRole::Node))
            .unwrap_err()
            .message
            .contains("contradict"));
    }
}
