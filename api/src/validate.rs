//! The semantic rules for job specs, written once.
//!
//! A spec can arrive from a TOML file ([`crate::spec_file`]) or from the
//! network ([`crate::convert`]); both end in [`JobSpec::validate`], and the
//! server calls it again on every request, so no other code needs to re-check
//! these limits. Errors name the offending field by the dotted path it has in
//! a spec file, so the file parser can point at the exact line.

use std::fmt;

use crate::job::{JobSpec, TaskSpec, KNOWN_DRIVERS};
use crate::placement::{PlacementSpec, SpreadPolicy};
use crate::resources::{format_memory, Resources, MIB, TIB};

/// A rule a spec broke: which field, and what the user should change.
///
/// `field` is the dotted path of the field as written in a spec file
/// (`"priority"`, `"task.resources.memory"`, `"task.args[3]"`,
/// `"task.env.FOO"`), so callers can map it back to a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    /// Dotted path of the offending field, as in the TOML spec file.
    pub field: String,
    /// What is wrong and what is accepted, for a person to act on.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`; a shorthand used by validation and conversion.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest job name, in characters; names appear in paths and log lines.
pub const MAX_NAME_LEN: usize = 128;
/// Most instances one job may ask for, to bound scheduler work per job.
pub const MAX_COUNT: u32 = 10_000;
/// Highest priority; priorities run from 0 to this.
pub const MAX_PRIORITY: u32 = 100;
/// Most arguments a task may have.
pub const MAX_ARGS: usize = 1024;
/// Longest single argument, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Most environment variables a task may set.
pub const MAX_ENV_VARS: usize = 256;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Longest `task.command` and `task.workdir`, in bytes (a path).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most bytes of text one task may carry in all (command, args, env,
/// driver settings, workdir): every job spec is replicated to every
/// coordinator and kept in memory, so the per-field limits alone (which
/// multiply to megabytes) are not enough.
pub const MAX_TASK_TEXT_BYTES: usize = 1024 * 1024;
/// Most driver settings in `[task.config]`.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Longest value of one driver setting.
pub const MAX_CONFIG_VALUE_BYTES: usize = 1024;
/// Most CPU one task may reserve, in millicores (1000 cores).
pub const MAX_CPU_MILLIS: u64 = 1_000_000;
/// Least memory a task may reserve; below this nothing useful runs.
pub const MIN_MEMORY_BYTES: u64 = MIB;
/// Most memory one task may reserve.
pub const MAX_MEMORY_BYTES: u64 = 64 * TIB;
/// Most GPUs one task may reserve.
pub const MAX_GPUS: u32 = 1024;
/// Longest GPU model name, in characters.
pub const MAX_GPU_MODEL_LEN: usize = 64;
/// Most `[[constraint]]` entries per job: each is checked on every node.
pub const MAX_CONSTRAINTS: usize = 32;
/// Most `[[affinity]]` entries per job: each is scored on every node.
pub const MAX_AFFINITIES: usize = 32;
/// Longest label key a constraint, affinity or spread may name, in characters.
pub const MAX_LABEL_LEN: usize = 128;
/// Longest label value a constraint or affinity may compare with.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Largest affinity weight; weights run from minus this to this, except 0.
pub const MAX_AFFINITY_WEIGHT: i32 = 100;

/// An inclusive range an integer field must lie in, with the one message
/// used both here and by the spec-file parser for values that do not even
/// fit the field's Rust type (negative, or too large).
pub(crate) struct IntRange {
    pub(crate) min: u64,
    pub(crate) max: u64,
    /// Unit appended to the bounds, with its leading space.
    pub(crate) unit: &'static str,
}

impl IntRange {
    /// "must be between MIN and MAX[ unit], got GOT".
    pub(crate) fn message(&self, got: impl fmt::Display) -> String {
        format!(
            "must be between {} and {}{}, got {got}",
            self.min, self.max, self.unit
        )
    }

    fn check(&self, field: &str, value: u64) -> Result<(), FieldError> {
        if (self.min..=self.max).contains(&value) {
            Ok(())
        } else {
            Err(FieldError::new(field, self.message(value)))
        }
    }
}

/// The rule for `count`.
pub(crate) const COUNT_RANGE: IntRange = IntRange {
    min: 1,
    max: MAX_COUNT as u64,
    unit: "",
};
/// The rule for `priority`.
pub(crate) const PRIORITY_RANGE: IntRange = IntRange {
    min: 0,
    max: MAX_PRIORITY as u64,
    unit: "",
};
/// The rule for `task.resources.cpu`: every task must reserve some CPU.
pub(crate) const CPU_RANGE: IntRange = IntRange {
    min: 1,
    max: MAX_CPU_MILLIS,
    unit: " millicores (1000 is one core)",
};
/// The rule for `task.resources.gpus`.
pub(crate) const GPUS_RANGE: IntRange = IntRange {
    min: 0,
    max: MAX_GPUS as u64,
    unit: "",
};

/// The message for a memory reservation out of range; `got` is already
/// formatted (a size such as "512KiB", or a raw negative number).
pub(crate) fn memory_range_message(got: impl fmt::Display) -> String {
    format!(
        "must be between {} and {}, got {got}",
        format_memory(MIN_MEMORY_BYTES),
        format_memory(MAX_MEMORY_BYTES)
    )
}

/// The path of `key` inside the table at `parent`, as TOML would write it:
/// bare when it can be, quoted otherwise (`task.env.FOO`, `task.env."A.B"`).
pub(crate) fn join_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of environment variable `key` (`task.env.FOO`).
pub(crate) fn env_path(key: &str) -> String {
    join_path("task.env", key)
}

/// `value` of `field` is at most `max` bytes.
fn at_most_bytes(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

impl TaskSpec {
    /// The task's text in all is at most [`MAX_TASK_TEXT_BYTES`]; the error
    /// names the largest part, the one to shrink.
    fn check_text_total(&self) -> Result<(), FieldError> {
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        };
        let parts = [
            ("task.command", self.command.as_deref().map_or(0, str::len)),
            ("task.args", self.args.iter().map(String::len).sum()),
            ("task.env", pairs(&self.env)),
            ("task.config", pairs(&self.config)),
            ("task.workdir", self.workdir.as_deref().map_or(0, str::len)),
        ];
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        if total <= MAX_TASK_TEXT_BYTES {
            return Ok(());
        }
        let (largest, bytes) = parts
            .iter()
            .max_by_key(|(_, n)| *n)
            .copied()
            .unwrap_or(("task", total));
        Err(FieldError::new(
            largest,
            format!(
                "the task's text is {total} bytes in all ({bytes} of them here); at most \
                 {MAX_TASK_TEXT_BYTES} bytes are allowed (MAX_TASK_TEXT_BYTES): ship large \
                 inputs as files the task reads, not in its spec"
            ),
        ))
    }
}

fn no_nul(field: impl Into<String>, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        Err(FieldError::new(field, "must not contain NUL bytes"))
    } else {
        Ok(())
    }
}

