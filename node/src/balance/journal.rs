//! The journal of balancing moves made agent to agent while every
//! coordinator was away (docs/balancing.md, "Moves with the coordinators
//! away").
//!
//! *Why a journal*: with the coordinators away nobody records who owns a
//! moved allocation, and the coordinators' assignment sets, stale until
//! they return, still name the source. Both agents therefore write the move
//! to `<data_dir>/balance-moves.json` before each step that changes who
//! runs it, and their migration managers read the journal over those stale
//! sets: the source does not restart what moved away, the target does not
//! stop what arrived. Once the coordinators answer, each open move is
//! reported and closed when their sets agree.
//!
//! The file is rewritten whole (a temporary file, fsync, rename, fsync of
//! the directory) on every change: entries are few (one per move in
//! flight or awaiting the coordinators) and a torn file must never be read.
//! Every component of one agent process shares one journal per data dir
//! ([`MoveJournal::open`]); a change wakes whoever watches it
//! ([`MoveJournal::subscribe`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use herd_actors::workload::DesiredAlloc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The journal's file name in the agent's data dir.
pub const JOURNAL_FILE: &str = "balance-moves.json";
/// The most entries the journal holds; a move beyond it is not started
/// (and a peer's offer beyond it is refused).
pub const MAX_ENTRIES: usize = 256;
/// The longest move id accepted.
pub const MAX_ID_BYTES: usize = 200;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read, written or synced.
    #[error("move journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file holds something else than a journal.
    #[error("move journal {path} is not valid: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// The entry cannot be recorded.
    #[error("move {move_id}: {reason}")]
    Refused {
        /// The move.
        move_id: String,
        /// Why.
        reason: String,
    },
}

/// Which end of the move this agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The allocation ran here and leaves.
    Source,
    /// The allocation arrives here.
    Target,
}

/// Where a move stands. Forward only: `Moving → Switching → Switched →
/// Accepted | Refused`, or `Aborted` from `Moving`/`Switching`; a source's
/// move whose commit went unanswered goes `Switching → Reported →
/// Accepted | Kept | Refused`, as the coordinators decide (never
/// `Switched` or `Aborted` from `Reported`: the target's word no longer
/// counts once the coordinators were asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Agreed; the state is moving. The source's copy is the one.
    Moving,
    /// Source only: everything sent, the source paused or stopped, the
    /// target asked to take over (its answer decides).
    Switching,
    /// The target's copy is the one (the target committed).
    Switched,
    /// The coordinators took the move: the allocation is the target's at
    /// `generation + 1`. Closed once this agent's assignment set agrees.
    Accepted,
    /// The coordinators decided otherwise meanwhile: the target gives way.
    Refused,
    /// Given up before the switch-over: the source's copy is the one.
    Aborted,
    /// Source only: the target never answered the commit, and the move was
    /// reported to the coordinators, whose answer alone settles it now
    /// (the copy here stays paused until they do).
    Reported,
    /// Source only, after `Reported`: the coordinators kept the allocation
    /// here (the target was down or disowned the move), and the copy here
    /// resumed. Journalled once, so it resumes once.
    Kept,
}

impl Phase {
    /// The name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Moving => "moving",
            Phase::Switching => "switching",
            Phase::Switched => "switched",
            Phase::Accepted => "accepted",
            Phase::Refused => "refused",
            Phase::Aborted => "aborted",
            Phase::Reported => "reported",
            Phase::Kept => "kept",
        }
    }

    /// The target's copy is (or was taken as) the one running.
    pub fn target_owns(self) -> bool {
        matches!(self, Phase::Switched | Phase::Accepted)
    }
}

/// One move, as this agent recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveEntry {
    /// The move's id, the same in both journals.
    pub move_id: String,
    /// The allocation that moves (it keeps its id).
    pub alloc_id: String,
    /// Its generation on the source when the move began; the target runs
    /// it at `generation + 1`.
    pub generation: u64,
    /// The node it leaves.
    pub source: String,
    /// The node it goes to.
    pub target: String,
    /// The other agent's `AgentPeer` address.
    pub peer_addr: String,
    /// This agent's end.
    pub role: Role,
    /// Where it stands.
    pub phase: Phase,
    /// When the phase was entered, ms since the epoch (this agent's clock).
    pub at_ms: u64,
    /// What runs on the target (at `generation + 1`); the target's entry
    /// holds it from the offer on, the source's may too.
    #[serde(default)]
    pub desired: Option<DesiredAlloc>,
    /// Why it was aborted or refused.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    moves: Vec<MoveEntry>,
}

