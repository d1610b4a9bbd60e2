//! Reading job specs from TOML files, with errors that point at the file,
//! line, column and field at fault.
//!
//! The file is parsed into toml's spanned document tree ([`toml::de::DeTable`],
//! where every key and value knows its byte range), and read field by field
//! while recording where each field path was found. Structural problems
//! (unknown, missing or mistyped fields, numbers that do not fit) are reported
//! where they are found; the semantic rules are not repeated here but come from
//! [`JobSpec::validate`], whose field path is looked up in the recorded
//! locations.
//!
//! ```toml
//! name = "hello"
//! type = "batch"            # or "service"
//! count = 1                 # optional, default 1
//! priority = 50             # optional, 0..=100, default 50
//! [task]
//! driver = "exec"
//! command = "/bin/sleep"
//! args = ["30"]             # optional
//! workdir = "/tmp"          # optional
//! [task.env]                # optional
//! GREETING = "hi"
//! [task.resources]
//! cpu = 100                 # millicores
//! memory = "64MiB"          # or an integer number of bytes
//! gpus = 0                  # optional
//! gpu_model = "a100"        # optional, only with gpus > 0
//! ```
//!
//! Placement, all optional, at the top level (before `[task]`, or anywhere
//! as `[[constraint]]` / `[[affinity]]` tables):
//!
//! ```toml
//! gang = true               # all instances placed together or none
//! spread = "rack"           # "node", or a label; default bin-pack
//! [[constraint]]            # hard: every chosen node must match
//! label = "rack"
//! op = "!="                 # "=", "!=" or "exists" (no value)
//! value = "r7"
//! [[affinity]]              # soft: matching nodes score higher
//! label = "gpu_gen"
//! value = "hopper"
//! weight = 50               # -100..=100, not 0; negative avoids
//! ```
//!
//! Power, optional, at the top level: `power_class = "medium"` (`low`,
//! `medium`, `high` or `max`, the default), the expected draw of each GPU
//! as a fraction of its TDP, which placement commits against power budgets.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::job::{
    unknown_job_type_message, JobSpec, JobType, TaskSpec, DEFAULT_COUNT, DEFAULT_PRIORITY,
    KNOWN_DRIVERS,
};
use crate::placement::{
    unknown_op_message, Affinity, ConstraintOp, LabelConstraint, PlacementSpec, SpreadPolicy,
};
use crate::power_class::{unknown_power_class_message, PowerClass};
use crate::resources::{parse_memory, Resources};
use crate::validate::{
    join_path, memory_range_message, weight_message, COUNT_RANGE, CPU_RANGE, GPUS_RANGE,
    PRIORITY_RANGE,
};

/// Why a spec file was rejected, located so an editor or a person can jump
/// straight to the problem.
///
/// Displays as `hello.toml:7:10: field `priority`: must be between 0 and 100,
/// got 150`, the field part omitted when the error is not about one field
/// (TOML syntax errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{file}:{line}:{column}: {}{message}",
    .field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default()
)]
pub struct SpecFileError {
    /// The file name as the caller gave it.
    pub file: String,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error, counted in characters.
    pub column: usize,
    /// Dotted path of the offending field (`"task.resources.memory"`), if any.
    pub field: Option<String>,
    /// What is wrong and what is accepted.
    pub message: String,
}

/// Parses and validates a job spec written in TOML.
///
/// `file` is only used in errors. Every error — TOML syntax, unknown,
/// missing or mistyped fields, out-of-range numbers and every rule of
/// [`JobSpec::validate`] — carries the line and column it refers to.
pub fn parse_job_spec(source: &str, file: &str) -> Result<JobSpec, SpecFileError> {
    let locate = |problem: Problem| {
        let (line, column) = line_column(source, problem.offset);
        SpecFileError {
            file: file.to_string(),
            line,
            column,
            field: problem.field,
            message: problem.message,
        }
    };

    let root = DeTable::parse(source).map_err(|e| {
        locate(Problem {
            offset: e.span().map_or(0, |span| span.start),
            field: None,
            message: format!("invalid TOML: {}", e.message()),
        })
    })?;

    let mut reader = Reader {
        source,
        offsets: HashMap::new(),
    };
    let spec = reader.job(root.get_ref()).map_err(locate)?;
    spec.validate().map_err(|e| {
        locate(Problem {
            offset: reader.offset_of(&e.field),
            field: Some(e.field),
            message: e.message,
        })
    })?;
    Ok(spec)
}

/// An error found while reading, before it is turned into a line and column.
struct Problem {
    offset: usize,
    field: Option<String>,
    message: String,
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Reads the spanned tree into a [`JobSpec`], remembering where every field
/// path it saw starts so validation errors can be located afterwards.
struct Reader<'s> {
    source: &'s str,
    offsets: HashMap<String, usize>,
}

const ROOT_FIELDS: &[&str] = &[
    "name",
    "type",
    "count",
    "priority",
    "task",
    "gang",
    "spread",
    "constraint",
    "affinity",
    "stop_after_disconnect",
    "balance",
    "power_class",
    "autoscale",
];
const BALANCE_FIELDS: &[&str] = &["movable"];
const AUTOSCALE_FIELDS: &[&str] = &[
    "min",
    "max",
    "target_load",
    "ttft_p99_ms",
    "tbt_p99_ms",
    "scale_out_cooldown",
    "scale_in_cooldown",
];
const CONSTRAINT_FIELDS: &[&str] = &["label", "op", "value"];
const AFFINITY_FIELDS: &[&str] = &["label", "value", "weight"];
const TASK_FIELDS: &[&str] = &[
    "driver",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "config",
];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpus", "gpu_model"];