impl JobSpec {
    /// Checks only what the replicated state relies on (the name, which
    /// keys its records, and the instance count and priority, which size
    /// and order its work): rules frozen since the first release.
    ///
    /// `apply` calls this instead of [`JobSpec::validate`]: every member
    /// must reach the same verdict on an entry whichever release replays
    /// it, and the full rules (driver settings above all) grow stricter
    /// from release to release. A spec is checked in full where it enters,
    /// at the coordinator's API.
    pub fn validate_stored(&self) -> Result<(), FieldError> {
        validate_name(&self.name)?;
        COUNT_RANGE.check("count", u64::from(self.count))?;
        PRIORITY_RANGE.check("priority", u64::from(self.priority))
    }

    /// Checks every semantic rule on the whole spec and returns the first
    /// broken one. Cheap and pure: the server calls it on every network input,
    /// the CLI and spec-file parser call it before submitting.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name(&self.name)?;
        COUNT_RANGE.check("count", u64::from(self.count))?;
        PRIORITY_RANGE.check("priority", u64::from(self.priority))?;
        self.task.validate()?;
        self.placement.validate()?;
        if let Some(autoscale) = &self.autoscale {
            autoscale.validate(self.count, &self.task.driver)?;
        }
        if let Some(after) = self.stop_after_disconnect {
            if !(MIN_STOP_AFTER_DISCONNECT..=MAX_STOP_AFTER_DISCONNECT).contains(&after) {
                return Err(FieldError::new(
                    "stop_after_disconnect",
                    format!(
                        "must be between {}s and {}s, got {} ms; leave it out to keep \
                         instances running while their node is cut off",
                        MIN_STOP_AFTER_DISCONNECT.as_secs(),
                        MAX_STOP_AFTER_DISCONNECT.as_secs(),
                        after.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Shortest `stop_after_disconnect`: a node must miss a few heartbeats
/// before its work is stopped, or one slow round trip would stop it.
pub const MIN_STOP_AFTER_DISCONNECT: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest `stop_after_disconnect`: a day.
pub const MAX_STOP_AFTER_DISCONNECT: std::time::Duration = std::time::Duration::from_secs(86_400);

impl PlacementSpec {
    /// Checks constraints, affinities and the spread label. Paths are the
    /// spec file's: `constraint[0].op`, `affinity[1].weight`, `spread`.
    /// (A gang needs no rule of its own: `count` is at least 1.)
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(FieldError::new(
                "constraint",
                format!(
                    "at most {MAX_CONSTRAINTS} constraints are allowed, got {}",
                    self.constraints.len()
                ),
            ));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            let at = format!("constraint[{i}]");
            label_key(&format!("{at}.label"), &c.label)?;
            let op = c.op.as_str();
            match (&c.value, c.op.needs_value()) {
                (None, true) => {
                    return Err(FieldError::new(
                        format!("{at}.value"),
                        format!("is required with op \"{op}\" (e.g. value = \"r7\")"),
                    ))
                }
                (Some(_), false) => {
                    return Err(FieldError::new(
                        format!("{at}.value"),
                        format!("must be left out with op \"{op}\", which matches any value"),
                    ))
                }
                (Some(value), true) => label_value(&format!("{at}.value"), value)?,
                (None, false) => {}
            }
        }
        if self.affinities.len() > MAX_AFFINITIES {
            return Err(FieldError::new(
                "affinity",
                format!(
                    "at most {MAX_AFFINITIES} affinities are allowed, got {}",
                    self.affinities.len()
                ),
            ));
        }
        for (i, a) in self.affinities.iter().enumerate() {
            let at = format!("affinity[{i}]");
            label_key(&format!("{at}.label"), &a.label)?;
            label_value(&format!("{at}.value"), &a.value)?;
            if a.weight == 0 || a.weight.abs() > MAX_AFFINITY_WEIGHT {
                return Err(FieldError::new(
                    format!("{at}.weight"),
                    weight_message(a.weight),
                ));
            }
        }
        if let SpreadPolicy::Label(label) = &self.spread {
            label_key("spread", label)?;
        }
        Ok(())
    }
}

/// The message for an affinity weight out of range; `got` as written.
pub(crate) fn weight_message(got: impl fmt::Display) -> String {
    format!(
        "must be between -{MAX_AFFINITY_WEIGHT} and {MAX_AFFINITY_WEIGHT} and not 0 \
         (negative avoids matching nodes), got {got}"
    )
}

fn label_key(field: &str, key: &str) -> Result<(), FieldError> {
    let len = key.chars().count();
    if len == 0 {
        return Err(FieldError::new(
            field,
            "must name a node label, e.g. \"rack\"",
        ));
    }
    if len > MAX_LABEL_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_LABEL_LEN} characters, got {len}"),
        ));
    }
    no_nul(field, key)
}

