//! Bearer tokens on the wire: `ACCESSOR.SECRET`, where the accessor is the
//! token's public id and the secret 32 bytes from the operating system's
//! CSPRNG, URL-safe base64. Only the SHA-256 digest of the secret is kept;
//! a presented secret is hashed and compared in constant time.
//!
//! The accessor in front lets a member find the token by id (a map lookup
//! on public data) and compare one digest, rather than look a secret up.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a secret.
pub const SECRET_BYTES: usize = 32;

/// The digest kept for a secret.
pub type SecretHash = [u8; 32];

/// A freshly made token: the bearer text goes to its owner once, the
/// accessor and digest into the replicated state.
#[derive(Debug)]
pub struct NewSecret {
    /// The public id.
    pub accessor: String,
    /// `ACCESSOR.SECRET`, what a client sends.
    pub bearer: String,
    /// SHA-256 of the secret's bytes.
    pub hash: SecretHash,
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed: {0}")]
pub struct RandomError(String);

/// Makes a token: a random accessor (UUID v4) and 32 random bytes.
pub fn generate() -> Result<NewSecret, RandomError> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| RandomError(e.to_string()))?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| RandomError(e.to_string()))?;
    let accessor = uuid::Builder::from_random_bytes(id).into_uuid().to_string();
    let bearer = format!("{accessor}.{}", URL_SAFE_NO_PAD.encode(secret));
    Ok(NewSecret {
        accessor,
        bearer,
        hash: hash(&secret),
    })
}

/// SHA-256 of `secret`.
pub fn hash(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
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
    if accessor.is_empty() || accessor.len() > 64 {
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

    #[test]
    fn a_generated_token_parses_back_to_its_accessor_and_digest() {
        let token = generate().expect("random");
        let presented = parse(&token.bearer).expect("parses");
        assert_eq!(presented.accessor, token.accessor);
        assert!(same(&presented.hash, &token.hash));
        // 32 bytes: 43 characters of unpadded base64.
        assert_eq!(token.bearer.len(), token.accessor.len() + 1 + 43);
        let other = generate().expect("random");
        assert_ne!(other.accessor, token.accessor);
        assert!(!same(&other.hash, &token.hash));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let token = generate().expect("random");
        let (accessor, secret) = token.bearer.split_once('.').expect("dot");
        for bad in [
            "",
            "no-dot",
            &format!(".{secret}"),
            &format!("{accessor}."),
            &format!("{accessor}.{}", &secret[1..]),
            &format!("{accessor}.{secret}AA"),
            &format!("{accessor}.{}!", &secret[1..]),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
