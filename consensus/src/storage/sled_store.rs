//! The durable [`KvStore`]: sled 0.34, made truly durable.
//!
//! sled's `flush` writes its buffers and calls `sync_file_range`, which
//! neither flushes the drive's volatile cache nor the file's metadata, so an
//! acknowledged write could vanish on power loss. [`SledStore::sync`]
//! therefore follows sled's flush with `fdatasync` on sled's data file and
//! `fsync` on any large-value ("blob") file sled wrote since the last sync,
//! plus their directory. See docs/durability.md.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{KvStore, Pair, Space, StoreError, WriteOp};

/// sled's I/O buffer and segment size for new stores: 8 MiB, not sled's
/// 512 KiB default.
///
/// sled writes any page over a quarter of a segment to a file of its own (a
/// "blob": create, write, fsync file and directory, later unlink). Raft log
/// leaves hold up to 16 batched entries of tens of KiB each, so with the
/// default nearly every log page became a blob file under load; with 8 MiB
/// none does. sled cannot change the size of an existing store, so a store
/// keeps the size it was created with (see [`segment_size_for`]).
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// A sled database with one tree per [`Space`].
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
    data_file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

/// How long an open waits for the directory's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens `config`'s database, waiting up to [`LOCK_WAIT`] while its lock
/// is held: a handle this process just dropped (a data dir seeded from a
/// snapshot, then opened to serve) releases the lock only when sled's own
/// threads let go of it, a moment later. A lock still held after that is
/// another live process's, and the error says so.
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let waited = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && waited.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let err = |message: String| StoreError {
            engine: "sled",
            location: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
        let config = sled::Config::new()
            .path(dir)
            .segment_size(segment_size_for(dir))
            .mode(sled::Mode::HighThroughput)
            // herd decides when to make data durable; sled's background
            // flusher would only add unsynchronised writes.
            .flush_every_ms(None);
        let db = open_waiting_for_lock(&config).map_err(|e| err(format!("cannot open: {e}")))?;
        let open_tree = |space: Space| {
            db.open_tree(space.name())
                .map_err(|e| err(format!("cannot open tree {}: {e}", space.name())))
        };
        let log = open_tree(Space::Log)?;
        let meta = open_tree(Space::Meta)?;
        let state = open_tree(Space::State)?;
        let data_file = File::open(dir.join("db"))
            .map_err(|e| err(format!("cannot open sled's data file: {e}")))?;
        // sled writes `conf` once at creation without syncing it.
        File::open(dir.join("conf"))
            .and_then(|f| f.sync_all())
            .map_err(|e| err(format!("cannot sync sled's conf file: {e}")))?;
        sync_dir(dir).map_err(|e| err(format!("cannot sync directory: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            log,
            meta,
            state,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Log => &self.log,
            Space::Meta => &self.meta,
            Space::State => &self.state,
        }
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            engine: "sled",
            location: self.dir.display().to_string(),
            message,
        }
    }

    /// fsyncs blob files sled created since the last call, and their directory.
    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let blob_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Garbage-collected between listing and opening: nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_dir(&blob_dir)?;
        }
        *synced = present;
        Ok(())
    }
}

/// The segment size to open `dir` with: the one recorded in sled's `conf`
/// when the store exists (sled refuses any other), else [`SEGMENT_SIZE`].
///
/// An unreadable or unparsable `conf` also yields [`SEGMENT_SIZE`]: sled then
/// reads the file itself and reports what is wrong with it.
fn segment_size_for(dir: &Path) -> usize {
    let Ok(conf) = std::fs::read(dir.join("conf")) else {
        return SEGMENT_SIZE;
    };
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: "))
        .and_then(|size| size.trim().parse().ok())
        .unwrap_or(SEGMENT_SIZE)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl KvStore for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree(space)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.error(format!("get in {}: {e}", space.name())))
    }

    fn write(&self, space: Space, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let tree = self.tree(space);
        let failed = |e: sled::Error| self.error(format!("write to {}: {e}", space.name()));
        // One op is atomic on its own. A sled batch is not free: to make it
        // atomic sled writes its I/O buffer out twice (before and after a
        // batch manifest), each a pwrite, a sync_file_range and a wake-up
        // of its I/O thread. Skipping it for single writes cut those
        // buffer writes from seven to three per Raft entry.
        let ops = match <[WriteOp; 1]>::try_from(ops) {
            Ok([WriteOp::Put(k, v)]) => return tree.insert(k, v).map(drop).map_err(failed),
            Ok([WriteOp::Delete(k)]) => return tree.remove(k).map(drop).map_err(failed),
            Err(ops) => ops,
        };
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => batch.insert(k, v),
                WriteOp::Delete(k) => batch.remove(k),
            }
        }
        tree.apply_batch(batch).map_err(failed)
    }

    fn discard_range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        // Keys only, one plain removal each: neither the values (megabytes
        // of log) nor one batch manifest for thousands of removals.
        let tree = self.tree(space);
        let keys = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        }
        .keys();
        let failed = |e: sled::Error| self.error(format!("discard from {}: {e}", space.name()));
        for key in keys {
            tree.remove(key.map_err(failed)?).map_err(failed)?;
        }
        Ok(())
    }

    fn range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<Pair>, StoreError> {
        let tree = self.tree(space);
        let iter = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        };
        iter.map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.error(format!("scan of {}: {e}", space.name())))
        })
        .collect()
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        self.tree(space)
            .last()
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(|e| self.error(format!("last of {}: {e}", space.name())))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| self.error(format!("flush: {e}")))?;
        self.data_file
            .sync_data()
            .map_err(|e| self.error(format!("fdatasync of data file: {e}")))?;
        self.sync_new_blobs()
            .map_err(|e| self.error(format!("fsync of blob files: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        super::super::conformance::check_all(&store);
    }

    #[test]
    fn keeps_the_segment_size_a_store_was_created_with() {
        // A store made by an older herd, with sled's default segment size,
        // must still open (sled refuses a different size).
        let old = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::Config::new()
                .path(old.path())
                .segment_size(512 * 1024)
                .open()
                .expect("open with the old size");
            db.insert(b"k", b"v".to_vec()).expect("insert");
            db.flush().expect("flush");
        }
        assert_eq!(segment_size_for(old.path()), 512 * 1024);
        SledStore::open(old.path()).expect("reopen an old store");
        let fresh = tempfile::tempdir().expect("tempdir");
        assert_eq!(segment_size_for(fresh.path()), SEGMENT_SIZE);
        SledStore::open(fresh.path()).expect("open");
        assert_eq!(segment_size_for(fresh.path()), SEGMENT_SIZE);
    }

    #[test]
    fn synced_writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            let big = vec![7u8; 3 * 1024 * 1024]; // over sled's blob threshold (a quarter segment)
            store
                .write(
                    Space::Meta,
                    vec![
                        WriteOp::Put(b"k".to_vec(), b"v".to_vec()),
                        WriteOp::Put(b"big".to_vec(), big),
                    ],
                )
                .expect("write");
            store.sync().expect("sync");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.get(Space::Meta, b"k").expect("get"),
            Some(b"v".to_vec())
        );
        assert_eq!(
            store
                .get(Space::Meta, b"big")
                .expect("get")
                .map(|v| v.len()),
            Some(3 * 1024 * 1024)
        );
    }
}
