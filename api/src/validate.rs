//! TEMPORARY stand-in until the spec work lands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError { pub field: String, pub message: String }
impl crate::job::JobSpec { pub fn validate(&self) -> Result<(), FieldError> { Ok(()) } }