impl<'s> Reader<'s> {
    fn job(&mut self, root: &DeTable<'_>) -> Result<JobSpec, Problem> {
        self.offsets.insert(String::new(), 0);
        check_keys("", root, ROOT_FIELDS)?;

        let name = self.string("name", required("", 0, root, "name", "")?)?;
        let type_value = required("", 0, root, "type", " (\"batch\" or \"service\")")?;
        let type_name = self.string("type", type_value)?;
        let job_type = JobType::parse(&type_name).ok_or_else(|| {
            problem(
                type_value.span(),
                "type",
                unknown_job_type_message(&type_name),
            )
        })?;
        let count = match root.get("count") {
            Some(v) => self.integer("count", v, "an integer", |got| COUNT_RANGE.message(got))?,
            None => DEFAULT_COUNT,
        };
        let priority = match root.get("priority") {
            Some(v) => self.integer("priority", v, "an integer", |got| {
                PRIORITY_RANGE.message(got)
            })?,
            None => DEFAULT_PRIORITY,
        };
        let task = required("", 0, root, "task", " (a [task] table)")?;
        let task = self.task(task)?;
        let placement = self.placement(root)?;
        let stop_after_disconnect = match root.get("stop_after_disconnect") {
            Some(v) => {
                let text = self.string("stop_after_disconnect", v)?;
                let after = crate::duration::parse_duration(&text)
                    .map_err(|e| problem(v.span(), "stop_after_disconnect", e))?;
                Some(after)
            }
            None => None,
        };

        let balance = match root.get("balance") {
            Some(v) => self.balance(v)?,
            None => crate::job::BalanceSpec::default(),
        };
        let autoscale = match root.get("autoscale") {
            Some(v) => Some(Box::new(self.autoscale(v)?)),
            None => None,
        };

        Ok(JobSpec {
            name,
            job_type,
            count,
            priority,
            task,
            placement,
            stop_after_disconnect,
            balance,
            autoscale,
        })
    }

    fn placement(&mut self, root: &DeTable<'_>) -> Result<PlacementSpec, Problem> {
        let gang = match root.get("gang") {
            Some(v) => self.boolean("gang", v)?,
            None => false,
        };
        let spread = match root.get("spread") {
            Some(v) => {
                let text = self.string("spread", v)?;
                if text.is_empty() {
                    return Err(problem(
                        v.span(),
                        "spread",
                        "must be \"node\" or a node label such as \"rack\"; \
                         leave it out to bin-pack",
                    ));
                }
                SpreadPolicy::parse(&text)
            }
            None => SpreadPolicy::BinPack,
        };
        let constraints = match root.get("constraint") {
            Some(v) => self.tables("constraint", v, CONSTRAINT_FIELDS, Self::constraint)?,
            None => Vec::new(),
        };
        let affinities = match root.get("affinity") {
            Some(v) => self.tables("affinity", v, AFFINITY_FIELDS, Self::affinity)?,
            None => Vec::new(),
        };
        let power_class = match root.get("power_class") {
            Some(v) => {
                let text = self.string("power_class", v)?;
                if text.is_empty() {
                    return Err(problem(
                        v.span(),
                        "power_class",
                        unknown_power_class_message(&text),
                    ));
                }
                PowerClass::parse(&text).map_err(|e| problem(v.span(), "power_class", e))?
            }
            None => PowerClass::default(),
        };
        Ok(PlacementSpec {
            constraints,
            affinities,
            spread,
            gang,
            power_class,
        })
    }

