//! The target's side of a migration's state transfer: [`IncomingRegistry`],
//! the migrations this node may receive and what it holds of each.
//!
//! The orchestration authorizes a migration when its assignment set names
//! this node as the target and revokes it when the set no longer does; the
//! `AgentPeer` service ([`super::peer_service`]) serves only authorized
//! migrations. Each one's files arrive in its staging directory: a file
//! still arriving is `<path>.herd-partial`, renamed to `<path>` once its last
//! chunk arrived, its mode set and its data fsynced. The files on disk are
//! the truth: a registry over an existing staging directory (a restarted
//! agent) reports what it holds by reading the directory, so a cut transfer
//! resumes where it stopped.
//!
//! Every chunk comes from the network and is checked before anything is
//! written: the migration, the path (see [`super::check_relative_path`]),
//! the offset against what is held, the size, the CRC-32C.
//!
//! The end of a transfer is marked by its sender, not by the end of the
//! stream (tonic reads a cancelled request stream as a clean end, so a cut
//! would look like a finish): the last chunk of a finished transfer repeats
//! the end of a file already whole (empty data, `last`, offset and size
//! equal to the file's size). No other chunk looks like that.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use herd_api::proto::agent::{
    PrepareIncomingReply, PrepareIncomingRequest, ReceivedFile, TransferChunk,
};
use thiserror::Error;
use tokio::sync::{watch, OnceCell};

use super::{
    check_relative_path, checksum, MAX_CHUNK_BYTES, MAX_FILES, MAX_PATH_DEPTH, PARTIAL_SUFFIX,
};

/// How long `PrepareIncoming` waits for its migration to be authorized: the
/// source learns of the migration from its own assignment set and may call
/// before the target's set arrived.
pub const AUTHORIZATION_WAIT: Duration = Duration::from_secs(5);
/// The longest abort reason kept (the rest of an untrusted string is cut).
const MAX_REASON_BYTES: usize = 1024;

/// A future yielding a kind's endpoints on the target: (`endpoint`, named
/// `endpoints`) as `PrepareIncomingReply` carries them, or why they could
/// not be readied.
pub type EndpointsFuture = BoxFuture<'static, Result<(String, BTreeMap<String, String>), String>>;

/// How `PrepareIncoming` readies a kind's own transport on the target (a QEMU
/// started with `-incoming`); called once per migration, its success cached.
/// None: the migration moves files only.
pub type IncomingEndpointsSource = Option<Arc<dyn Fn() -> EndpointsFuture + Send + Sync>>;

/// A future that ends once a live move's target holds the whole state
/// (`ConfirmIncoming`), or says why it does not.
pub type ConfirmFuture = BoxFuture<'static, Result<(), String>>;

/// How `ConfirmIncoming` checks, on the target, that a kind's own transport
/// delivered everything (the incoming QEMU loaded the whole stream),
/// waiting up to the given time. None: nothing to check beyond the files.
pub type IncomingConfirmation = Option<Arc<dyn Fn(Duration) -> ConfirmFuture + Send + Sync>>;

/// The longest a `ConfirmIncoming` may wait, whatever the source asks.
pub const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(60);

/// A migration this node may receive, as its assignment set names it.
#[derive(Clone)]
pub struct IncomingMigration {
    /// The migration's id (`migration/<id>`).
    pub migration_id: String,
    /// The allocation that moves.
    pub alloc_id: String,
    /// The node it comes from (checked against `PrepareIncoming`).
    pub source_node: String,
    /// The driver that moves it ("dljob", "simvm", "vm"...); an empty kind
    /// in either the authorization or the request is not checked.
    pub kind: String,
    /// Where its files arrive; created by `PrepareIncoming`, removed on
    /// revoke or abort unless [`IncomingRegistry::take`] handed it over.
    pub staging_dir: PathBuf,
    /// The kind's own endpoints, if any.
    pub endpoints: IncomingEndpointsSource,
    /// How the kind's own transport is checked before the switch-over.
    pub confirmation: IncomingConfirmation,
}

