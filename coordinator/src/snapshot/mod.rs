//! Backups of the replicated state, and new clusters started from them
//! (`herd operator snapshot save|restore|inspect`, `herd coordinator
//! --recover-from`; docs/durability.md, *Backup and restore*).
//!
//! - [`capture`]: a Raft snapshot on a running member that holds every
//!   write acknowledged before the request;
//! - [`file`]: the backup file's layout, its checks and its atomic write;
//! - [`summary`]: what a backup holds, counted;
//! - [`restore`]: seeding a data dir from a backup, checked first.

pub mod capture;
pub mod file;
pub mod restore;
pub mod summary;