struct Inner {
    path: PathBuf,
    entries: BTreeMap<String, MoveEntry>,
    /// Reservations this agent's balancer granted, (item, sender) to the
    /// time (ms since the epoch) they lapse: what a peer's offline offer is
    /// checked against. In memory only: a restarted agent granted none.
    reserved: HashMap<(String, String), u64>,
}

/// One agent's move journal; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct MoveJournal {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for MoveJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoveJournal")
            .field("path", &self.lock().path)
            .finish()
    }
}

fn journals() -> &'static Mutex<HashMap<PathBuf, MoveJournal>> {
    static JOURNALS: OnceLock<Mutex<HashMap<PathBuf, MoveJournal>>> = OnceLock::new();
    JOURNALS.get_or_init(|| Mutex::new(HashMap::new()))
}

impl MoveJournal {
    /// The journal of the agent whose data dir is `data_dir`, read from
    /// disk the first time this process asks, shared afterwards: the
    /// balancer, the migration manager, the `AgentPeer` service and the
    /// report sender are built apart and must see one journal.
    pub fn open(data_dir: &Path) -> Result<MoveJournal, JournalError> {
        let mut all = journals().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(journal) = all.get(data_dir) {
            return Ok(journal.clone());
        }
        let journal = Self::load(&data_dir.join(JOURNAL_FILE))?;
        all.insert(data_dir.to_path_buf(), journal.clone());
        Ok(journal)
    }

