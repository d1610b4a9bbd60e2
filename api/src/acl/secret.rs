//! Bearer tokens on the wire: `ACCESSOR.SECRET`, where the accessor is the
//! token's public id and the secret 32 random bytes, URL-safe base64. Only
//! the SHA-256 digest of the secret is kept; a presented secret is hashed
//! and compared in constant time.
//!
//! The accessor in front lets a member find the token by id (a map lookup
//! on public data) and compare one digest, rather than look a secret up.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a secret.
pub const SECRET_BYTES: usize = 32;

/// Longest accessor accepted.
pub const MAX_ACCESSOR: usize = 64;

/// The digest kept for a secret.
pub type SecretHash = [u8; 32];

/// SHA-256 of `secret`.
pub fn hash(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
}

/// `secret` as it travels in a bearer token: URL-safe base64, unpadded.
pub fn encode(secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(secret)
}

/// A presented token, split: its accessor and the digest of its secret.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The accessor it names.
    pub accessor: &'a str,
    /// SHA-256 of the secret it carries.
    pub hash: SecretHash,
}

/// Splits `ACCESSOR.SECRET`; None when it is not of that shape (the
/// secret must decode to exactly [`SECRET_BYTES`] bytes).
pub fn parse(bearer: &str) -> Option<Presented<'_>> {
    let (accessor, secret) = bearer.split_once('.')?;
    if accessor.is_empty() || accessor.len() > MAX_ACCESSOR {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(secret).ok()?;
    (bytes.len() == SECRET_BYTES).then(|| Presented {
        accessor,
        hash: hash(&bytes),
    })
}

/// Whether two digests are equal, in time that does not depend on where
/// they differ.
pub fn same(a: &SecretHash, b: &SecretHash) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(seed: u8) -> (String, SecretHash) {
        let secret = [seed; SECRET_BYTES];
        (format!("acc-{seed}.{}", encode(&secret)), hash(&secret))
    }

    #[test]
    fn a_token_parses_back_to_its_accessor_and_digest() {
        let (bearer, digest) = token(7);
        let presented = parse(&bearer).expect("parses");
        assert_eq!(presented.accessor, "acc-7");
        assert!(same(&presented.hash, &digest));
        // 32 bytes: 43 characters of unpadded base64.
        assert_eq!(bearer.len(), "acc-7".len() + 1 + 43);
        let (_, other) = token(8);
        assert!(!same(&other, &digest));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let (bearer, _) = token(1);
        let (accessor, secret) = bearer.split_once('.').expect("dot");
        let long = "a".repeat(MAX_ACCESSOR + 1);
        for bad in [
            "",
            "no-dot",
            &format!(".{secret}"),
            &format!("{accessor}."),
            &format!("{accessor}.{}", &secret[1..]),
            &format!("{accessor}.{secret}AA"),
            &format!("{accessor}.{}!", &secret[1..]),
            &format!("{long}.{secret}"),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