fn label_value(field: &str, value: &str) -> Result<(), FieldError> {
    let len = value.chars().count();
    if len > MAX_LABEL_VALUE_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_LABEL_VALUE_LEN} characters, got {len}"),
        ));
    }
    no_nul(field, value)
}

fn validate_name(name: &str) -> Result<(), FieldError> {
    const ALLOWED: &str = "use only lower-case letters a-z, digits 0-9, `-`, `_` and `.`";
    let len = name.chars().count();
    if len == 0 {
        return Err(FieldError::new(
            "name",
            format!("must not be empty; use 1 to {MAX_NAME_LEN} characters ({ALLOWED})"),
        ));
    }
    if len > MAX_NAME_LEN {
        return Err(FieldError::new(
            "name",
            format!("must be at most {MAX_NAME_LEN} characters, got {len}"),
        ));
    }
    if let Some((position, bad)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)))
    {
        return Err(FieldError::new(
            "name",
            format!("contains {bad:?} at position {}; {ALLOWED}", position + 1),
        ));
    }
    if let Some(first) = name.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        return Err(FieldError::new(
            "name",
            format!("must start with a lower-case letter or a digit, not {first:?}"),
        ));
    }
    Ok(())
}

impl TaskSpec {
    /// Checks the task's own rules (driver, command, arguments, environment,
    /// working directory, resources, then the driver's settings through
    /// [`crate::driver_settings::parse`], the parser the node's driver uses
    /// too); part of [`JobSpec::validate`], and used alone where a task
    /// arrives without its job. Paths start with `task.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !KNOWN_DRIVERS.contains(&self.driver.as_str()) {
            return Err(FieldError::new(
                "task.driver",
                format!(
                    "unknown driver {:?}; known drivers: {}",
                    self.driver,
                    KNOWN_DRIVERS.join(", ")
                ),
            ));
        }

        match self.command.as_deref() {
            None => {}
            Some("") => {
                return Err(FieldError::new(
                    "task.command",
                    "must not be empty; give the program to run",
                ));
            }
            Some(command) => {
                at_most_bytes("task.command", command, MAX_PATH_BYTES)?;
                no_nul("task.command", command)?
            }
        }

        if self.args.len() > MAX_ARGS {
            return Err(FieldError::new(
                "task.args",
                format!(
                    "at most {MAX_ARGS} arguments are allowed, got {}",
                    self.args.len()
                ),
            ));
        }
        for (i, arg) in self.args.iter().enumerate() {
            let field = format!("task.args[{i}]");
            if arg.len() > MAX_ARG_BYTES {
                return Err(FieldError::new(
                    field,
                    format!("must be at most {MAX_ARG_BYTES} bytes, got {}", arg.len()),
                ));
            }
            no_nul(field, arg)?;
        }

        if self.env.len() > MAX_ENV_VARS {
            return Err(FieldError::new(
                "task.env",
                format!(
                    "at most {MAX_ENV_VARS} variables are allowed, got {}",
                    self.env.len()
                ),
            ));
        }
        for (key, value) in &self.env {
            let mut bytes = key.bytes();
            let valid_key = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_key {
                return Err(FieldError::new(
                    env_path(key),
                    format!(
                        "{key:?} is not a valid variable name: use letters, digits and `_`, \
                         not starting with a digit"
                    ),
                ));
            }
            at_most_bytes(&env_path(key), key, MAX_ENV_KEY_BYTES).map_err(|e| FieldError {
                message: format!("the name {}", e.message),
                ..e
            })?;
            at_most_bytes(&env_path(key), value, MAX_ENV_VALUE_BYTES)?;
            no_nul(env_path(key), value)?;
        }

        if self.config.len() > MAX_CONFIG_ENTRIES {
            return Err(FieldError::new(
                "task.config",
                format!(
                    "at most {MAX_CONFIG_ENTRIES} settings are allowed, got {}",
                    self.config.len()
                ),
            ));
        }
        for (key, value) in &self.config {
            let field = format!("task.config.{key}");
            let valid_key = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_key {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{key:?} is not a valid setting name: 1 to 64 letters, digits, `_` or `-`"
                    ),
                ));
            }
            if value.len() > MAX_CONFIG_VALUE_BYTES {
                return Err(FieldError::new(
                    field,
                    format!(
                        "must be at most {MAX_CONFIG_VALUE_BYTES} bytes, got {}",
                        value.len()
                    ),
                ));
            }
            no_nul(field, value)?;
        }
        if let Some(workdir) = &self.workdir {
            if !workdir.starts_with('/') {
                return Err(FieldError::new(
                    "task.workdir",
                    format!("must be an absolute path (starting with `/`), got {workdir:?}"),
                ));
            }
            at_most_bytes("task.workdir", workdir, MAX_PATH_BYTES)?;
            no_nul("task.workdir", workdir)?;
        }
        self.check_text_total()?;

        self.resources.validate()?;
        // Last: a driver's rules may read the generic fields checked above.
        crate::driver_settings::parse(self).map(|_| ())
    }
}