impl std::fmt::Debug for IncomingMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingMigration")
            .field("migration_id", &self.migration_id)
            .field("alloc_id", &self.alloc_id)
            .field("source_node", &self.source_node)
            .field("kind", &self.kind)
            .field("staging_dir", &self.staging_dir)
            .field("endpoints", &self.endpoints.is_some())
            .field("confirmation", &self.confirmation.is_some())
            .finish()
    }
}

/// A migration's progress on the target, as [`IncomingRegistry::watch`]
/// publishes it on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingProgress {
    /// Bytes held, whole files and partial ones.
    pub bytes: u64,
    /// Whole files held.
    pub files: u32,
    /// The source marked the end of its transfer (see the module doc) and
    /// no file is partial: the target holds everything the source meant to
    /// send. The first chunk of a new stream clears it.
    pub complete: bool,
    /// The source gave the migration up (AbortIncoming), with its reason;
    /// the data was dropped.
    pub aborted: Option<String>,
    /// Revoked or handed over: the registry no longer serves it.
    pub closed: bool,
}

/// What the target holds of a migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingStatus {
    /// The progress figures.
    pub progress: IncomingProgress,
    /// Every file held, by path, with its bytes and whether it is whole.
    pub files: Vec<ReceivedFile>,
}

/// Why the target refused a request or a chunk; [`super::peer_service`]
/// maps each to a gRPC status code.
#[derive(Debug, Error)]
pub enum IncomingError {
    /// The migration is not (or no longer) authorized here, or the request
    /// does not match its authorization.
    #[error("this node is not the target of migration {migration_id}: {detail}")]
    NotTarget {
        /// The migration asked for.
        migration_id: String,
        /// What did not match.
        detail: String,
    },
    /// The source aborted the migration.
    #[error("migration {migration_id} was aborted: {reason}")]
    Aborted {
        /// The migration.
        migration_id: String,
        /// The source's reason.
        reason: String,
    },
    /// The migration was revoked or its directory handed over.
    #[error("migration {migration_id} is closed on this node (revoked or handed over)")]
    Closed {
        /// The migration.
        migration_id: String,
    },
    /// A Transfer came before any PrepareIncoming since this agent started.
    #[error("migration {migration_id} was not prepared on this node: call PrepareIncoming first")]
    NotPrepared {
        /// The migration.
        migration_id: String,
    },
    /// A chunk does not follow what the target holds of its file.
    #[error("migration {migration_id}, file {path:?}: chunk at offset {offset} but the target holds {held} bytes{detail}")]
    OutOfStep {
        /// The migration.
        migration_id: String,
        /// The file.
        path: String,
        /// The chunk's offset.
        offset: u64,
        /// The bytes held of the file.
        held: u64,
        /// More, e.g. that the file is already whole.
        detail: String,
    },
    /// A chunk is malformed (path, size, length, a path that conflicts
    /// with another file).
    #[error("migration {migration_id}, file {path:?}: {message}")]
    BadChunk {
        /// The migration.
        migration_id: String,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A chunk's data does not match its CRC-32C; nothing of it was written.
    #[error("migration {migration_id}, file {path:?}, offset {offset}: CRC-32C mismatch (chunk says {expected:#010x}, data has {actual:#010x})")]
    Checksum {
        /// The migration.
        migration_id: String,
        /// The file.
        path: String,
        /// The chunk's offset.
        offset: u64,
        /// The checksum the chunk carried.
        expected: u32,
        /// The checksum of the data received.
        actual: u32,
    },
    /// The migration would hold more files than allowed.
    #[error("migration {migration_id}: more than {limit} files")]
    TooManyFiles {
        /// The migration.
        migration_id: String,
        /// The limit.
        limit: usize,
    },
    /// The staging directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The kind's endpoints could not be readied.
    #[error("migration {migration_id}: the target could not ready its endpoints: {message}")]
    Endpoints {
        /// The migration.
        migration_id: String,
        /// Why.
        message: String,
    },
    /// The target does not hold the whole state of a live move.
    #[error("migration {migration_id}: the target does not hold the whole state: {message}")]
    Unconfirmed {
        /// The migration.
        migration_id: String,
        /// Why.
        message: String,
    },
    /// A background task of the registry failed.
    #[error("internal error: {0}")]
    Internal(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IncomingError + '_ {
    move |e| IncomingError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The target's list of migrations it may receive, and what it holds of
/// each. Cheap to clone (shared state inside).
#[derive(Clone)]
pub struct IncomingRegistry {
    inner: Arc<Inner>,
    /// How this agent's migrations reach their peers' `AgentPeer` service:
    /// None over TCP; the simulation's network in `chaos/sim`.
    peers: Option<herd_api::client::Connector>,
}

struct Inner {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Bumped on every authorization, to wake PrepareIncoming calls waiting.
    authorized: watch::Sender<u64>,
    authorization_wait: Duration,
}

struct Entry {
    auth: IncomingMigration,
    endpoints: OnceCell<(String, BTreeMap<String, String>)>,
    store: Mutex<Store>,
    progress: watch::Sender<IncomingProgress>,
}

impl Default for IncomingRegistry {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the data as consistent as any
    // partial write: the files on disk stay the truth.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IncomingError> + Send + 'static,
) -> Result<T, IncomingError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IncomingError::Internal(format!("staging task failed: {e}")))?
}

impl IncomingRegistry {
    /// An empty registry; PrepareIncoming waits up to [`AUTHORIZATION_WAIT`]
    /// for a migration to be authorized.
    pub fn new() -> Self {
        Self::with_authorization_wait(AUTHORIZATION_WAIT)
    }