    /// Reads an array of tables (`[[path]]`), each with `allowed` keys, by `read`.
    fn tables<T>(
        &mut self,
        path: &str,
        value: &Value<'_>,
        allowed: &[&str],
        read: impl Fn(&mut Self, &str, usize, &DeTable<'_>) -> Result<T, Problem>,
    ) -> Result<Vec<T>, Problem> {
        self.record(path, value.span());
        let DeValue::Array(items) = value.get_ref() else {
            let hint = format!("an array of tables ([[{path}]])");
            return Err(type_problem(value.span(), path, &hint, value.get_ref()));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let table = self.table(&item_path, item)?;
            check_keys(&item_path, table, allowed)?;
            out.push(read(self, &item_path, item.span().start, table)?);
        }
        Ok(out)
    }

    fn constraint(
        &mut self,
        path: &str,
        at: usize,
        table: &DeTable<'_>,
    ) -> Result<LabelConstraint, Problem> {
        let label = required(path, at, table, "label", " (a node label, e.g. \"rack\")")?;
        let label = self.string(&format!("{path}.label"), label)?;
        let op_path = format!("{path}.op");
        let op_value = required(path, at, table, "op", " (\"=\", \"!=\" or \"exists\")")?;
        let op_text = self.string(&op_path, op_value)?;
        let op = ConstraintOp::parse(&op_text)
            .ok_or_else(|| problem(op_value.span(), &op_path, unknown_op_message(&op_text)))?;
        let value = match table.get("value") {
            Some(v) => Some(self.string(&format!("{path}.value"), v)?),
            None => None,
        };
        Ok(LabelConstraint { label, op, value })
    }

    fn affinity(
        &mut self,
        path: &str,
        at: usize,
        table: &DeTable<'_>,
    ) -> Result<Affinity, Problem> {
        let label = required(
            path,
            at,
            table,
            "label",
            " (a node label, e.g. \"gpu_gen\")",
        )?;
        let label = self.string(&format!("{path}.label"), label)?;
        let value = required(path, at, table, "value", " (the label value to prefer)")?;
        let value = self.string(&format!("{path}.value"), value)?;
        let weight = required(path, at, table, "weight", " (-100..=100, not 0)")?;
        let weight = self.integer(&format!("{path}.weight"), weight, "an integer", |got| {
            weight_message(got)
        })?;
        Ok(Affinity {
            label,
            value,
            weight,
        })
    }

    fn balance(&mut self, value: &Value<'_>) -> Result<crate::job::BalanceSpec, Problem> {
        let table = self.table("balance", value)?;
        check_keys("balance", table, BALANCE_FIELDS)?;
        let movable = match table.get("movable") {
            Some(v) => self.boolean("balance.movable", v)?,
            None => false,
        };
        Ok(crate::job::BalanceSpec { movable })
    }

    /// The `[autoscale]` table; ranges and the fit with `count` are
    /// checked by validation, which names the same fields.
    fn autoscale(&mut self, value: &Value<'_>) -> Result<crate::autoscale::AutoscaleSpec, Problem> {
        use crate::autoscale::{target_load_permille, AutoscaleSpec, MAX_INSTANCES, MAX_SLO_MS};
        let table = self.table("autoscale", value)?;
        check_keys("autoscale", table, AUTOSCALE_FIELDS)?;
        let instances = |got: &str| format!("must be between 1 and {MAX_INSTANCES}, got {got}");
        let min = required(
            "autoscale",
            value.span().start,
            table,
            "min",
            " (fewest instances)",
        )?;
        let min = self.integer("autoscale.min", min, "an integer", instances)?;
        let max = required(
            "autoscale",
            value.span().start,
            table,
            "max",
            " (most instances)",
        )?;
        let max = self.integer("autoscale.max", max, "an integer", instances)?;
        let mut spec = AutoscaleSpec::new(min, max);
        if let Some(v) = table.get("target_load") {
            self.record("autoscale.target_load", v.span());
            let fraction = match v.get_ref() {
                DeValue::Float(_) | DeValue::Integer(_) => {
                    self.text(v.span()).trim().parse::<f64>().ok()
                }
                other => {
                    return Err(type_problem(
                        v.span(),
                        "autoscale.target_load",
                        "a fraction such as 0.7",
                        other,
                    ))
                }
            };
            spec.target_load_permille =
                fraction.and_then(target_load_permille).ok_or_else(|| {
                    problem(
                        v.span(),
                        "autoscale.target_load",
                        format!("must be a fraction in (0, 1], got {}", self.text(v.span())),
                    )
                })?;
        }
        let slo = |got: &str| format!("must be between 1 and {MAX_SLO_MS} ms, got {got}");
        if let Some(v) = table.get("ttft_p99_ms") {
            spec.ttft_p99_ms = Some(self.integer("autoscale.ttft_p99_ms", v, "an integer", slo)?);
        }
        if let Some(v) = table.get("tbt_p99_ms") {
            spec.tbt_p99_ms = Some(self.integer("autoscale.tbt_p99_ms", v, "an integer", slo)?);
        }
        for (key, target) in [
            ("scale_out_cooldown", &mut spec.scale_out_cooldown_ms),
            ("scale_in_cooldown", &mut spec.scale_in_cooldown_ms),
        ] {
            if let Some(v) = table.get(key) {
                let path = format!("autoscale.{key}");
                let text = self.string(&path, v)?;
                let duration = crate::duration::parse_duration(&text)
                    .map_err(|e| problem(v.span(), &path, e))?;
                *target = duration.as_millis() as u64;
            }
        }
        Ok(spec)
    }

    fn task(&mut self, value: &Value<'_>) -> Result<TaskSpec, Problem> {
        let table = self.table("task", value)?;
        let at = value.span().start;
        check_keys("task", table, TASK_FIELDS)?;

        let driver_hint = format!(" (one of: {})", KNOWN_DRIVERS.join(", "));
        let driver = self.string(
            "task.driver",
            required("task", at, table, "driver", &driver_hint)?,
        )?;
        let command = match table.get("command") {
            Some(v) => Some(self.string("task.command", v)?),
            None => None,
        };
        let args = match table.get("args") {
            Some(v) => self.string_array("task.args", v)?,
            None => Vec::new(),
        };
        let env = match table.get("env") {
            Some(v) => self.string_table("task.env", v)?,
            None => BTreeMap::new(),
        };
        let workdir = match table.get("workdir") {
            Some(v) => Some(self.string("task.workdir", v)?),
            None => None,
        };
        let config = match table.get("config") {
            Some(v) => self.scalar_table("task.config", v)?,
            None => BTreeMap::new(),
        };
        let resources = required(
            "task",
            at,
            table,
            "resources",
            " (a [task.resources] table with cpu and memory)",
        )?;
        let resources = self.resources(resources)?;

        Ok(TaskSpec {
            driver,
            command,
            args,
            env,
            workdir,
            resources,
            config,
        })
    }

    fn resources(&mut self, value: &Value<'_>) -> Result<Resources, Problem> {
        const PATH: &str = "task.resources";
        let table = self.table(PATH, value)?;
        let at = value.span().start;
        check_keys(PATH, table, RESOURCE_FIELDS)?;

        let cpu = required(
            PATH,
            at,
            table,
            "cpu",
            " (CPU in millicores, e.g. cpu = 100)",
        )?;
        let cpu_millis = self.integer(
            "task.resources.cpu",
            cpu,
            "an integer number of millicores (1000 is one core)",
            |got| CPU_RANGE.message(got),
        )?;
        let memory = required(PATH, at, table, "memory", " (e.g. memory = \"64MiB\")")?;
        let memory_bytes = self.memory("task.resources.memory", memory)?;
        let gpus = match table.get("gpus") {
            Some(v) => self.integer("task.resources.gpus", v, "an integer", |got| {
                GPUS_RANGE.message(got)
            })?,
            None => 0,
        };
        let gpu_model = match table.get("gpu_model") {
            Some(v) => Some(self.string("task.resources.gpu_model", v)?),
            None => None,
        };

        Ok(Resources {
            cpu_millis,
            memory_bytes,
            gpus,
            gpu_model,
        })
    }

    /// Records where `path` starts, for [`Reader::offset_of`].
    fn record(&mut self, path: &str, span: Range<usize>) {
        self.offsets.insert(path.to_string(), span.start);
    }

    /// Where the field at `path` was found; for a field that is absent (a
    /// missing `command`), where its nearest present parent table was.
    fn offset_of(&self, path: &str) -> usize {
        let mut path = path;
        loop {
            if let Some(&offset) = self.offsets.get(path) {
                return offset;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None if path.is_empty() => return 0,
                None => path = "",
            }
        }
    }

    fn table<'v, 'i>(
        &mut self,
        path: &str,
        value: &'v Value<'i>,
    ) -> Result<&'v DeTable<'i>, Problem> {
        self.record(path, value.span());
        match value.get_ref() {
            DeValue::Table(table) => Ok(table),
            other => Err(type_problem(value.span(), path, "a table", other)),
        }
    }

    fn boolean(&mut self, path: &str, value: &Value<'_>) -> Result<bool, Problem> {
        self.record(path, value.span());
        match value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            other => Err(type_problem(value.span(), path, "true or false", other)),
        }
    }