impl Resources {
    /// Checks a task's resource request: CPU and memory are required and
    /// bounded, GPUs bounded, and a GPU model only makes sense with GPUs.
    /// Paths start with `task.resources.` because this is a task's request.
    pub fn validate(&self) -> Result<(), FieldError> {
        CPU_RANGE.check("task.resources.cpu", self.cpu_millis)?;
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return Err(FieldError::new(
                "task.resources.memory",
                memory_range_message(format_memory(self.memory_bytes)),
            ));
        }
        GPUS_RANGE.check("task.resources.gpus", u64::from(self.gpus))?;
        if let Some(model) = &self.gpu_model {
            let field = "task.resources.gpu_model";
            if self.gpus == 0 {
                return Err(FieldError::new(
                    field,
                    "is only allowed when gpus is more than 0; set gpus or remove gpu_model",
                ));
            }
            let len = model.chars().count();
            if len == 0 {
                return Err(FieldError::new(
                    field,
                    "must not be empty; remove it to accept any model",
                ));
            }
            if len > MAX_GPU_MODEL_LEN {
                return Err(FieldError::new(
                    field,
                    format!("must be at most {MAX_GPU_MODEL_LEN} characters, got {len}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::job::JobType;

    fn valid() -> JobSpec {
        crate::fixtures::minimal_batch()
    }

    /// Applies `change` to a valid spec and returns the field it is rejected on.
    fn rejected(change: impl FnOnce(&mut JobSpec)) -> FieldError {
        let mut spec = valid();
        change(&mut spec);
        match spec.validate() {
            Err(e) => e,
            Ok(()) => panic!("accepted {spec:?}"),
        }
    }

    fn accepted(change: impl FnOnce(&mut JobSpec)) {
        let mut spec = valid();
        change(&mut spec);
        assert_eq!(spec.validate(), Ok(()), "{spec:?}");
    }

    #[test]
    fn driver_settings_are_bounded_and_named() {
        let e = rejected(|s| {
            s.task.config.insert("k".into(), "v".into());
        });
        assert_eq!(e.field, "task.config");
        // The checks that apply to every driver come first.
        let e = rejected(|s| {
            s.task.config.insert("bad key".into(), "v".into());
        });
        assert_eq!(e.field, "task.config.bad key");
        let e = rejected(|s| {
            s.task
                .config
                .insert("k".into(), "x".repeat(MAX_CONFIG_VALUE_BYTES + 1));
        });
        assert_eq!(e.field, "task.config.k");
        let e = rejected(|s| {
            for i in 0..=MAX_CONFIG_ENTRIES {
                s.task.config.insert(format!("k{i}"), "v".into());
            }
        });
        assert_eq!(e.field, "task.config");
        assert!(e.message.contains("at most"), "{e}");
    }

    #[test]
    fn the_minimal_spec_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn field_error_display_names_the_field() {
        let e = FieldError::new("priority", "must be between 0 and 100, got 150");
        assert_eq!(
            e.to_string(),
            "field `priority`: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn name_rules() {
        assert_eq!(rejected(|s| s.name = String::new()).field, "name");
        let e = rejected(|s| s.name = "a".repeat(129));
        assert_eq!(e.field, "name");
        assert!(e.message.contains("128"), "{}", e.message);
        accepted(|s| s.name = "a".repeat(128));
        accepted(|s| s.name = "0web-v1.2_x".into());
        let e = rejected(|s| s.name = "Hello".into());
        assert!(e.message.contains("'H'"), "{}", e.message);
        for bad in ["-web", ".web", "_web", "we b", "web/1", "wéb", "web\0"] {
            assert_eq!(rejected(|s| s.name = bad.into()).field, "name", "{bad}");
        }
        let e = rejected(|s| s.name = "-web".into());
        assert!(e.message.contains("start"), "{}", e.message);
    }

    #[test]
    fn count_rules() {
        let e = rejected(|s| s.count = 0);
        assert_eq!(
            e,
            FieldError::new("count", "must be between 1 and 10000, got 0")
        );
        assert_eq!(rejected(|s| s.count = 10_001).field, "count");
        accepted(|s| s.count = 10_000);
        accepted(|s| {
            s.job_type = JobType::Service;
            s.count = 3;
        });
    }

    #[test]
    fn placement_rules() {
        use crate::placement::{Affinity, ConstraintOp, LabelConstraint};
        let rack = |op, value: Option<&str>| LabelConstraint {
            label: "rack".into(),
            op,
            value: value.map(str::to_string),
        };
        accepted(|s| {
            s.placement.constraints = vec![
                rack(ConstraintOp::Equals, Some("r7")),
                rack(ConstraintOp::Exists, None),
            ];
            s.placement.spread = SpreadPolicy::Label("rack".into());
            s.placement.gang = true;
        });
        let e = rejected(|s| s.placement.constraints = vec![rack(ConstraintOp::NotEquals, None)]);
        assert_eq!(e.field, "constraint[0].value");
        assert!(e.message.contains("required with op \"!=\""), "{e}");
        let e = rejected(|s| s.placement.constraints = vec![rack(ConstraintOp::Exists, Some("x"))]);
        assert_eq!(e.field, "constraint[0].value");
        let e = rejected(|s| {
            s.placement.constraints = vec![LabelConstraint {
                label: String::new(),
                ..rack(ConstraintOp::Exists, None)
            }]
        });
        assert_eq!(e.field, "constraint[0].label");
        let e = rejected(|s| {
            s.placement.constraints = vec![rack(ConstraintOp::Exists, None); MAX_CONSTRAINTS + 1]
        });
        assert_eq!(e.field, "constraint");
        let gen = |weight| Affinity {
            label: "gpu_gen".into(),
            value: "hopper".into(),
            weight,
        };
        accepted(|s| s.placement.affinities = vec![gen(100), gen(-100)]);
        for bad in [0, 101, -101] {
            let e = rejected(|s| s.placement.affinities = vec![gen(50), gen(bad)]);
            assert_eq!(e.field, "affinity[1].weight");
            assert!(e.message.ends_with(&format!("got {bad}")), "{e}");
        }
        let e = rejected(|s| s.placement.spread = SpreadPolicy::Label("a\0".into()));
        assert_eq!(e.field, "spread");
    }

    #[test]
    fn priority_rules() {
        let e = rejected(|s| s.priority = 150);
        assert_eq!(
            e,
            FieldError::new("priority", "must be between 0 and 100, got 150")
        );
        accepted(|s| s.priority = 0);
        accepted(|s| s.priority = 100);
        assert_eq!(rejected(|s| s.priority = 101).field, "priority");
    }

    #[test]
    fn driver_must_be_known_and_the_message_lists_them() {
        let e = rejected(|s| s.task.driver = "docker".into());
        assert_eq!(e.field, "task.driver");
        assert!(e.message.contains("docker"), "{}", e.message);
        for driver in KNOWN_DRIVERS {
            assert!(e.message.contains(driver), "{}", e.message);
        }
        assert_eq!(
            rejected(|s| s.task.driver = String::new()).field,
            "task.driver"
        );
    }

    #[test]
    fn dljob_runs_herd_toy_train_without_a_command() {
        accepted(|s| {
            s.task.driver = "dljob".into();
            s.task.command = None;
            s.task.args = vec!["--steps".into(), "100".into()];
        });
        accepted(|s| {
            s.task.driver = "dljob".into();
            s.task.command = Some("/opt/train".into());
        });
        let e = rejected(|s| {
            s.task.driver = "dljob".into();
            s.task.command = None;
            s.task.config.insert("steps".into(), "3".into());
        });
        assert_eq!(e.field, "task.config");
    }

    #[test]
    fn inference_settings_are_checked_at_submit() {
        accepted(|s| {
            s.task.driver = "inference".into();
            s.task.command = None;
            s.task.args.clear();
            s.task.config.insert("max_batch".into(), "8".into());
        });
        let e = rejected(|s| {
            s.task.driver = "inference".into();
            s.task.command = None;
            s.task.args.clear();
            s.task.config.insert("max_batch".into(), "0".into());
        });
        assert_eq!(e.field, "task.config.max_batch");
        // The engine is herd's: the node refused a command of the user's; submit does too.
        let e = rejected(|s| s.task.driver = "inference".into());
        assert_eq!(e.field, "task.command");
    }

    #[test]
    fn exec_needs_a_command() {
        let e = rejected(|s| s.task.command = None);
        assert_eq!(e.field, "task.command");
        assert!(e.message.contains("exec"), "{}", e.message);
        assert_eq!(
            rejected(|s| s.task.command = Some(String::new())).field,
            "task.command"
        );
        assert_eq!(
            rejected(|s| s.task.command = Some("/bin/a\0b".into())).field,
            "task.command"
        );
    }

    #[test]
    fn args_rules() {
        let e = rejected(|s| s.task.args = vec!["x".into(); 1025]);
        assert_eq!(e.field, "task.args");
        accepted(|s| s.task.args = vec!["x".into(); 1024]);
        let e =
            rejected(|s| s.task.args = vec!["a".into(), "b".into(), "c".into(), "x".repeat(4097)]);
        assert_eq!(e.field, "task.args[3]");
        assert!(e.message.contains("4096"), "{}", e.message);
        accepted(|s| s.task.args = vec!["x".repeat(4096)]);
        // The limit is in bytes: 2049 two-byte characters is 4098 bytes.
        assert_eq!(
            rejected(|s| s.task.args = vec!["é".repeat(2049)]).field,
            "task.args[0]"
        );
        let e = rejected(|s| s.task.args = vec!["ok".into(), "nul\0".into()]);
        assert_eq!(e.field, "task.args[1]");
        assert!(e.message.contains("NUL"), "{}", e.message);
    }

    #[test]
    fn env_rules() {
        accepted(|s| {
            s.task.env.insert("_A1".into(), "x".into());
            s.task.env.insert("PATH".into(), String::new());
        });
        for bad in ["1FOO", "FOO-BAR", "", "A.B", "FOO BAR", "É"] {
            let e = rejected(|s| {
                s.task.env.insert(bad.into(), "x".into());
            });
            assert_eq!(e.field, env_path(bad), "{bad}");
            assert!(e.field.starts_with("task.env."), "{}", e.field);
        }
        assert_eq!(
            rejected(|s| {
                s.task.env.insert("1FOO".into(), "x".into());
            })
            .field,
            "task.env.1FOO"
        );
        assert_eq!(
            rejected(|s| {
                s.task.env.insert("A.B".into(), "x".into());
            })
            .field,
            "task.env.\"A.B\""
        );
        let e = rejected(|s| {
            s.task.env.insert("FOO".into(), "a\0b".into());
        });
        assert_eq!(e.field, "task.env.FOO");
        let e = rejected(|s| {
            s.task.env = (0..257).map(|i| (format!("V{i}"), String::new())).collect();
        });
        assert_eq!(e.field, "task.env");
        accepted(|s| s.task.env = (0..256).map(|i| (format!("V{i}"), String::new())).collect());
    }

    #[test]
    fn workdir_must_be_absolute() {
        accepted(|s| s.task.workdir = Some("/srv/app".into()));
        let e = rejected(|s| s.task.workdir = Some("srv/app".into()));
        assert_eq!(e.field, "task.workdir");
        assert!(e.message.contains("absolute"), "{}", e.message);
        assert_eq!(
            rejected(|s| s.task.workdir = Some(String::new())).field,
            "task.workdir"
        );
        assert_eq!(
            rejected(|s| s.task.workdir = Some("/a\0".into())).field,
            "task.workdir"
        );
    }

    #[test]
    fn cpu_rules() {
        let e = rejected(|s| s.task.resources.cpu_millis = 0);
        assert_eq!(e.field, "task.resources.cpu");
        assert!(e.message.contains("got 0"), "{}", e.message);
        assert_eq!(
            rejected(|s| s.task.resources.cpu_millis = 1_000_001).field,
            "task.resources.cpu"
        );
        accepted(|s| s.task.resources.cpu_millis = 1);
        accepted(|s| s.task.resources.cpu_millis = 1_000_000);
    }

    #[test]
    fn memory_rules() {
        let e = rejected(|s| s.task.resources.memory_bytes = 0);
        assert_eq!(
            e,
            FieldError::new(
                "task.resources.memory",
                "must be between 1MiB and 64TiB, got 0B"
            )
        );
        assert_eq!(
            rejected(|s| s.task.resources.memory_bytes = MIB - 1).field,
            "task.resources.memory"
        );
        assert_eq!(
            rejected(|s| s.task.resources.memory_bytes = 64 * TIB + 1).field,
            "task.resources.memory"
        );
        accepted(|s| s.task.resources.memory_bytes = MIB);
        accepted(|s| s.task.resources.memory_bytes = 64 * TIB);
    }

    #[test]
    fn gpu_rules() {
        accepted(|s| {
            s.task.resources.gpus = 1024;
            s.task.resources.gpu_model = Some("a".repeat(64));
        });
        assert_eq!(
            rejected(|s| s.task.resources.gpus = 1025).field,
            "task.resources.gpus"
        );
        let e = rejected(|s| s.task.resources.gpu_model = Some("a100".into()));
        assert_eq!(e.field, "task.resources.gpu_model");
        assert!(e.message.contains("gpus"), "{}", e.message);
        let e = rejected(|s| {
            s.task.resources.gpus = 1;
            s.task.resources.gpu_model = Some("a".repeat(65));
        });
        assert_eq!(e.field, "task.resources.gpu_model");
        assert!(e.message.contains("64"), "{}", e.message);
        assert_eq!(
            rejected(|s| {
                s.task.resources.gpus = 1;
                s.task.resources.gpu_model = Some(String::new());
            })
            .field,
            "task.resources.gpu_model"
        );
    }

    #[test]
    fn long_text_is_refused_naming_the_field_and_the_limit() {
        let with = |edit: &dyn Fn(&mut JobSpec)| {
            let mut spec = crate::fixtures::minimal_batch();
            edit(&mut spec);
            spec.validate()
        };
        let err = with(&|s| {
            s.task
                .env
                .insert("HUGE".into(), "x".repeat(MAX_ENV_VALUE_BYTES + 1));
        })
        .expect_err("long value");
        assert_eq!(err.field, "task.env.HUGE");
        assert!(
            err.message.contains(&MAX_ENV_VALUE_BYTES.to_string()),
            "{err}"
        );
        let err = with(&|s| {
            s.task
                .env
                .insert("K".repeat(MAX_ENV_KEY_BYTES + 1), "v".into());
        })
        .expect_err("long name");
        assert!(err.message.starts_with("the name must be at most"), "{err}");
        let err = with(&|s| s.task.command = Some("/".repeat(MAX_PATH_BYTES + 1)))
            .expect_err("long command");
        assert_eq!(err.field, "task.command");
        let err = with(&|s| s.task.workdir = Some("/".repeat(MAX_PATH_BYTES + 1)))
            .expect_err("long workdir");
        assert_eq!(err.field, "task.workdir");
        // Each value within its own limit, but together over the total.
        let err = with(&|s| {
            for i in 0..40 {
                s.task
                    .env
                    .insert(format!("V{i}"), "x".repeat(MAX_ENV_VALUE_BYTES));
            }
        })
        .expect_err("too much in all");
        assert_eq!(err.field, "task.env");
        assert!(err.message.contains("MAX_TASK_TEXT_BYTES"), "{err}");
        assert!(
            err.message.contains(&MAX_TASK_TEXT_BYTES.to_string()),
            "{err}"
        );
        with(&|s| {
            s.task
                .env
                .insert("OK".into(), "x".repeat(MAX_ENV_VALUE_BYTES));
        })
        .expect("at the limit is fine");
    }

    #[test]
    fn env_paths_quote_keys_toml_would_quote() {
        assert_eq!(env_path("FOO"), "task.env.FOO");
        assert_eq!(env_path("a-b_1"), "task.env.a-b_1");
        assert_eq!(env_path("A.B"), "task.env.\"A.B\"");
        assert_eq!(env_path(""), "task.env.\"\"");
        assert_eq!(join_path("", "name"), "name");
        assert_eq!(join_path("task", "x y"), "task.\"x y\"");
    }
}