    /// An empty registry whose PrepareIncoming waits `wait` for an
    /// authorization (tests shorten it).
    pub fn with_authorization_wait(wait: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                authorized: watch::Sender::new(0),
                authorization_wait: wait,
            }),
            peers: None,
        }
    }

    /// This registry, its agent's migrations dialling their peers through
    /// `connector` (None: TCP), as the agent's coordinator link does.
    pub fn dialing_peers_with(mut self, connector: Option<herd_api::client::Connector>) -> Self {
        self.peers = connector;
        self
    }

    /// How this agent's migrations reach their peers (None: TCP).
    pub fn peer_connector(&self) -> Option<herd_api::client::Connector> {
        self.peers.clone()
    }

    /// Allows `migration` to be received. Idempotent: the assignment set
    /// comes again on every change, and a migration already authorized
    /// keeps its entry and state (returns false).
    pub fn authorize(&self, migration: IncomingMigration) -> bool {
        let mut entries = lock(&self.inner.entries);
        if entries.contains_key(&migration.migration_id) {
            return false;
        }
        let id = migration.migration_id.clone();
        let store = Store::new(&migration.staging_dir);
        entries.insert(
            id,
            Arc::new(Entry {
                auth: migration,
                endpoints: OnceCell::new(),
                store: Mutex::new(store),
                progress: watch::Sender::new(IncomingProgress::default()),
            }),
        );
        drop(entries);
        self.inner.authorized.send_modify(|n| *n += 1);
        true
    }

    /// Forgets a migration the assignment set no longer names and deletes
    /// its staging directory (unless [`Self::take`] handed it over first).
    /// Returns whether it was authorized.
    pub async fn revoke(&self, migration_id: &str) -> Result<bool, IncomingError> {
        let Some(entry) = lock(&self.inner.entries).remove(migration_id) else {
            return Ok(false);
        };
        // Endpoints being readied (early, or for a PrepareIncoming) are
        // waited for: the caller stops what they started once this returns.
        let _ = entry
            .endpoints
            .get_or_try_init(|| async { Err::<(String, BTreeMap<String, String>), ()>(()) })
            .await;
        blocking(move || {
            let mut store = lock(&entry.store);
            store.state = State::Closed;
            store.open = None;
            let removed = store.remove_dir();
            entry.progress.send_modify(|p| p.closed = true);
            removed
        })
        .await?;
        Ok(true)
    }

    /// Starts readying a migration's endpoints now, in the background,
    /// instead of when the source's PrepareIncoming asks for them: a live
    /// move's target program (an incoming QEMU) then starts while the
    /// source reports `preparing`, off the move's critical path. A
    /// PrepareIncoming meanwhile waits for this readiness rather than
    /// starting another; one that fails here is tried again by the
    /// PrepareIncoming. Does nothing for a migration without endpoints.
    pub fn ready_early(&self, migration_id: &str) {
        let Some(entry) = self.entry(migration_id) else {
            return;
        };
        let Some(source) = entry.auth.endpoints.clone() else {
            return;
        };
        let id = migration_id.to_string();
        tokio::spawn(async move {
            if let Err(message) = entry.endpoints.get_or_try_init(|| source()).await {
                tracing::debug!(migration = %id, %message, "readying the endpoints early failed; the source's PrepareIncoming tries again");
            }
        });
    }

    /// Hands the staging directory over (once the switch-over committed):
    /// the registry forgets the migration and will not delete the
    /// directory. None when the migration is unknown or was aborted.
    pub async fn take(&self, migration_id: &str) -> Option<PathBuf> {
        let entry = {
            let mut entries = lock(&self.inner.entries);
            let aborted = entries
                .get(migration_id)
                .is_some_and(|e| e.progress.borrow().aborted.is_some());
            if aborted {
                return None;
            }
            entries.remove(migration_id)?
        };
        let dir = entry.auth.staging_dir.clone();
        let closed = blocking(move || {
            let mut store = lock(&entry.store);
            store.state = State::Closed;
            store.open = None;
            entry.progress.send_modify(|p| p.closed = true);
            Ok(())
        })
        .await;
        closed.ok().map(|()| dir)
    }

    /// Why the source aborted the migration, once it did (AbortIncoming).
    pub fn aborted(&self, migration_id: &str) -> Option<String> {
        self.entry(migration_id)
            .and_then(|e| e.progress.borrow().aborted.clone())
    }

    /// Follows a migration's progress (completion, abort); None when it is
    /// not authorized.
    pub fn watch(&self, migration_id: &str) -> Option<watch::Receiver<IncomingProgress>> {
        self.entry(migration_id).map(|e| e.progress.subscribe())
    }

    /// What the target holds of a migration, read from its staging
    /// directory the first time; None when it is not authorized.
    pub async fn status(
        &self,
        migration_id: &str,
    ) -> Result<Option<IncomingStatus>, IncomingError> {
        let Some(entry) = self.entry(migration_id) else {
            return Ok(None);
        };
        let status = blocking(move || {
            let mut store = lock(&entry.store);
            if store.state == State::Open {
                store.load(&entry.auth.migration_id)?;
            }
            let files = store.received();
            let progress = entry.progress.borrow().clone();
            Ok(IncomingStatus {
                progress: store.figures(progress),
                files,
            })
        })
        .await?;
        Ok(Some(status))
    }

    /// Waits until the target holds everything the source sent (see
    /// [`IncomingProgress::complete`]); an error when the migration is not
    /// authorized, is aborted or closed meanwhile.
    pub async fn wait_complete(&self, migration_id: &str) -> Result<IncomingStatus, IncomingError> {
        let mut rx = self
            .watch(migration_id)
            .ok_or_else(|| IncomingError::NotTarget {
                migration_id: migration_id.to_string(),
                detail: "not authorized".into(),
            })?;
        loop {
            {
                let progress = rx.borrow_and_update();
                if let Some(reason) = &progress.aborted {
                    return Err(IncomingError::Aborted {
                        migration_id: migration_id.to_string(),
                        reason: reason.clone(),
                    });
                }
                if progress.closed {
                    return Err(closed(migration_id));
                }
                if progress.complete {
                    break;
                }
            }
            if rx.changed().await.is_err() {
                return Err(closed(migration_id));
            }
        }
        self.status(migration_id)
            .await?
            .ok_or_else(|| closed(migration_id))
    }

    fn entry(&self, migration_id: &str) -> Option<Arc<Entry>> {
        lock(&self.inner.entries).get(migration_id).cloned()
    }

    /// The entry of an authorized migration, waiting up to the
    /// authorization wait for it to appear.
    async fn wait_authorized(&self, migration_id: &str) -> Result<Arc<Entry>, IncomingError> {
        let mut rx = self.inner.authorized.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.authorization_wait;
        loop {
            rx.borrow_and_update();
            if let Some(entry) = self.entry(migration_id) {
                return Ok(entry);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(IncomingError::NotTarget {
                        migration_id: migration_id.to_string(),
                        detail: format!(
                            "no assignment names it as the target (waited {} ms)",
                            self.inner.authorization_wait.as_millis()
                        ),
                    })
                }
            }
        }
    }

    /// Serves PrepareIncoming: checks the request against the
    /// authorization, creates the staging directory, readies the kind's
    /// endpoints (once) and says what is already held.
    pub async fn prepare(
        &self,
        request: &PrepareIncomingRequest,
    ) -> Result<PrepareIncomingReply, IncomingError> {
        let id = request.migration_id.as_str();
        let entry = self.wait_authorized(id).await?;
        let auth = &entry.auth;
        if request.alloc_id != auth.alloc_id {
            return Err(mismatch(id, "alloc_id", &request.alloc_id, &auth.alloc_id));
        }
        if request.source_node != auth.source_node {
            return Err(mismatch(
                id,
                "source_node",
                &request.source_node,
                &auth.source_node,
            ));
        }
        if !request.kind.is_empty() && !auth.kind.is_empty() && request.kind != auth.kind {
            return Err(mismatch(id, "kind", &request.kind, &auth.kind));
        }
        let in_store = entry.clone();
        let received = blocking(move || {
            let mut store = lock(&in_store.store);
            store.usable(&in_store.auth.migration_id)?;
            fs::create_dir_all(&store.dir).map_err(io_err(&store.dir))?;
            store.load(&in_store.auth.migration_id)?;
            store.prepared = true;
            Ok(store.received())
        })
        .await?;
        let (endpoint, endpoints) = match &auth.endpoints {
            None => (String::new(), BTreeMap::new()),
            Some(source) => entry
                .endpoints
                .get_or_try_init(|| source())
                .await
                .map_err(|message| IncomingError::Endpoints {
                    migration_id: id.to_string(),
                    message,
                })?
                .clone(),
        };
        Ok(PrepareIncomingReply {
            endpoint,
            received,
            endpoints: endpoints.into_iter().collect(),
        })
    }

    /// Serves ConfirmIncoming: the migration must be authorized here (after
    /// the authorization wait), asked for by its source, and its endpoints
    /// readied; then the kind checks that its own transport delivered
    /// everything, waiting up to `wait` (at most [`MAX_CONFIRM_WAIT`]). A
    /// kind without such a transport has nothing more to check.
    pub async fn confirm(
        &self,
        migration_id: &str,
        source_node: &str,
        wait: Duration,
    ) -> Result<(), IncomingError> {
        // A target agent restarted midway sees its assignment set again
        // first: give it the same wait as a PrepareIncoming.
        let entry = self.wait_authorized(migration_id).await?;
        if source_node != entry.auth.source_node {
            return Err(mismatch(
                migration_id,
                "source_node",
                source_node,
                &entry.auth.source_node,
            ));
        }
        if let Some(reason) = entry.progress.borrow().aborted.clone() {
            return Err(IncomingError::Aborted {
                migration_id: migration_id.to_string(),
                reason,
            });
        }
        if entry.auth.endpoints.is_some() && entry.endpoints.get().is_none() {
            return Err(IncomingError::NotPrepared {
                migration_id: migration_id.to_string(),
            });
        }
        let Some(confirmation) = entry.auth.confirmation.clone() else {
            return Ok(());
        };
        confirmation(wait.min(MAX_CONFIRM_WAIT))
            .await
            .map_err(|message| IncomingError::Unconfirmed {
                migration_id: migration_id.to_string(),
                message,
            })
    }

    /// Serves one chunk of a Transfer stream (`first`: the stream's first
    /// chunk, which clears [`IncomingProgress::complete`]; an end-of-transfer
    /// chunk sets it when no file is partial).
    pub async fn receive(&self, chunk: TransferChunk, first: bool) -> Result<(), IncomingError> {
        let id = chunk.migration_id.clone();
        let entry = self.entry(&id).ok_or_else(|| IncomingError::NotTarget {
            migration_id: id.clone(),
            detail: "not authorized".into(),
        })?;
        blocking(move || {
            let mut store = lock(&entry.store);
            store.usable(&id)?;
            if !store.prepared {
                return Err(IncomingError::NotPrepared { migration_id: id });
            }
            if first {
                entry.progress.send_modify(|p| p.complete = false);
            }
            let applied = store.apply(&id, &chunk);
            let mut figures = store.figures(entry.progress.borrow().clone());
            if matches!(applied, Ok(Applied::EndOfTransfer)) {
                figures.complete = store.files.values().all(|h| h.complete);
            }
            entry.progress.send_if_modified(|p| {
                let changed = *p != figures;
                *p = figures;
                changed
            });
            applied.map(|_| ())
        })
        .await
    }

    /// (bytes held, whole files) of a migration, for a TransferReply.
    pub async fn totals(&self, migration_id: &str) -> Result<(u64, u32), IncomingError> {
        let entry = self
            .entry(migration_id)
            .ok_or_else(|| closed(migration_id))?;
        let id = migration_id.to_string();
        blocking(move || {
            let store = lock(&entry.store);
            store.usable(&id)?;
            let figures = store.figures(entry.progress.borrow().clone());
            Ok((figures.bytes, figures.files))
        })
        .await
    }

    /// Serves AbortIncoming: marks the migration aborted (the registry
    /// reports it until revoked) and drops its data. Returns whether it was
    /// authorized here.
    pub async fn abort(&self, migration_id: &str, reason: &str) -> Result<bool, IncomingError> {
        let Some(entry) = self.entry(migration_id) else {
            return Ok(false);
        };
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        if reason.is_empty() {
            reason = "aborted by the source (no reason given)".into();
        }
        blocking(move || {
            let mut store = lock(&entry.store);
            if store.state == State::Closed {
                return Ok(());
            }
            store.state = State::Aborted(reason.clone());
            store.open = None;
            let removed = store.remove_dir();
            store.files.clear();
            entry.progress.send_modify(|p| {
                p.aborted = Some(reason);
                p.complete = false;
                p.bytes = 0;
                p.files = 0;
            });
            removed
        })
        .await?;
        Ok(true)
    }
}