    /// Reads the journal at `path` (empty if there is no file), unshared.
    pub fn load(path: &Path) -> Result<MoveJournal, JournalError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => {
                let file: JournalFile =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                file.moves
                    .into_iter()
                    .map(|e| (e.move_id.clone(), e))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(JournalError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let (changed, _) = watch::channel(0);
        Ok(MoveJournal {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                entries,
                reserved: HashMap::new(),
            })),
            changed: Arc::new(changed),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every entry, in move id order.
    pub fn entries(&self) -> Vec<MoveEntry> {
        self.lock().entries.values().cloned().collect()
    }

    /// The entry of `move_id`.
    pub fn get(&self, move_id: &str) -> Option<MoveEntry> {
        self.lock().entries.get(move_id).cloned()
    }

    /// The open entry about `alloc_id`, if any.
    pub fn of_alloc(&self, alloc_id: &str) -> Option<MoveEntry> {
        self.lock()
            .entries
            .values()
            .find(|e| e.alloc_id == alloc_id)
            .cloned()
    }

    /// The balancer reserved room for `item` from `from` until `until_ms`
    /// (ms since the epoch): an offline offer of it from that peer is
    /// authorized until then.
    pub fn reserve(&self, item: &str, from: &str, until_ms: u64) {
        let mut inner = self.lock();
        let now = herd_api::clock::now_ms();
        inner.reserved.retain(|_, until| *until > now);
        if inner.reserved.len() < MAX_ENTRIES {
            inner
                .reserved
                .insert((item.to_string(), from.to_string()), until_ms);
        }
    }

    /// The reservation of `item` from `from` ended (settled, cancelled or
    /// lapsed).
    pub fn release(&self, item: &str, from: &str) {
        self.lock()
            .reserved
            .remove(&(item.to_string(), from.to_string()));
    }

    /// Whether the balancer holds a live reservation of `item` from `from`.
    pub fn is_reserved(&self, item: &str, from: &str) -> bool {
        let now = herd_api::clock::now_ms();
        self.lock()
            .reserved
            .get(&(item.to_string(), from.to_string()))
            .is_some_and(|until| *until > now)
    }

    /// Records a new move, durably, before anything moves. Refused if the
    /// id is bad, already known, or the allocation is already in a move.
    pub fn record(&self, entry: MoveEntry) -> Result<(), JournalError> {
        let refuse = |reason: String| JournalError::Refused {
            move_id: entry.move_id.chars().take(MAX_ID_BYTES).collect(),
            reason,
        };
        if entry.move_id.is_empty() || entry.move_id.len() > MAX_ID_BYTES {
            return Err(refuse(format!(
                "a move id must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
        let mut inner = self.lock();
        if inner.entries.contains_key(&entry.move_id) {
            return Err(refuse("already recorded".into()));
        }
        if let Some(other) = inner
            .entries
            .values()
            .find(|e| e.alloc_id == entry.alloc_id)
        {
            return Err(refuse(format!(
                "allocation {} is already in move {} ({})",
                entry.alloc_id,
                other.move_id,
                other.phase.as_str()
            )));
        }
        if inner.entries.len() >= MAX_ENTRIES {
            return Err(refuse(format!("the journal holds {MAX_ENTRIES} moves")));
        }
        inner.entries.insert(entry.move_id.clone(), entry);
        self.persist(inner)
    }

    /// Moves `move_id` to `phase` (forward only: a phase at or before the
    /// current one changes nothing), durably. Returns the entry as it is
    /// now.
    pub fn advance(
        &self,
        move_id: &str,
        phase: Phase,
        reason: Option<String>,
    ) -> Result<MoveEntry, JournalError> {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(move_id) else {
            return Err(JournalError::Refused {
                move_id: move_id.to_string(),
                reason: "not in the journal".into(),
            });
        };
        if !allowed(entry.phase, phase) {
            return Ok(entry.clone());
        }
        entry.phase = phase;
        entry.at_ms = herd_api::clock::now_ms();
        if reason.is_some() {
            entry.reason = reason;
        }
        let now = entry.clone();
        self.persist(inner)?;
        Ok(now)
    }

    /// Forgets `move_id`: the coordinators' record says all of it now.
    pub fn close(&self, move_id: &str) -> Result<(), JournalError> {
        let mut inner = self.lock();
        if inner.entries.remove(move_id).is_none() {
            return Ok(());
        }
        self.persist(inner)
    }

    fn persist(&self, inner: std::sync::MutexGuard<'_, Inner>) -> Result<(), JournalError> {
        let file = JournalFile {
            moves: inner.entries.values().cloned().collect(),
        };
        let path = inner.path.clone();
        let written = write_atomically(&path, &file);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        written
    }
}

/// Whether a move in `from` may go to `to`.
fn allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    matches!(
        (from, to),
        (Moving, Switching | Switched | Aborted)
            | (Switching, Switched | Aborted | Reported)
            | (Switched, Accepted | Refused)
            | (Reported, Accepted | Kept | Refused)
    )
}

fn write_atomically(path: &Path, file: &JournalFile) -> Result<(), JournalError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| JournalError::Io { path: p, source }
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| JournalError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, alloc: &str, role: Role) -> MoveEntry {
        MoveEntry {
            move_id: id.into(),
            alloc_id: alloc.into(),
            generation: 3,
            source: "n1".into(),
            target: "n2".into(),
            peer_addr: "127.0.0.1:1".into(),
            role,
            phase: Phase::Moving,
            at_ms: 1,
            desired: None,
            reason: None,
        }
    }

    #[test]
    fn moves_survive_a_restart_and_only_go_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(JOURNAL_FILE);
        let journal = MoveJournal::load(&path).expect("empty journal");
        assert!(journal.entries().is_empty());
        let changes = journal.subscribe();
        journal
            .record(entry("m1", "a1", Role::Source))
            .expect("record");
        assert!(changes.has_changed().expect("watch"));
        journal
            .advance("m1", Phase::Switching, None)
            .expect("switching");
        // Backwards changes nothing.
        let e = journal.advance("m1", Phase::Moving, None).expect("no-op");
        assert_eq!(e.phase, Phase::Switching);
        // Aborted after Switched is not allowed.
        journal
            .advance("m1", Phase::Switched, None)
            .expect("switched");
        let e = journal
            .advance("m1", Phase::Aborted, Some("late".into()))
            .expect("no-op");
        assert_eq!(e.phase, Phase::Switched);

        let again = MoveJournal::load(&path).expect("reload");
        let e = again.get("m1").expect("m1 kept");
        assert_eq!(e.phase, Phase::Switched);
        assert_eq!(e.role, Role::Source);
        assert_eq!(e.generation, 3);
        assert_eq!(again.of_alloc("a1").map(|e| e.move_id), Some("m1".into()));

        again
            .advance("m1", Phase::Accepted, None)
            .expect("accepted");
        again.close("m1").expect("close");
        assert!(MoveJournal::load(&path)
            .expect("reload")
            .entries()
            .is_empty());
    }

    #[test]
    fn one_move_per_allocation_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = MoveJournal::load(&dir.path().join(JOURNAL_FILE)).expect("journal");
        journal
            .record(entry("m1", "a1", Role::Target))
            .expect("record");
        let err = journal
            .record(entry("m2", "a1", Role::Target))
            .expect_err("second move of a1");
        assert!(err.to_string().contains("already in move m1"), "{err}");
        let err = journal
            .record(entry("m1", "a2", Role::Target))
            .expect_err("same id");
        assert!(err.to_string().contains("already recorded"), "{err}");
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(journal.record(entry(&long, "a3", Role::Target)).is_err());
        assert!(journal.record(entry("", "a3", Role::Target)).is_err());
        assert!(journal.advance("nope", Phase::Switched, None).is_err());
    }

