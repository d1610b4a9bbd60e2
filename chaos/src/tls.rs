//! Mutual TLS for the harness's clusters: one CA per cluster, made with
//! the binary's own `herd tls` commands, and a certificate issued on
//! demand for each coordinator, agent and client the harness starts.
//!
//! Without it every process the harness starts runs `--insecure`
//! (plaintext on loopback).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process_cluster::ClusterError;

/// A cluster's CA and the certificates issued from it, in one directory.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    binary: PathBuf,
    dir: PathBuf,
}

fn run(binary: &Path, args: &[&str], what: String) -> Result<(), ClusterError> {
    let out = Command::new(binary)
        .args(args)
        .env("HERD_LOG", "error")
        .output()
        .map_err(|source| ClusterError::Io {
            what: what.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Io {
            what,
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
    }
}

impl ClusterTls {
    /// Makes a new CA in `dir` (created if missing) with `binary`'s
    /// `herd tls ca create`.
    pub fn create(binary: &Path, dir: &Path) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let dir_text = dir.display().to_string();
        run(
            binary,
            &["tls", "ca", "create", "--dir", &dir_text],
            "herd tls ca create".into(),
        )?;
        Ok(Self {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// The CA already in `dir` (made by an earlier run there), or a new
    /// one ([`ClusterTls::create`]): `herd tls ca create` never overwrites
    /// a CA, so a second `herd chaos run --tls` with the same `--out`
    /// reuses the first one's, and the certificates it issued.
    pub fn open_or_create(binary: &Path, dir: &Path) -> Result<Self, ClusterError> {
        let existing = Self {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        if existing.ca().is_file() && existing.ca_key().is_file() {
            return Ok(existing);
        }
        Self::create(binary, dir)
    }

    /// The CA certificate's path.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("herd-ca.pem")
    }

    /// The CA key's path (what an operator signs revocation lists with).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("herd-ca-key.pem")
    }

    /// The certificate and key of `role` (`coordinator`, `node`, `client`)
    /// `name`, issued now if they do not exist yet.
    pub fn issue(&self, role: &str, name: &str) -> Result<(PathBuf, PathBuf), ClusterError> {
        let (cert, key) = self.paths(role, name);
        if !cert.exists() {
            let (ca, ca_key, dir) = (
                self.ca().display().to_string(),
                self.dir.join("herd-ca-key.pem").display().to_string(),
                self.dir.display().to_string(),
            );
            run(
                &self.binary,
                &[
                    "tls", "cert", "create", "--for", role, name, "--ca", &ca, "--ca-key", &ca_key,
                    "--dir", &dir,
                ],
                format!("herd tls cert create --for {role} {name}"),
            )?;
        }
        Ok((cert, key))
    }

    /// A second certificate and key of `role` `name`, issued now into
    /// `dir` (created if missing): the same identity under another serial,
    /// as a node re-issued a certificate holds beside its old one.
    pub fn issue_another(
        &self,
        role: &str,
        name: &str,
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf), ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let (ca, ca_key, out) = (
            self.ca().display().to_string(),
            self.ca_key().display().to_string(),
            dir.display().to_string(),
        );
        run(
            &self.binary,
            &[
                "tls", "cert", "create", "--for", role, name, "--ca", &ca, "--ca-key", &ca_key,
                "--dir", &out,
            ],
            format!("herd tls cert create --for {role} {name} --dir {out}"),
        )?;
        Ok((
            dir.join(format!("herd-{role}-{name}.pem")),
            dir.join(format!("herd-{role}-{name}-key.pem")),
        ))
    }

    /// Where the certificate and key of `role` `name` are, as
    /// `herd tls cert create` names them.
    fn paths(&self, role: &str, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("herd-{role}-{name}.pem")),
            self.dir.join(format!("herd-{role}-{name}-key.pem")),
        )
    }

    /// `--tls-ca ... --tls-cert ... --tls-key ...` for `role` `name`
    /// (issued by [`ClusterTls::issue`]).
    pub fn args(&self, role: &str, name: &str) -> Vec<String> {
        let (cert, key) = self.paths(role, name);
        [
            ("--tls-ca", self.ca()),
            ("--tls-cert", cert),
            ("--tls-key", key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

/// The variables through which a parent's transport settings would reach
/// a daemon the harness starts (`HERD_INSECURE`, `HERD_TLS_*`).
const TRANSPORT_ENV: [&str; 4] = [
    "HERD_INSECURE",
    "HERD_TLS_CA",
    "HERD_TLS_CERT",
    "HERD_TLS_KEY",
];

/// Leaves out of `command`'s environment the transport settings the
/// harness's own process was given: a daemon's transport is what
/// [`daemon_args`] puts on its command line, and an inherited
/// `HERD_INSECURE=true` beside `--tls-*` would make it refuse to start
/// (the two contradict each other), as would `HERD_TLS_*` beside
/// `--insecure`.
pub fn clear_transport_env(command: &mut Command) {
    for name in TRANSPORT_ENV {
        command.env_remove(name);
    }
}

/// The transport arguments of a daemon: TLS when the cluster has it,
/// `--insecure` otherwise.
pub fn daemon_args(tls: Option<&ClusterTls>, role: &str, name: &str) -> Vec<String> {
    match tls {
        Some(tls) => tls.args(role, name),
        None => vec!["--insecure".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_already_in_the_directory_is_reused_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let nothing = dir.path().join("no-such-herd-binary");
        // No CA yet: it must be made, and without a binary that fails.
        assert!(ClusterTls::open_or_create(&nothing, dir.path()).is_err());
        // A CA from an earlier run: taken as it is, no binary run.
        std::fs::write(dir.path().join("herd-ca.pem"), "earlier CA").unwrap();
        std::fs::write(dir.path().join("herd-ca-key.pem"), "earlier key").unwrap();
        let tls = ClusterTls::open_or_create(&nothing, dir.path()).unwrap();
        assert_eq!(tls.ca(), dir.path().join("herd-ca.pem"));
        assert_eq!(
            std::fs::read_to_string(tls.ca()).unwrap(),
            "earlier CA",
            "not overwritten"
        );
    }
}
