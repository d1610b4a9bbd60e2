//! An agent's [`proto::AllocReport`] to the [`AllocUpdate`] a coordinator
//! applies.
//!
//! One report at a time, so that a coordinator can refuse the report it
//! cannot read and still apply the rest of the request: in a rolling
//! upgrade a newer agent may send a status an older coordinator does not
//! know, and that must not cost the other reports of its batch.

use crate::alloc::{AllocStatus, AllocUpdate};
use crate::proto::agent as proto;
use crate::validate::FieldError;

/// Longest allocation id accepted in a report; real ids are far shorter.
pub const MAX_REPORT_ID: usize = 256;

/// Reads one report from the wire; the error names the field at fault.
/// The exit code and signal, when given, are appended to the detail.
impl TryFrom<proto::AllocReport> for AllocUpdate {
    type Error = FieldError;

    fn try_from(report: proto::AllocReport) -> Result<Self, FieldError> {
        if report.id.is_empty() || report.id.len() > MAX_REPORT_ID {
            return Err(FieldError::new(
                "id",
                format!(
                    "allocation ids are 1 to {MAX_REPORT_ID} bytes, got {}",
                    report.id.len()
                ),
            ));
        }
        let status = AllocStatus::parse(&report.status).ok_or_else(|| {
            FieldError::new(
                "status",
                format!(
                    "unknown status {:?}; this coordinator knows {}",
                    report.status,
                    known_statuses()
                ),
            )
        })?;
        let mut detail = report.detail;
        if let Some(code) = report.exit_code {
            detail = format!("{detail} (exit code {code})");
        }
        if let Some(signal) = report.signal {
            detail = format!("{detail} (signal {signal})");
        }
        Ok(AllocUpdate {
            id: report.id,
            generation: report.generation,
            status,
            event: report.event,
            detail: detail.trim().to_string(),
        })
    }
}

/// The status names this release reads, for error messages.
fn known_statuses() -> String {
    AllocStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &str) -> proto::AllocReport {
        proto::AllocReport {
            id: "a-1".into(),
            generation: 3,
            status: status.into(),
            at_ms: 1,
            event: "failed".into(),
            detail: "it broke".into(),
            exit_code: Some(2),
            signal: None,
        }
    }

    #[test]
    fn a_known_report_converts_with_its_exit_in_the_detail() {
        let update = AllocUpdate::try_from(report("failed")).expect("a valid report");
        assert_eq!(update.id, "a-1");
        assert_eq!(update.generation, 3);
        assert_eq!(update.status, AllocStatus::Failed);
        assert_eq!(update.detail, "it broke (exit code 2)");
    }

    #[test]
    fn an_unknown_status_names_the_field_and_what_is_known() {
        let err = AllocUpdate::try_from(report("migrating")).expect_err("unknown status");
        assert_eq!(err.field, "status");
        assert!(err.message.contains("\"migrating\""), "{err}");
        assert!(err.message.contains("running"), "{err}");
    }

    #[test]
    fn an_empty_or_huge_id_is_refused() {
        let mut empty = report("running");
        empty.id.clear();
        assert_eq!(AllocUpdate::try_from(empty).expect_err("empty").field, "id");
        let mut huge = report("running");
        huge.id = "x".repeat(MAX_REPORT_ID + 1);
        assert_eq!(AllocUpdate::try_from(huge).expect_err("huge").field, "id");
    }
}