    #[test]
    fn reservations_authorize_one_item_from_one_peer_until_they_lapse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = MoveJournal::load(&dir.path().join(JOURNAL_FILE)).expect("journal");
        let now = herd_api::clock::now_ms();
        journal.reserve("a1", "n1", now + 60_000);
        journal.reserve("a2", "n1", now.saturating_sub(1));
        assert!(journal.is_reserved("a1", "n1"));
        assert!(!journal.is_reserved("a1", "n3"), "another sender");
        assert!(!journal.is_reserved("a2", "n1"), "lapsed");
        journal.release("a1", "n1");
        assert!(!journal.is_reserved("a1", "n1"));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(JOURNAL_FILE);
        std::fs::write(&path, b"{not json").expect("write");
        let err = MoveJournal::load(&path).expect_err("corrupt");
        assert!(err.to_string().contains(JOURNAL_FILE), "{err}");
    }

    #[test]
    fn open_shares_one_journal_per_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = MoveJournal::open(dir.path()).expect("open");
        let b = MoveJournal::open(dir.path()).expect("open again");
        a.record(entry("m1", "a1", Role::Source)).expect("record");
        assert!(b.get("m1").is_some());
    }

    #[test]
    fn a_reported_move_heeds_only_the_coordinators() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(JOURNAL_FILE);
        let journal = MoveJournal::load(&path).expect("journal");
        journal
            .record(entry("m1", "a1", Role::Source))
            .expect("record");
        // Not reported before the commit was asked.
        let e = journal.advance("m1", Phase::Reported, None).expect("no-op");
        assert_eq!(e.phase, Phase::Moving);
        journal
            .advance("m1", Phase::Switching, None)
            .expect("switching");
        journal
            .advance("m1", Phase::Reported, None)
            .expect("reported");
        // A late word from the target changes nothing now.
        for late in [Phase::Switched, Phase::Aborted, Phase::Moving] {
            let e = journal.advance("m1", late, None).expect("no-op");
            assert_eq!(e.phase, Phase::Reported, "{late:?}");
        }
        // Kept survives a restart, and is final: kept once, resumed once.
        journal
            .advance("m1", Phase::Kept, Some("target down".into()))
            .expect("kept");
        let again = MoveJournal::load(&path).expect("reload");
        let e = again.get("m1").expect("m1");
        assert_eq!(
            (e.phase, e.reason.as_deref()),
            (Phase::Kept, Some("target down"))
        );
        for later in [
            Phase::Kept,
            Phase::Accepted,
            Phase::Refused,
            Phase::Switched,
        ] {
            let e = again.advance("m1", later, None).expect("no-op");
            assert_eq!(e.phase, Phase::Kept, "{later:?}");
        }
        assert!(!Phase::Kept.target_owns());
        assert!(!Phase::Reported.target_owns());

        // The other ends of a reported move: the target's, or refused.
        for (end, id) in [(Phase::Accepted, "m2"), (Phase::Refused, "m3")] {
            journal.record(entry(id, id, Role::Source)).expect("record");
            journal
                .advance(id, Phase::Switching, None)
                .expect("switching");
            journal
                .advance(id, Phase::Reported, None)
                .expect("reported");
            assert_eq!(journal.advance(id, end, None).expect("end").phase, end);
        }
    }
}