/// A request that does not match its migration's authorization: `field`
/// says `asked` where this node expects `expected`.
fn mismatch(migration_id: &str, field: &str, asked: &str, expected: &str) -> IncomingError {
    IncomingError::NotTarget {
        migration_id: migration_id.to_string(),
        detail: format!("{field} is {asked:?} but this node expects {expected:?}"),
    }
}

fn closed(migration_id: &str) -> IncomingError {
    IncomingError::Closed {
        migration_id: migration_id.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    Aborted(String),
    Closed,
}

/// What a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Data appended (or a file finished).
    Written,
    /// The sender's end-of-transfer mark: nothing written.
    EndOfTransfer,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: u64,
    complete: bool,
}

/// One migration's files on disk, and the same in memory.
struct Store {
    dir: PathBuf,
    files: BTreeMap<String, Held>,
    loaded: bool,
    prepared: bool,
    state: State,
    /// The partial file written last, kept open between its chunks.
    open: Option<(String, File)>,
}

impl Store {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            loaded: false,
            prepared: false,
            state: State::Open,
            open: None,
        }
    }

    fn usable(&self, migration_id: &str) -> Result<(), IncomingError> {
        match &self.state {
            State::Open => Ok(()),
            State::Aborted(reason) => Err(IncomingError::Aborted {
                migration_id: migration_id.to_string(),
                reason: reason.clone(),
            }),
            State::Closed => Err(closed(migration_id)),
        }
    }

    fn remove_dir(&self) -> Result<(), IncomingError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }

    fn figures(&self, mut progress: IncomingProgress) -> IncomingProgress {
        progress.bytes = self.files.values().map(|h| h.bytes).sum();
        progress.files =
            u32::try_from(self.files.values().filter(|h| h.complete).count()).unwrap_or(u32::MAX);
        progress
    }

    fn received(&self) -> Vec<ReceivedFile> {
        self.files
            .iter()
            .map(|(path, held)| ReceivedFile {
                path: path.clone(),
                bytes: held.bytes,
                complete: held.complete,
            })
            .collect()
    }

    /// Reads what the staging directory holds, once.
    fn load(&mut self, migration_id: &str) -> Result<(), IncomingError> {
        if self.loaded {
            return Ok(());
        }
        let mut files = BTreeMap::new();
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.dir)(e)),
            Ok(_) => scan(migration_id, &self.dir, "", 0, &mut files)?,
        }
        self.files = files;
        self.loaded = true;
        Ok(())
    }

    fn apply(
        &mut self,
        migration_id: &str,
        chunk: &TransferChunk,
    ) -> Result<Applied, IncomingError> {
        let path = chunk.path.as_str();
        let bad = |message: String| IncomingError::BadChunk {
            migration_id: migration_id.to_string(),
            path: path.to_string(),
            message,
        };
        check_relative_path(path).map_err(&bad)?;
        let len = chunk.data.len();
        if len > MAX_CHUNK_BYTES {
            return Err(bad(format!(
                "chunk of {len} bytes, over the limit of {MAX_CHUNK_BYTES}"
            )));
        }
        let actual = checksum(&chunk.data);
        if actual != chunk.crc32c {
            return Err(IncomingError::Checksum {
                migration_id: migration_id.to_string(),
                path: path.to_string(),
                offset: chunk.offset,
                expected: chunk.crc32c,
                actual,
            });
        }
        let held = self.files.get(path).copied();
        let held_bytes = held.map_or(0, |h| h.bytes);
        let out_of_step = |detail: &str| IncomingError::OutOfStep {
            migration_id: migration_id.to_string(),
            path: path.to_string(),
            offset: chunk.offset,
            held: held_bytes,
            detail: detail.to_string(),
        };
        if let Some(h) = held.filter(|h| h.complete) {
            // The end-of-transfer mark: accepted, nothing written.
            if len == 0 && chunk.last && chunk.offset == h.bytes && chunk.size == h.bytes {
                return Ok(Applied::EndOfTransfer);
            }
            return Err(out_of_step(" (the file is already whole)"));
        }
        if chunk.offset != held_bytes {
            return Err(out_of_step(""));
        }
        let end = held_bytes
            .checked_add(len as u64)
            .ok_or_else(|| bad("offset overflows".into()))?;
        if chunk.last && chunk.size != end {
            return Err(bad(format!(
                "last chunk ends the file at {end} bytes but says its size is {}",
                chunk.size
            )));
        }
        if held.is_none() {
            if self.files.len() >= MAX_FILES {
                return Err(IncomingError::TooManyFiles {
                    migration_id: migration_id.to_string(),
                    limit: MAX_FILES,
                });
            }
            self.check_no_conflict(path).map_err(&bad)?;
        }
        let partial = self.dir.join(format!("{path}{PARTIAL_SUFFIX}"));
        let file = self.open_partial(migration_id, path, &partial, held_bytes)?;
        if len > 0 {
            if let Err(e) = file.write_all_at(&chunk.data, held_bytes) {
                // Keep the file as long as what is held, so that a restart
                // does not count a torn write.
                let _ = file.set_len(held_bytes);
                return Err(io_err(&partial)(e));
            }
        }
        self.files.insert(
            path.to_string(),
            Held {
                bytes: end,
                complete: false,
            },
        );
        if chunk.last {
            self.finish(path, &partial, chunk.mode)?;
        }
        Ok(Applied::Written)
    }

    /// A new file must not sit under a file held, nor over a directory of
    /// files held ("a" and "a/b" cannot both exist).
    fn check_no_conflict(&self, path: &str) -> Result<(), String> {
        let mut prefix = String::new();
        for component in path.split('/') {
            if !prefix.is_empty() {
                if self.files.contains_key(&prefix) {
                    return Err(format!("conflicts with the file {prefix:?}"));
                }
                prefix.push('/');
            }
            prefix.push_str(component);
        }
        let under = format!("{path}/");
        if let Some((other, _)) = self.files.range(under.clone()..).next() {
            if other.starts_with(&under) {
                return Err(format!("conflicts with the directory of {other:?}"));
            }
        }
        Ok(())
    }

    /// The open partial file of `path`, as long as what is held of it.
    fn open_partial(
        &mut self,
        migration_id: &str,
        path: &str,
        partial: &Path,
        held_bytes: u64,
    ) -> Result<&File, IncomingError> {
        let reuse = matches!(&self.open, Some((open, _)) if open == path);
        if !reuse {
            self.open = None;
            self.make_parents(migration_id, path)?;
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(partial)
                .map_err(io_err(partial))?;
            let on_disk = file.metadata().map_err(io_err(partial))?.len();
            if on_disk != held_bytes {
                file.set_len(held_bytes).map_err(io_err(partial))?;
            }
            self.open = Some((path.to_string(), file));
        }
        match &self.open {
            Some((_, file)) => Ok(file),
            None => Err(IncomingError::Internal("partial file not open".into())),
        }
    }

    /// Creates the directories above `path`, refusing to go through
    /// anything that is not a plain directory (a symlink, a file).
    fn make_parents(&self, migration_id: &str, path: &str) -> Result<(), IncomingError> {
        let mut dir = self.dir.clone();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(IncomingError::BadChunk {
                        migration_id: migration_id.to_string(),
                        path: path.to_string(),
                        message: format!("{} exists and is not a directory", dir.display()),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(io_err(&dir))?
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }

    /// The last chunk arrived: mode, fsync, rename, fsync of the directory.
    fn finish(&mut self, path: &str, partial: &Path, mode: u32) -> Result<(), IncomingError> {
        let Some((_, file)) = self.open.take() else {
            return Err(IncomingError::Internal("partial file not open".into()));
        };
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .map_err(io_err(partial))?;
        file.sync_all().map_err(io_err(partial))?;
        drop(file);
        let whole = self.dir.join(path);
        fs::rename(partial, &whole).map_err(io_err(&whole))?;
        if let Some(parent) = whole.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        if let Some(held) = self.files.get_mut(path) {
            held.complete = true;
        }
        Ok(())
    }
}

/// Reads the files under `dir` (relative prefix `rel`) into `files`: a name
/// ending in [`PARTIAL_SUFFIX`] is a partial file, any other regular file a
/// whole one. Symlinks and names the protocol would refuse are ignored.
fn scan(
    migration_id: &str,
    dir: &Path,
    rel: &str,
    depth: usize,
    files: &mut BTreeMap<String, Held>,
) -> Result<(), IncomingError> {
    if depth >= MAX_PATH_DEPTH {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let full = entry.path();
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if meta.is_dir() {
            scan(migration_id, &full, &rel_path, depth + 1, files)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let (path, complete) = match rel_path.strip_suffix(PARTIAL_SUFFIX) {
            Some(stripped) => (stripped.to_string(), false),
            None => (rel_path, true),
        };
        if check_relative_path(&path).is_err() {
            continue;
        }
        if files.len() >= MAX_FILES {
            return Err(IncomingError::TooManyFiles {
                migration_id: migration_id.to_string(),
                limit: MAX_FILES,
            });
        }
        let held = Held {
            bytes: meta.len(),
            complete,
        };
        // A whole file wins over a stale partial one of the same name.
        match files.get(&path) {
            Some(existing) if existing.complete => {}
            _ => {
                files.insert(path, held);
            }
        }
    }
    Ok(())
}
