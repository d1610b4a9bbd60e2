//! The backup file: a small self-checking header, then the state.
//!
//! ```text
//! offset  size  what
//! 0       8     magic "HERDSNAP"
//! 8       4     format version, u32 little-endian (1)
//! 12      4     header length H, u32 little-endian (at most 64 KiB)
//! 16      H     header, JSON (SnapshotHeader)
//! 16+H    4     CRC-32C of bytes 0..16+H (magic, version, length, header)
//! 20+H    P     payload: the Raft snapshot body (every record of the
//!               replicated state at the header's index), P = payload_bytes
//! ```
//!
//! The header says where the state was taken (index, term, cluster) and
//! carries the payload's CRC-32C; the file ends exactly after the payload.
//! JSON keeps the header readable with `head -c 512` and lets later
//! releases add fields; the version is outside it so that a reader can
//! refuse a layout it does not know before trusting anything else.
//! A file is written to a temporary name beside its destination, synced,
//! renamed over it and the directory synced: a crash leaves the old file or
//! the new one, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first eight bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"HERDSNAP";
/// The layout this release writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Magic, version and header length.
const PREAMBLE: usize = 16;
/// A header is a few hundred bytes; a larger length is corruption.
const MAX_HEADER: usize = 64 * 1024;
/// The payload is a Raft snapshot, which herd decodes up to 64 MiB
/// (`herd_consensus::codec::MAX_DECODED_BYTES`); a file cannot usefully be larger.
pub const MAX_PAYLOAD: u64 = herd_consensus::codec::MAX_DECODED_BYTES;

/// What the header of a backup file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The cluster the state was taken from.
    pub cluster_id: String,
    /// The last log index the state reflects.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The member that led that term (with the term, the entry's identity).
    pub leader: u64,
    /// The member that took the snapshot.
    pub member: u64,
    /// When (ms since the Unix epoch, that member's clock).
    pub created_at_ms: u64,
    /// The herd release that wrote the file ("herd 0.1.0").
    pub created_by: String,
    /// Length of the payload in bytes.
    pub payload_bytes: u64,
    /// CRC-32C (Castagnoli) of the payload.
    pub payload_crc32c: u32,
}

impl SnapshotHeader {
    /// The payload checksum as printed and compared: `crc32c:` and 8 hex digits.
    pub fn checksum(&self) -> String {
        format!("crc32c:{:08x}", self.payload_crc32c)
    }
}

/// A backup file read and verified.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Its header.
    pub header: SnapshotHeader,
    /// The payload, whose length and checksum matched the header.
    pub payload: Vec<u8>,
    /// Size of the whole file.
    pub file_bytes: u64,
}

/// Why a backup file cannot be read or written; the message names the file.
#[derive(Debug, Error)]
#[error("snapshot file {}: {problem}", path.display())]
pub struct SnapshotFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, for people.
    pub problem: String,
}

fn problem(path: &Path, text: impl Into<String>) -> SnapshotFileError {
    SnapshotFileError {
        path: path.to_path_buf(),
        problem: text.into(),
    }
}