    fn string(&mut self, path: &str, value: &Value<'_>) -> Result<String, Problem> {
        self.record(path, value.span());
        match value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            other => Err(type_problem(value.span(), path, "a string", other)),
        }
    }

    fn string_array(&mut self, path: &str, value: &Value<'_>) -> Result<Vec<String>, Problem> {
        self.record(path, value.span());
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(&format!("{path}[{i}]"), item))
                .collect(),
            other => Err(type_problem(
                value.span(),
                path,
                "an array of strings",
                other,
            )),
        }
    }

    fn string_table(
        &mut self,
        path: &str,
        value: &Value<'_>,
    ) -> Result<BTreeMap<String, String>, Problem> {
        let table = self.table(path, value)?;
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut map = BTreeMap::new();
        for (key, item) in entries {
            let item_path = join_path(path, key.get_ref());
            let text = self.string(&item_path, item)?;
            // Point at the key: most rules about an entry are about its name.
            self.record(&item_path, key.span());
            map.insert(key.get_ref().to_string(), text);
        }
        Ok(map)
    }

    /// Reads a table of scalars (strings, numbers, booleans) as text, the
    /// way drivers take their settings; numbers keep their source spelling.
    fn scalar_table(
        &mut self,
        path: &str,
        value: &Value<'_>,
    ) -> Result<BTreeMap<String, String>, Problem> {
        let table = self.table(path, value)?;
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut map = BTreeMap::new();
        for (key, item) in entries {
            let item_path = join_path(path, key.get_ref());
            self.record(&item_path, key.span());
            let text = match item.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(_) | DeValue::Float(_) => self.text(item.span()).to_string(),
                DeValue::Boolean(b) => b.to_string(),
                other => {
                    return Err(type_problem(
                        item.span(),
                        &item_path,
                        "a string, number or boolean",
                        other,
                    ))
                }
            };
            map.insert(key.get_ref().to_string(), text);
        }
        Ok(map)
    }

    /// Reads an integer into `T`; one that is negative or too large for `T`
    /// gets `out_of_range`'s message, as validation would give for a value
    /// that fits but is out of bounds.
    fn integer<T: TryFrom<i128>>(
        &mut self,
        path: &str,
        value: &Value<'_>,
        expected: &str,
        out_of_range: impl Fn(&str) -> String,
    ) -> Result<T, Problem> {
        self.record(path, value.span());
        match value.get_ref() {
            DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .and_then(|n| T::try_from(n).ok())
                .ok_or_else(|| problem(value.span(), path, out_of_range(self.text(value.span())))),
            other => Err(type_problem(value.span(), path, expected, other)),
        }
    }

    fn memory(&mut self, path: &str, value: &Value<'_>) -> Result<u64, Problem> {
        match value.get_ref() {
            DeValue::String(text) => {
                self.record(path, value.span());
                parse_memory(text).map_err(|message| problem(value.span(), path, message))
            }
            _ => self.integer(
                path,
                value,
                "a size such as \"64MiB\" or an integer number of bytes",
                |got| memory_range_message(got),
            ),
        }
    }

    /// The source text of a span, as the user wrote it.
    fn text(&self, span: Range<usize>) -> &'s str {
        self.source.get(span).unwrap_or_default()
    }
}

