//! `herd operator snapshot save|restore|inspect`: backups of the replicated
//! state, and new clusters started from them (docs/durability.md, *Backup
//! and restore*).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use herd_api::client::Repeat;
use herd_api::proto::v1::operator_client::OperatorClient;
use herd_api::proto::v1::snapshot_chunk::Part;
use herd_api::proto::v1::{SaveSnapshotRequest, SnapshotInfo};
use herd_coordinator::config::check_host_port;
use herd_coordinator::snapshot::file::{self, SnapshotHeader, FORMAT_VERSION};
use herd_coordinator::snapshot::restore::{restore_data_dir, RestoreError, RestoreOptions};
use herd_coordinator::snapshot::summary::{decode_payload, Summary};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json};

/// Subcommands of `herd operator`.
#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Back up the replicated state, restore it into a new cluster, look inside a backup.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// Subcommands of `herd operator snapshot`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot of the cluster's state to FILE: it holds
    /// every write acknowledged before the call (written atomically).
    Save {
        /// Where to write it (replaced if it exists).
        file: PathBuf,
    },
    /// Seed an EMPTY data dir from FILE, so that the member started on it
    /// runs a new one-member cluster holding the backed-up state; other
    /// members then join it with --join. (`herd coordinator --recover-from
    /// FILE` does this and starts the member in one step.)
    Restore {
        /// The backup.
        file: PathBuf,
        /// The new member's data dir (must hold no Raft state unless --force).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new member's id.
        #[arg(long)]
        id: u64,
        /// The address other members and clients will reach it at (HOST:PORT).
        #[arg(long)]
        advertise: String,
        /// Replace the Raft state the data dir already holds.
        #[arg(long)]
        force: bool,
    },
    /// Check FILE (format, checksums, records) and say what it holds.
    Inspect {
        /// The backup.
        file: PathBuf,
    },
}

/// Runs a `herd operator` subcommand.
pub async fn run(ctx: &Context, command: OperatorCommand) -> Result<(), CliError> {
    match command {
        OperatorCommand::Snapshot(SnapshotCommand::Save { file }) => save(ctx, &file).await,
        OperatorCommand::Snapshot(SnapshotCommand::Restore {
            file,
            data_dir,
            id,
            advertise,
            force,
        }) => {
            if id == 0 {
                return Err(CliError::input(
                    "--id: member id 0 is reserved; use 1, 2, ...",
                ));
            }
            check_host_port(&advertise)
                .map_err(|e| CliError::input(format!("--advertise: {e}")))?;
            let options = RestoreOptions {
                file,
                data_dir,
                member: id,
                advertise,
                force,
                resume_if_restored: false,
            };
            restore(ctx, &options)
        }
        OperatorCommand::Snapshot(SnapshotCommand::Inspect { file }) => inspect(ctx, &file),
    }
}

/// Streams a snapshot from the cluster, checks it and writes it to `path`.
async fn save(ctx: &Context, path: &Path) -> Result<(), CliError> {
    // A backup is a read: another coordinator may serve it if one cannot.
    let (info, payload) = ctx
        .client()?
        .call_as(Repeat::Safe, |ch| async move {
            let mut stream = OperatorClient::new(ch)
                .save_snapshot(SaveSnapshotRequest {})
                .await?
                .into_inner();
            let mut info: Option<SnapshotInfo> = None;
            let mut payload = Vec::new();
            while let Some(chunk) = stream.message().await? {
                match chunk.part {
                    Some(Part::Info(i)) if info.is_none() => {
                        payload.reserve(i.payload_bytes.min(file::MAX_PAYLOAD) as usize);
                        info = Some(i);
                    }
                    Some(Part::Data(bytes)) => payload.extend_from_slice(&bytes),
                    // A second description, or a part this herd does not
                    // know: judged below, with the whole stream read.
                    _ => {}
                }
            }
            Ok((info, payload))
        })
        .await?;
    let info = info.ok_or_else(|| {
        CliError::runtime("the coordinator sent a snapshot without describing it")
    })?;
    let crc = file::payload_crc32c(&payload);
    if payload.len() as u64 != info.payload_bytes || crc != info.crc32c {
        return Err(CliError::runtime(format!(
            "the snapshot arrived damaged: {} bytes with crc32c:{crc:08x}, but member {} sent {} bytes with crc32c:{:08x}; nothing was written",
            payload.len(),
            info.member,
            info.payload_bytes,
            info.crc32c
        )));
    }
    // Decoded as a restore would decode it: a backup that cannot be
    // restored is refused now rather than found out in a disaster.
    let (_, summary) = decode_payload(&payload, "the snapshot received")
        .map_err(|e| CliError::runtime(format!("{e}; nothing was written")))?;
    let header = SnapshotHeader {
        cluster_id: info.cluster_id.clone(),
        index: info.index,
        term: info.term,
        leader: info.leader,
        member: info.member,
        created_at_ms: info.created_at_ms,
        created_by: format!("herd {}", env!("CARGO_PKG_VERSION")),
        payload_bytes: 0,
        payload_crc32c: 0,
    };
    let bytes = file::encode(header, &payload).map_err(CliError::runtime)?;
    file::write_atomically(path, &bytes).map_err(CliError::runtime)?;
    let checksum = format!("crc32c:{crc:08x}");
    if ctx.json() {
        print_json(&json!({
            "file": path.display().to_string(),
            "index": info.index,
            "term": info.term,
            "bytes": bytes.len(),
            "checksum": checksum,
            "cluster_id": info.cluster_id,
        }));
    } else {
        println!(
            "saved {} at index {} (term {}) of cluster {}: {} bytes, {checksum}; {}",
            path.display(),
            info.index,
            info.term,
            info.cluster_id,
            bytes.len(),
            counts(&summary)
        );
    }
    Ok(())
}