/// CRC-32C (Castagnoli) of `payload`, as headers and `SnapshotInfo` carry it.
pub fn payload_crc32c(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// The complete file for `header` (its length and checksum fields set
/// from `payload`) and `payload`, as [`write_atomically`] writes it.
pub fn encode(mut header: SnapshotHeader, payload: &[u8]) -> Result<Vec<u8>, String> {
    header.payload_bytes = payload.len() as u64;
    header.payload_crc32c = crc32c::crc32c(payload);
    let json = serde_json::to_vec(&header).map_err(|e| format!("cannot encode header: {e}"))?;
    if json.len() > MAX_HEADER {
        return Err(format!("header of {} bytes is too large", json.len()));
    }
    let mut out = Vec::with_capacity(PREAMBLE + json.len() + 4 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks and splits the bytes of a backup file; `path` is for messages.
pub fn decode(path: &Path, bytes: Vec<u8>) -> Result<SnapshotFile, SnapshotFileError> {
    let file_bytes = bytes.len() as u64;
    if bytes.len() < PREAMBLE {
        return Err(problem(
            path,
            format!("truncated: {file_bytes} bytes, shorter than the {PREAMBLE}-byte preamble every snapshot file starts with"),
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(problem(
            path,
            "not a herd snapshot file: it does not start with HERDSNAP",
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(problem(
            path,
            format!("format version {version} is not supported: this herd reads version {FORMAT_VERSION} (the file was written by a newer herd, or is corrupt)"),
        ));
    }
    let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if header_len > MAX_HEADER {
        return Err(problem(
            path,
            format!("header length {header_len} is over the {MAX_HEADER}-byte limit: the file is corrupt"),
        ));
    }
    let header_end = PREAMBLE + header_len;
    if bytes.len() < header_end + 4 {
        return Err(problem(
            path,
            format!(
                "truncated: {file_bytes} bytes, but its header alone needs {}",
                header_end + 4
            ),
        ));
    }
    let stored = u32::from_le_bytes([
        bytes[header_end],
        bytes[header_end + 1],
        bytes[header_end + 2],
        bytes[header_end + 3],
    ]);
    let computed = crc32c::crc32c(&bytes[..header_end]);
    if stored != computed {
        return Err(problem(
            path,
            format!("header checksum mismatch (stored crc32c:{stored:08x}, computed crc32c:{computed:08x}): the file is corrupt"),
        ));
    }
    let header: SnapshotHeader = serde_json::from_slice(&bytes[PREAMBLE..header_end])
        .map_err(|e| problem(path, format!("header is not valid: {e}")))?;
    let payload_start = header_end + 4;
    let held = (bytes.len() - payload_start) as u64;
    if held < header.payload_bytes {
        return Err(problem(
            path,
            format!(
                "truncated: the payload has {held} of its {} bytes",
                header.payload_bytes
            ),
        ));
    }
    if held > header.payload_bytes {
        return Err(problem(
            path,
            format!(
                "{} unexpected bytes after the payload: the file is corrupt",
                held - header.payload_bytes
            ),
        ));
    }
    let mut payload = bytes;
    payload.drain(..payload_start);
    let computed = crc32c::crc32c(&payload);
    if computed != header.payload_crc32c {
        return Err(problem(
            path,
            format!(
                "payload checksum mismatch (header says {}, the bytes give crc32c:{computed:08x}): the file is corrupt",
                header.checksum()
            ),
        ));
    }
    Ok(SnapshotFile {
        header,
        payload,
        file_bytes,
    })
}

/// Reads and verifies the backup file at `path`: magic, version, both
/// checksums and the length, before anything is decoded from it.
pub fn read(path: &Path) -> Result<SnapshotFile, SnapshotFileError> {
    let size = std::fs::metadata(path)
        .map_err(|e| problem(path, format!("cannot read: {e}")))?
        .len();
    let limit = MAX_PAYLOAD + (PREAMBLE + MAX_HEADER + 4) as u64;
    if size > limit {
        return Err(problem(
            path,
            format!("{size} bytes is larger than any snapshot herd writes ({limit} bytes at most)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| problem(path, format!("cannot read: {e}")))?;
    decode(path, bytes)
}

/// Writes `bytes` to `path` so that a crash leaves the previous file or
/// this one: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    let name = path
        .file_name()
        .ok_or_else(|| problem(path, "names a directory, not a file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        problem(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            cluster_id: "c-1".into(),
            index: 42,
            term: 3,
            leader: 2,
            member: 1,
            created_at_ms: 1_700_000_000_000,
            created_by: "herd test".into(),
            payload_bytes: 0,
            payload_crc32c: 0,
        }
    }

    fn sample() -> Vec<u8> {
        encode(header(), b"the state, whatever its bytes").expect("encode")
    }

    #[test]
    fn a_file_round_trips_through_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.snap");
        write_atomically(&path, &sample()).expect("write");
        let file = read(&path).expect("read");
        assert_eq!(file.payload, b"the state, whatever its bytes");
        assert_eq!(file.header.index, 42);
        assert_eq!(file.header.payload_bytes, file.payload.len() as u64);
        assert_eq!(file.file_bytes, sample().len() as u64);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "temporary file left: {leftovers:?}");
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let good = sample();
        let path = Path::new("x.snap");
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let err = decode(path, bad).expect_err(&format!("byte {at} flipped was accepted"));
            assert!(
                err.to_string().starts_with("snapshot file x.snap: "),
                "{err}"
            );
        }
        for len in 0..good.len() {
            let err = decode(path, good[..len].to_vec())
                .expect_err(&format!("cut to {len} bytes was accepted"));
            assert!(err.to_string().contains("truncated"), "{len}: {err}");
        }
        let mut longer = good.clone();
        longer.push(0);
        let err = decode(path, longer).expect_err("trailing byte");
        assert!(err.to_string().contains("after the payload"), "{err}");
    }

    #[test]
    fn the_checks_name_what_is_wrong() {
        let good = sample();
        let path = Path::new("x.snap");
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let err = decode(path, bad).expect_err("payload").to_string();
        assert!(err.contains("payload checksum mismatch"), "{err}");
        let mut bad = good.clone();
        bad[20] ^= 0x04;
        let err = decode(path, bad).expect_err("header").to_string();
        assert!(err.contains("header checksum mismatch"), "{err}");
        let mut bad = good.clone();
        bad[8] = 9;
        let err = decode(path, bad).expect_err("version").to_string();
        assert!(err.contains("format version 9"), "{err}");
        let err = decode(path, b"PK\x03\x04 a zip file, not ours".to_vec())
            .expect_err("magic")
            .to_string();
        assert!(err.contains("not a herd snapshot file"), "{err}");
    }
}
