//! The one binary encoding used for the log, the state and Raft messages.
//!
//! bincode with a hard size limit: bytes from disk or from the network are
//! untrusted, and a corrupt length prefix must produce an error, not a
//! multi-gigabyte allocation.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ConsensusError;

/// Largest message or record herd decodes: Raft batches and snapshot chunks stay well below.
pub const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_DECODED_BYTES)
}

/// Encodes a value; fails only for values over [`MAX_DECODED_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ConsensusError> {
    options()
        .serialize(value)
        .map_err(|e| ConsensusError::Decode {
            what: std::any::type_name::<T>().to_string(),
            message: format!("cannot encode: {e}"),
        })
}

/// Decodes a value, naming `what` in the error so a corrupt record can be found.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ConsensusError> {
    options()
        .deserialize(bytes)
        .map_err(|e| ConsensusError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
}

/// Encodes a list of opaque byte strings (a batch of commands or answers).
///
/// The bytes go through serde's byte-string path: one copy per item instead
/// of one visitor call per byte, with the same bytes on disk and on the wire
/// as a plain `Vec<Vec<u8>>` (bincode writes both as a length and the bytes).
pub fn encode_batch(items: &[Vec<u8>]) -> Result<Vec<u8>, ConsensusError> {
    let borrowed: Vec<&serde_bytes::Bytes> = items
        .iter()
        .map(|item| serde_bytes::Bytes::new(item))
        .collect();
    encode(&borrowed)
}

/// Decodes what [`encode_batch`] wrote (or a plain encoded `Vec<Vec<u8>>`).
pub fn decode_batch(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>, ConsensusError> {
    let items: Vec<serde_bytes::ByteBuf> = decode(bytes, what)?;
    Ok(items
        .into_iter()
        .map(serde_bytes::ByteBuf::into_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let value = (7u64, "seven".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&value).expect("encode");
        let back: (u64, String, Vec<u8>) = decode(&bytes, "tuple").expect("decode");
        assert_eq!(back, value);
        // A length prefix claiming ~2^62 bytes must fail cleanly, not allocate.
        let hostile = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        let err = decode::<Vec<u8>>(&hostile, "hostile").unwrap_err();
        assert!(err.to_string().contains("hostile"), "{err}");
        // Trailing garbage is refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u64, String, Vec<u8>)>(&longer, "tuple").is_err());
    }

    #[test]
    fn batches_keep_the_plain_vec_encoding() {
        // Logs written before the byte-string path must still decode, and
        // new members must write what old ones read.
        let items = vec![vec![], vec![1u8; 300], b"put x".to_vec()];
        let plain = encode(&items).expect("encode plain");
        assert_eq!(encode_batch(&items).expect("encode batch"), plain);
        assert_eq!(decode_batch(&plain, "batch").expect("decode"), items);
        let hostile = [0x01u8, 0xfc, 0xff, 0xff, 0xff, 0x7f];
        let err = decode_batch(&hostile, "hostile batch").unwrap_err();
        assert!(err.to_string().contains("hostile batch"), "{err}");
    }
}