fn problem(span: Range<usize>, field: &str, message: impl Into<String>) -> Problem {
    Problem {
        offset: span.start,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

fn type_problem(span: Range<usize>, field: &str, expected: &str, found: &DeValue<'_>) -> Problem {
    let found = match found {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a floating-point number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    };
    problem(span, field, format!("expected {expected}, found {found}"))
}

/// The value of a required key, or an error at the table that lacks it
/// (`at` is where the table starts). `hint` follows the message.
fn required<'v, 'i>(
    path: &str,
    at: usize,
    table: &'v DeTable<'i>,
    key: &str,
    hint: &str,
) -> Result<&'v Value<'i>, Problem> {
    table.get(key).ok_or_else(|| Problem {
        offset: at,
        field: Some(join_path(path, key)),
        message: format!("missing required field `{key}`{hint}"),
    })
}

/// Rejects the first key (in file order) that is not in `allowed`, pointing at
/// the key and suggesting the closest allowed name.
fn check_keys(path: &str, table: &DeTable<'_>, allowed: &[&str]) -> Result<(), Problem> {
    let unknown = table
        .keys()
        .filter(|key| !allowed.contains(&key.get_ref().as_ref()))
        .min_by_key(|key| key.span().start);
    let Some(key) = unknown else {
        return Ok(());
    };
    let name = key.get_ref();
    let expected = allowed
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let suggestion = allowed
        .iter()
        .map(|a| (edit_distance(name, a), a))
        .filter(|&(distance, a)| distance <= 2 && distance < a.len())
        .min()
        .map(|(_, a)| format!("did you mean `{a}`? "))
        .unwrap_or_default();
    let location = if path.is_empty() {
        String::new()
    } else {
        format!(" in [{path}]")
    };
    Err(Problem {
        offset: key.span().start,
        field: Some(join_path(path, name)),
        message: format!(
            "unknown field `{name}`{location}; {suggestion}expected one of {expected}"
        ),
    })
}

/// Levenshtein distance, for "did you mean" suggestions on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// 1-based line and column (in characters) of a byte offset into `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = source.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::MIB;

    const HELLO: &str = r#"name = "hello"
type = "batch"            # or "service" (with count = N)
priority = 50             # 0..100
[task]
driver = "exec"
command = "/bin/sleep"
args = ["30"]
[task.resources]
cpu = 100                 # millicores
memory = "64MiB"
"#;

    fn parse(source: &str) -> Result<JobSpec, SpecFileError> {
        parse_job_spec(source, "test.toml")
    }

    fn error(source: &str) -> SpecFileError {
        match parse(source) {
            Err(e) => e,
            Ok(spec) => panic!("accepted {spec:?}"),
        }
    }

    #[test]
    fn driver_settings_take_scalars_and_the_exec_driver_takes_none() {
        let e = error(&format!("{HELLO}[task.config]\nblocks = [1, 2]\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (12, Some("task.config.blocks"))
        );
        assert!(e.message.contains("a string, number or boolean"), "{e}");
        let e = error(&format!(
            "{HELLO}[task.config]\nblocks = 64\nratio = 0.5\nswap = true\nmode = \"x\"\n"
        ));
        assert_eq!(e.field.as_deref(), Some("task.config"));
        assert!(e.message.contains("exec driver takes no settings"), "{e}");
    }

    #[test]
    fn bad_driver_settings_are_located_at_submit() {
        const LLM: &str = "name = \"llm\"\ntype = \"service\"\n[task]\ndriver = \"inference\"\n\
            [task.resources]\ncpu = 200\nmemory = \"128MiB\"\n[task.config]\nkv_blocks = 8\n";
        assert!(parse(LLM).is_ok(), "{:?}", parse(LLM));
        let e = error(&format!("{LLM}preemption = \"drop\"\n"));
        assert_eq!(
            (e.file.as_str(), e.line, e.field.as_deref()),
            ("test.toml", 10, Some("task.config.preemption"))
        );
        assert!(
            e.to_string()
                .starts_with("test.toml:10:1: field `task.config.preemption`"),
            "{e}"
        );
        let e = error(&LLM.replace(
            "[task.resources]",
            "command = \"/bin/engine\"\n[task.resources]",
        ));
        assert_eq!((e.line, e.field.as_deref()), (5, Some("task.command")));

        let simvm = "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n\
            [task.resources]\ncpu = 200\nmemory = \"64MiB\"\n[task.config]\n\
            dirty_rate = \"1MiB\"\nseed = \"many\"\n";
        let e = error(simvm);
        assert_eq!((e.line, e.field.as_deref()), (10, Some("task.config.seed")));
        assert!(e.message.contains("not a whole number"), "{e}");
    }

    #[test]
    fn power_class_parses_and_bad_values_are_located() {
        let spec = parse(&hello_with(3, "power_class = \"medium\"")).expect("valid");
        assert_eq!(spec.placement.power_class, PowerClass::Medium);
        assert_eq!(
            parse(HELLO).expect("valid").placement.power_class,
            PowerClass::Max
        );
        let e = error(&hello_with(3, "power_class = \"huge\""));
        assert_eq!((e.line, e.field.as_deref()), (3, Some("power_class")));
        assert!(e.message.contains("low, medium, high, max"), "{e}");
        let e = error(&hello_with(3, "power_class = \"\""));
        assert_eq!((e.line, e.field.as_deref()), (3, Some("power_class")));
        let e = error(&hello_with(3, "power_class = 450"));
        assert_eq!((e.line, e.field.as_deref()), (3, Some("power_class")));
        assert!(e.message.contains("a string"), "{e}");
    }

    const LLM: &str = r#"name = "llm"
type = "service"
count = 2
[task]
driver = "inference"
[task.resources]
cpu = 100
memory = "64MiB"
[autoscale]
min = 1
max = 4
"#;

    #[test]
    fn autoscale_parses_with_defaults_and_bad_values_are_located() {
        use crate::autoscale::AutoscaleSpec;
        let spec = parse(LLM).expect("valid");
        assert_eq!(spec.autoscale, Some(Box::new(AutoscaleSpec::new(1, 4))));
        let full = format!(
            "{LLM}target_load = 0.5\nttft_p99_ms = 2000\ntbt_p99_ms = 150\n\
             scale_out_cooldown = \"5s\"\nscale_in_cooldown = \"2m\"\n"
        );
        let a = parse(&full).expect("valid").autoscale.expect("autoscale");
        assert_eq!(
            (a.target_load_permille, a.ttft_p99_ms, a.tbt_p99_ms),
            (500, Some(2000), Some(150))
        );
        assert_eq!(
            (a.scale_out_cooldown_ms, a.scale_in_cooldown_ms),
            (5_000, 120_000)
        );
        assert_eq!(parse(HELLO).expect("valid").autoscale, None);
        // Each bad value is named, on its line.
        for (extra, field, words) in [
            ("target_load = 1.5", "autoscale.target_load", "(0, 1]"),
            (
                "target_load = \"high\"",
                "autoscale.target_load",
                "a fraction",
            ),
            ("ttft_p99_ms = 0", "autoscale.ttft_p99_ms", "between 1"),
            (
                "scale_in_cooldown = \"soon\"",
                "autoscale.scale_in_cooldown",
                "",
            ),
            (
                "scale_out_cooldown = \"10ms\"",
                "autoscale.scale_out_cooldown",
                "between 1s",
            ),
            ("surge = 2", "autoscale.surge", ""),
        ] {
            let e = error(&format!("{LLM}{extra}\n"));
            assert_eq!(
                (e.line, e.field.as_deref()),
                (12, Some(field)),
                "{extra}: {e}"
            );
            assert!(e.message.contains(words), "{extra}: {e}");
        }
        let e = error(&LLM.replace("max = 4", "max = 0"));
        assert_eq!(e.field.as_deref(), Some("autoscale.max"), "{e}");
        let e = error(&LLM.replace("count = 2", "count = 5"));
        assert_eq!(e.field.as_deref(), Some("count"), "{e}");
        assert!(e.message.contains("1..=4"), "{e}");
        let e = error(&LLM.replace("min = 1\n", ""));
        assert!(e.message.contains("min"), "{e}");
        let e = error(&LLM.replace("\"inference\"", "\"exec\"\ncommand = \"/bin/true\""));
        assert_eq!(e.field.as_deref(), Some("autoscale"), "{e}");
    }

    /// HELLO with line `line` (1-based) replaced by `replacement`.
    fn hello_with(line: usize, replacement: &str) -> String {
        HELLO
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == line { replacement } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn stop_after_disconnect_parses_and_bad_values_are_located() {
        let spec = parse(&hello_with(3, "stop_after_disconnect = \"2s\"")).expect("valid");
        assert_eq!(
            spec.stop_after_disconnect,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(parse(HELLO).expect("valid").stop_after_disconnect, None);

        let e = error(&hello_with(3, "stop_after_disconnect = \"soon\""));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (3, Some("stop_after_disconnect"))
        );
        assert!(e.message.contains("invalid duration"), "{e}");

        let e = error(&hello_with(3, "stop_after_disconnect = \"200ms\""));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (3, Some("stop_after_disconnect"))
        );
        assert!(e.message.contains("between 1s and 86400s"), "{e}");

        let e = error(&hello_with(3, "stop_after_disconnect = 30"));
        assert_eq!(e.field.as_deref(), Some("stop_after_disconnect"));
    }

    #[test]
    fn the_minimal_spec_parses_exactly() {
        let expected = crate::fixtures::minimal_batch();
        assert_eq!(parse(HELLO), Ok(expected));
    }

    #[test]
    fn defaults_apply_when_fields_are_left_out() {
        let spec = parse(
            "name = \"x\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/true\"\n\
             [task.resources]\ncpu = 1\nmemory = 1048576\n",
        )
        .expect("valid");
        assert_eq!(spec.priority, DEFAULT_PRIORITY);
        assert_eq!(spec.count, DEFAULT_COUNT);
        assert!(spec.task.args.is_empty());
        assert_eq!(spec.task.resources.memory_bytes, MIB);
    }

    #[test]
    fn a_full_service_spec_parses() {
        let source = r#"
name = "web"
type = "service"
count = 3
priority = 70

[task]
driver = "exec"
command = "/bin/sh"
args = ["-c", "while true; do echo up; sleep 5; done"]
workdir = "/srv"

[task.env]
GREETING = "hello"
_PORT = "8080"

[task.resources]
cpu = 1500
memory = "1.5GiB"
gpus = 2
gpu_model = "a100"
"#;
        let spec = parse(source).expect("valid");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.job_type, JobType::Service);
        assert_eq!(spec.count, 3);
        assert_eq!(spec.priority, 70);
        assert_eq!(spec.task.args.len(), 2);
        assert_eq!(spec.task.workdir.as_deref(), Some("/srv"));
        assert_eq!(
            spec.task.env,
            BTreeMap::from([
                ("GREETING".to_string(), "hello".to_string()),
                ("_PORT".to_string(), "8080".to_string()),
            ])
        );
        assert_eq!(
            spec.task.resources,
            Resources {
                cpu_millis: 1500,
                memory_bytes: 1536 * MIB,
                gpus: 2,
                gpu_model: Some("a100".into()),
            }
        );
    }

    #[test]
    fn inline_tables_and_dotted_keys_are_the_same_spec() {
        let source = "name = \"hello\"\ntype = \"batch\"\n\
            task = { driver = \"exec\", command = \"/bin/sleep\", args = [\"30\"], \
            resources = { cpu = 100, memory = \"64MiB\" } }\n";
        assert_eq!(parse(source), parse(HELLO));
        let dotted = "name = \"hello\"\ntype = \"batch\"\ntask.driver = \"exec\"\n\
            task.command = \"/bin/sleep\"\ntask.args = [\"30\"]\n\
            task.resources.cpu = 100\ntask.resources.memory = \"64MiB\"\n";
        assert_eq!(parse(dotted), parse(HELLO));
    }

    #[test]
    fn display_has_file_line_column_and_field() {
        let e = SpecFileError {
            file: "hello.toml".into(),
            line: 7,
            column: 10,
            field: Some("priority".into()),
            message: "must be between 0 and 100, got 150".into(),
        };
        assert_eq!(
            e.to_string(),
            "hello.toml:7:10: field `priority`: must be between 0 and 100, got 150"
        );
        let e = SpecFileError { field: None, ..e };
        assert_eq!(
            e.to_string(),
            "hello.toml:7:10: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn a_priority_out_of_range_is_located() {
        let source =
            "name = \"hello\"\ntype = \"batch\"\n\n  priority = 150\n[task]\ndriver = \"exec\"\n\
            command = \"/bin/true\"\n[task.resources]\ncpu = 1\nmemory = \"1GiB\"\n";
        let e = error(source);
        assert_eq!(
            e,
            SpecFileError {
                file: "test.toml".into(),
                line: 4,
                column: 14,
                field: Some("priority".into()),
                message: "must be between 0 and 100, got 150".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "test.toml:4:14: field `priority`: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn negative_and_huge_numbers_get_range_messages_at_the_value() {
        let e = error(&hello_with(9, "cpu = -100"));
        assert_eq!((e.line, e.column), (9, 7));
        assert_eq!(e.field.as_deref(), Some("task.resources.cpu"));
        assert!(
            e.message
                .starts_with("must be between 1 and 1000000 millicores"),
            "{e}"
        );
        assert!(e.message.ends_with("got -100"), "{e}");

        let e = error(&hello_with(3, "priority = -1"));
        assert_eq!((e.line, e.column), (3, 12));
        assert_eq!(e.message, "must be between 0 and 100, got -1");

        let e = error(&hello_with(
            3,
            "count = 99999999999999999999999999999999999999999999",
        ));
        assert_eq!((e.line, e.field.as_deref()), (3, Some("count")));
        assert!(
            e.message
                .starts_with("must be between 1 and 10000, got 9999"),
            "{e}"
        );

        // Fits an i64 but not the u32 field: still the range message.
        let e = error(&hello_with(3, "count = 4294967296"));
        assert_eq!(e.message, "must be between 1 and 10000, got 4294967296");

        let e = error(&hello_with(10, "memory = -5"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (10, Some("task.resources.memory"))
        );
        assert_eq!(e.message, "must be between 1MiB and 64TiB, got -5");

        let e = error(&hello_with(10, "memory = 1024"));
        assert_eq!((e.line, e.column), (10, 10));
        assert_eq!(e.message, "must be between 1MiB and 64TiB, got 1KiB");

        let e = error(&format!("{HELLO}gpus = -1\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (11, Some("task.resources.gpus"))
        );
        assert_eq!(e.message, "must be between 0 and 1024, got -1");
    }

    #[test]
    fn unknown_fields_are_named_and_located() {
        let e = error(&hello_with(6, "comand = \"/bin/sleep\""));
        // `comand` is unknown, and reported before the missing `command`.
        assert_eq!((e.line, e.column), (6, 1));
        assert_eq!(e.field.as_deref(), Some("task.comand"));
        assert!(e.message.contains("unknown field `comand`"), "{e}");
        assert!(e.message.contains("did you mean `command`?"), "{e}");

        let e = error(&format!("tsk.foo = 1\n{HELLO}"));
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.field.as_deref(), Some("tsk"));
        assert!(e.message.contains("did you mean `task`?"), "{e}");

        let e = error(&format!("{HELLO}[tsk]\nfoo = 1\n"));
        assert_eq!((e.line, e.field.as_deref()), (11, Some("tsk")));

        let e = error(&format!("{HELLO}[task.resources.extra]\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (11, Some("task.resources.extra"))
        );

        let e = error(&hello_with(3, "priority = 50\nwhatever = true"));
        assert_eq!((e.line, e.field.as_deref()), (4, Some("whatever")));
        assert!(!e.message.contains("did you mean"), "{e}");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = error(&hello_with(1, ""));
        assert_eq!(e.field.as_deref(), Some("name"));
        assert!(e.message.contains("missing required field `name`"), "{e}");
        assert_eq!((e.line, e.column), (1, 1));

        let e = error(&hello_with(2, ""));
        assert_eq!(e.field.as_deref(), Some("type"));

        let e = error("name = \"x\"\ntype = \"batch\"\n");
        assert_eq!(e.field.as_deref(), Some("task"));

        let e = error(&hello_with(5, ""));
        assert_eq!(e.field.as_deref(), Some("task.driver"));
        assert_eq!((e.line, e.column), (4, 1), "points at [task]");

        let e = error(&hello_with(9, ""));
        assert_eq!(e.field.as_deref(), Some("task.resources.cpu"));
        assert_eq!(e.line, 8, "points at [task.resources]");

        let e = error(&hello_with(10, ""));
        assert_eq!(e.field.as_deref(), Some("task.resources.memory"));

        let e =
            error("name = \"x\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/x\"\n");
        assert_eq!(e.field.as_deref(), Some("task.resources"));
        assert_eq!(e.line, 3);
    }

    #[test]
    fn a_missing_command_points_at_the_task_table() {
        let e = error(&hello_with(6, ""));
        assert_eq!(e.field.as_deref(), Some("task.command"));
        assert_eq!((e.line, e.column), (4, 1));
        assert!(e.message.contains("exec"), "{e}");
    }

    #[test]
    fn a_bad_memory_size_is_located() {
        let e = error(&hello_with(10, "memory = \"64 potatoes\""));
        assert_eq!((e.line, e.column), (10, 10));
        assert_eq!(e.field.as_deref(), Some("task.resources.memory"));
        assert!(
            e.message.contains("64 potatoes") && e.message.contains("MiB"),
            "{e}"
        );

        let e = error(&hello_with(10, "memory = \"99999999999999999999TiB\""));
        assert_eq!(e.line, 10);
        assert!(e.message.contains("too large"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_are_located() {
        let e = error(&hello_with(7, "args = [\"30\" \"x\"]"));
        assert_eq!(e.line, 7);
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("invalid TOML"), "{e}");

        let e = error("name = \"hello\"\ntype = \"batch\nx = 1\n");
        assert_eq!(e.line, 2);

        let e = error(&hello_with(3, "name = \"again\""));
        assert_eq!(e.line, 3);
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn wrong_types_are_named_and_located() {
        let e = error(&hello_with(3, "priority = \"high\""));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (3, 12, Some("priority"))
        );
        assert_eq!(e.message, "expected an integer, found a string");

        let e = error(&hello_with(9, "cpu = 1.5"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (9, Some("task.resources.cpu"))
        );
        assert!(
            e.message.contains("millicores") && e.message.contains("floating"),
            "{e}"
        );

        let e = error(&hello_with(7, "args = [\"a\", \"b\", 3]"));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (7, 19, Some("task.args[2]"))
        );

        let e = error(&hello_with(7, "args = \"30\""));
        assert_eq!(e.field.as_deref(), Some("task.args"));

        let e = error(&hello_with(1, "name = 1979-05-27"));
        assert_eq!((e.line, e.field.as_deref()), (1, Some("name")));
        assert!(e.message.contains("date-time"), "{e}");

        let e = error(&format!("{HELLO}[task.env]\nFOO = 1\n"));
        assert_eq!((e.line, e.field.as_deref()), (12, Some("task.env.FOO")));

        let e = error("name = \"x\"\ntype = \"batch\"\ntask = \"exec\"\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("task")));
        assert!(e.message.contains("expected a table"), "{e}");

        let e = error("name = \"x\"\ntype = \"batch\"\n[[task]]\ndriver = \"exec\"\n");
        assert_eq!(e.field.as_deref(), Some("task"));

        let e = error(&hello_with(2, "type = \"cron\""));
        assert_eq!((e.line, e.column, e.field.as_deref()), (2, 8, Some("type")));
        assert_eq!(e.message, "must be \"batch\" or \"service\", got \"cron\"");
    }

    #[test]
    fn validation_errors_are_located_at_their_field() {
        let e = error(&hello_with(1, "name = \"Hello\""));
        assert_eq!((e.line, e.column, e.field.as_deref()), (1, 8, Some("name")));

        let e = error(&hello_with(5, "driver = \"docker\""));
        assert_eq!((e.line, e.field.as_deref()), (5, Some("task.driver")));
        assert!(e.message.contains("exec"), "{e}");

        let e = error(&hello_with(7, "args = [\"ok\",\n  \"bad\\u0000\"]"));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (8, 3, Some("task.args[1]"))
        );

        let e = error(&format!("{HELLO}[task.env]\nOK = \"1\"\n1BAD = \"x\"\n"));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (13, 1, Some("task.env.1BAD"))
        );

        let e = error(&format!("{HELLO}[task.env]\n\"A.B\" = \"x\"\n"));
        assert_eq!((e.line, e.field.as_deref()), (12, Some("task.env.\"A.B\"")));

        let e = error(&hello_with(
            6,
            "command = \"/bin/sleep\"\nworkdir = \"tmp\"",
        ));
        assert_eq!((e.line, e.field.as_deref()), (7, Some("task.workdir")));

        let e = error(&hello_with(2, "type = \"service\"\ncount = 0"));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (3, 9, Some("count"))
        );

        let e = error(&format!("{HELLO}gpu_model = \"a100\"\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (11, Some("task.resources.gpu_model"))
        );

        let e = error(&hello_with(9, "cpu = 0"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (9, Some("task.resources.cpu"))
        );
    }

    const PLACED: &str = r#"name = "train"
type = "batch"
count = 4
gang = true
spread = "rack"
[[constraint]]
label = "rack"
op = "!="
value = "r7"
[[constraint]]
label = "gpu"
op = "exists"
[[affinity]]
label = "gpu_gen"
value = "hopper"
weight = 50
[task]
driver = "exec"
command = "/bin/true"
[task.resources]
cpu = 100
memory = "64MiB"
"#;

    /// PLACED with line `line` (1-based) replaced by `replacement`.
    fn placed_with(line: usize, replacement: &str) -> String {
        PLACED
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == line { replacement } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn placement_fields_parse() {
        let spec = parse(PLACED).expect("valid");
        let p = &spec.placement;
        assert!(p.gang);
        assert_eq!(p.spread, SpreadPolicy::Label("rack".into()));
        assert_eq!(
            p.constraints,
            [
                LabelConstraint {
                    label: "rack".into(),
                    op: ConstraintOp::NotEquals,
                    value: Some("r7".into()),
                },
                LabelConstraint {
                    label: "gpu".into(),
                    op: ConstraintOp::Exists,
                    value: None,
                },
            ]
        );
        assert_eq!(
            p.affinities,
            [Affinity {
                label: "gpu_gen".into(),
                value: "hopper".into(),
                weight: 50,
            }]
        );
        assert_eq!(
            parse(&placed_with(5, "spread = \"node\"")).map(|s| s.placement.spread),
            Ok(SpreadPolicy::Nodes)
        );
        assert!(parse(HELLO).expect("valid").placement.is_default());
    }

    #[test]
    fn placement_errors_are_located() {
        let e = error(&placed_with(8, "op = \"==\""));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (8, 6, Some("constraint[0].op"))
        );
        assert_eq!(e.message, "must be \"=\", \"!=\" or \"exists\", got \"==\"");

        let e = error(&placed_with(9, ""));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (6, Some("constraint[0].value"))
        );
        assert!(e.message.contains("required with op \"!=\""), "{e}");

        let e = error(&placed_with(12, "op = \"exists\"\nvalue = \"x\""));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (13, Some("constraint[1].value"))
        );

        let e = error(&placed_with(16, "weight = 150"));
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (16, 10, Some("affinity[0].weight"))
        );
        assert!(e.message.ends_with("got 150"), "{e}");
        let e = error(&placed_with(16, "weight = 0"));
        assert_eq!(e.field.as_deref(), Some("affinity[0].weight"));

        let e = error(&placed_with(16, "wieght = 5"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (16, Some("affinity[0].wieght"))
        );
        assert!(e.message.contains("did you mean `weight`?"), "{e}");

        let e = error(&placed_with(4, "gang = \"yes\""));
        assert_eq!((e.line, e.field.as_deref()), (4, Some("gang")));
        assert_eq!(e.message, "expected true or false, found a string");

        let e = error(&placed_with(5, "spread = \"\""));
        assert_eq!((e.line, e.field.as_deref()), (5, Some("spread")));

        let e = error(&format!("constraint = 1\n{HELLO}"));
        assert_eq!((e.line, e.field.as_deref()), (1, Some("constraint")));
        assert!(e.message.contains("[[constraint]]"), "{e}");
    }

    #[test]
    fn columns_count_characters_and_lines_count_newlines() {
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\r\ncd", 5), (2, 2));
        assert_eq!(line_column("éé=1", 4), (1, 3));
        // Inside a multi-byte character, or past the end: no panic.
        assert_eq!(line_column("é", 1), (1, 1));
        assert_eq!(line_column("ab", 99), (1, 3));

        let e = error(&hello_with(1, "name = \"héllo\" # é"));
        assert_eq!((e.line, e.column), (1, 8));
        let e = error(&hello_with(1, "nom = \"é\"\nname = \"x\""));
        assert_eq!((e.line, e.column, e.field.as_deref()), (1, 1, Some("nom")));
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn integers_may_be_written_in_any_toml_base() {
        let spec = parse(
            "name = 'x'\ntype = 'batch'\ncount = 0x10\n[task]\ndriver = 'exec'\ncommand = 'x'\n\
             [task.resources]\ncpu = +1_000\nmemory = 0o7777777\ngpus = 0b11\n",
        )
        .expect("valid");
        assert_eq!(spec.count, 16);
        assert_eq!(spec.task.resources.cpu_millis, 1000);
        assert_eq!(spec.task.resources.memory_bytes, 0o7777777);
        assert_eq!(spec.task.resources.gpus, 3);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let inputs = [
            "",
            "=",
            "[",
            "[[",
            "\u{0}",
            "name = \"\u{0}\"",
            "a = { b = { c = { d = 1 } } }",
            "[task]\n[task.resources]\ncpu = 0x7fffffffffffffff\nmemory = 0b1\n",
            "name = \"x\"\ntype = \"batch\"\ntask = {}\n",
            "name = nan\n",
            "name = inf\n",
            "\u{feff}name = \"x\"\n",
        ];
        for input in inputs {
            assert!(parse(input).is_err(), "{input:?}");
        }
    }
}