fn counts(summary: &Summary) -> String {
    format!(
        "{} jobs, {} nodes, {} allocations, {} variables, {} migrations",
        summary.jobs, summary.nodes, summary.allocations, summary.variables, summary.migrations
    )
}

/// A restore's refusal: the file or the data dir is wrong (exit 2), or
/// the disk failed (exit 1).
fn restore_error(e: RestoreError) -> CliError {
    match e {
        RestoreError::Storage { .. } => CliError::runtime(e),
        other => CliError::input(other),
    }
}

fn restore(ctx: &Context, options: &RestoreOptions) -> Result<(), CliError> {
    let restored = restore_data_dir(options).map_err(restore_error)?;
    let header = &restored.header;
    if ctx.json() {
        print_json(&json!({
            "file": options.file.display().to_string(),
            "data_dir": options.data_dir.display().to_string(),
            "member": options.member,
            "index": header.index,
            "term": header.term,
            "from_cluster": header.cluster_id,
            "cluster_id": restored.cluster_id,
            "already_restored": restored.already_restored,
        }));
    } else if restored.already_restored {
        println!(
            "{} was already restored from {} (cluster {}); nothing changed",
            options.data_dir.display(),
            options.file.display(),
            restored.cluster_id
        );
    } else {
        println!(
            "restored {} (index {}, term {}, cluster {}; {}) into {}: member {} of new cluster {}.\nStart it with `herd coordinator --id {} --listen {} --data-dir {}` (no --bootstrap or --join), then start other members with `--join {}`.",
            options.file.display(),
            header.index,
            header.term,
            header.cluster_id,
            counts(&restored.summary),
            options.data_dir.display(),
            options.member,
            restored.cluster_id,
            options.member,
            options.advertise,
            options.data_dir.display(),
            options.advertise,
        );
    }
    Ok(())
}

fn inspect(ctx: &Context, path: &Path) -> Result<(), CliError> {
    let backup = file::read(path).map_err(CliError::input)?;
    let (_, summary) = decode_payload(
        &backup.payload,
        &format!("the payload of {}", path.display()),
    )
    .map_err(CliError::input)?;
    let h = &backup.header;
    if ctx.json() {
        print_json(&json!({
            "file": path.display().to_string(),
            "format": FORMAT_VERSION,
            "cluster_id": h.cluster_id,
            "index": h.index,
            "term": h.term,
            "leader": h.leader,
            "member": h.member,
            "created_at_ms": h.created_at_ms,
            "created_by": h.created_by,
            "file_bytes": backup.file_bytes,
            "payload_bytes": h.payload_bytes,
            "checksum": h.checksum(),
            "records": summary.records,
            "jobs": summary.jobs,
            "nodes": summary.nodes,
            "allocations": summary.allocations,
            "variables": summary.variables,
            "migrations": summary.migrations,
            "records_by_kind": summary.by_kind,
        }));
        return Ok(());
    }
    let kinds = summary
        .by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = [
        ("file", path.display().to_string()),
        ("format", FORMAT_VERSION.to_string()),
        ("cluster", h.cluster_id.clone()),
        ("index", h.index.to_string()),
        ("term", format!("{} (leader {})", h.term, h.leader)),
        (
            "taken",
            format!(
                "by member {} at {} UTC",
                h.member,
                format_time(h.created_at_ms)
            ),
        ),
        ("written by", h.created_by.clone()),
        (
            "size",
            format!("{} bytes ({} of state)", backup.file_bytes, h.payload_bytes),
        ),
        ("checksum", format!("{} (verified)", h.checksum())),
        ("holds", counts(&summary)),
        ("records", format!("{} ({kinds})", summary.records)),
    ];
    for (name, value) in rows {
        println!("{name:<11} {value}");
    }
    Ok(())
}

/// `--recover-from FILE` of `herd coordinator`: seeds its data dir before it
/// starts (see `herd_coordinator::snapshot::restore`).
pub fn recover(options: &RestoreOptions) -> Result<(), CliError> {
    let restored = restore_data_dir(options).map_err(restore_error)?;
    let header = &restored.header;
    if restored.already_restored {
        tracing::info!(
            file = %options.file.display(),
            cluster = %restored.cluster_id,
            "data dir already restored from this snapshot; resuming from it"
        );
    } else {
        tracing::info!(
            file = %options.file.display(),
            index = header.index,
            term = header.term,
            from_cluster = %header.cluster_id,
            cluster = %restored.cluster_id,
            jobs = restored.summary.jobs,
            nodes = restored.summary.nodes,
            "recovering: a new one-member cluster starts from the snapshot; other members join it with --join"
        );
    }
    Ok(())
}
