//! Bearer tokens on the wire: `ACCESSOR.SECRET`, where the accessor is the
//! token's public id and the secret 32 bytes from the operating system's
//! CSPRNG, URL-safe base64. Only the SHA-256 digest of the secret is kept;
//! a presented secret is hashed and compared in constant time.
//!
//! Parsing, hashing and comparing live in `herd_api::acl::secret` (node
//! agents check tokens too) and are re-exported here; making a secret,
//! which only coordinators do, stays here.

use herd_api::acl::secret::encode;
pub use herd_api::acl::secret::{hash, parse, same, Presented, SecretHash, SECRET_BYTES};

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
    let bearer = format!("{accessor}.{}", encode(&secret));
    Ok(NewSecret {
        accessor,
        bearer,
        hash: hash(&secret),
    })
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
}
