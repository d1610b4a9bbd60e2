//! Fuzzing the job spec parser (issue 24; docs/fuzzing.md): any text, and
//! structure-aware mutations of the valid specs in examples/, is either
//! accepted or refused with a located error, never a panic. A spec the
//! file parser accepts must also be accepted over the wire (its proto form
//! converts back to the same spec), so the two entry points agree.
//!
//! Cases per target: `HERD_FUZZ_CASES` (short by default, for CI).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use std::path::Path;

use herd_api::job::JobSpec;
use herd_api::proto::v1 as pb;
use herd_api::spec_file::parse_job_spec;
use proptest::prelude::*;
use toml::{Table, Value};

/// The valid specs shipped in examples/, as (file name, text).
fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "examples/ holds too few specs: {out:?}");
    out
}

/// Parses `text`; an accepted spec must also survive the wire.
fn check(text: &str) -> Result<(), TestCaseError> {
    let parsed = parse_job_spec(text, "fuzz.toml");
    match parsed {
        Ok(spec) => {
            prop_assert!(spec.validate().is_ok(), "accepted but invalid: {spec:?}");
            let wire = pb::JobSpec::from(&spec);
            let back = JobSpec::try_from(wire.clone());
            prop_assert_eq!(
                back.as_ref().ok(),
                Some(&spec),
                "file spec refused or changed over the wire: {:?} (wire {:?})",
                back,
                wire
            );
        }
        Err(e) => {
            prop_assert!(e.line >= 1 && e.column >= 1, "unlocated error {e:?}");
            prop_assert!(!e.message.is_empty(), "empty message {e:?}");
        }
    }
    Ok(())
}

/// TOML values that find edges in a spec's fields.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => fuzz_support::text().prop_map(Value::String),
        1 => Just(Value::Integer(0)),
        1 => Just(Value::Integer(-1)),
        1 => Just(Value::Integer(i64::MAX)),
        1 => Just(Value::Integer(i64::MIN)),
        1 => Just(Value::Integer(i64::from(u32::MAX) + 1)),
        2 => any::<i64>().prop_map(Value::Integer),
        1 => (-200i64..=200).prop_map(Value::Integer),
        1 => prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e300),
            any::<f64>()
        ]
        .prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// One edit of a spec's tree.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value at the chosen path.
    Set(prop::sample::Index, Value),
    /// Remove the key at the chosen path.
    Remove(prop::sample::Index),
    /// Add a key (known to some table of the spec format, or not).
    Add(prop::sample::Index, String, Value),
}

/// Keys the spec format knows, in any table, so additions hit real fields.
const KEYS: &[&str] = &[
    "name",
    "type",
    "count",
    "priority",
    "gang",
    "spread",
    "power_class",
    "stop_after_disconnect",
    "balance",
    "autoscale",
    "constraint",
    "affinity",
    "label",
    "op",
    "value",
    "weight",
    "task",
    "driver",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "cpu",
    "memory",
    "gpus",
    "gpu_model",
    "config",
    "kv_blocks",
    "max_batch",
    "kernel",
    "disk_size",
    "dirty_rate",
    "movable",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), value()).prop_map(|(i, v)| Edit::Set(i, v)),
        2 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        2 => (
            any::<prop::sample::Index>(),
            prop_oneof![
                4 => proptest::sample::select(KEYS).prop_map(str::to_string),
                1 => "[a-z_]{1,8}",
            ],
            value()
        )
            .prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

/// Every path (keys and array indexes) of the tree, tables included.
fn paths(table: &Table, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    for (k, v) in table {
        prefix.push(PathStep::Key(k.clone()));
        out.push(prefix.clone());
        walk(v, prefix, out);
        prefix.pop();
    }
}

fn walk(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Table(t) => paths(t, prefix, out),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                walk(item, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(root: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut at = root;
    for step in path {
        at = match (step, at) {
            (PathStep::Key(k), Value::Table(t)) => t.get_mut(k)?,
            (PathStep::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(at)
}

fn apply(root: &mut Value, edit: &Edit) {
    let Value::Table(table) = &*root else { return };
    let mut all = Vec::new();
    paths(table, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    match edit {
        Edit::Set(i, v) => {
            if let Some(slot) = get_mut(root, &all[i.index(all.len())]) {
                *slot = v.clone();
            }
        }
        Edit::Remove(i) => {
            let path = &all[i.index(all.len())];
            let (last, parent) = path.split_last().expect("paths are not empty");
            if let Some(parent) = get_mut(root, parent) {
                match (last, parent) {
                    (PathStep::Key(k), Value::Table(t)) => {
                        t.remove(k);
                    }
                    (PathStep::Index(i), Value::Array(a)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Edit::Add(i, key, v) => {
            // Into the chosen table, or the root when the path is no table.
            let path = &all[i.index(all.len())];
            match get_mut(root, path) {
                Some(Value::Table(t)) => {
                    t.insert(key.clone(), v.clone());
                }
                _ => {
                    if let Value::Table(t) = root {
                        t.insert(key.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// A text-level change: insert, delete or replace a few bytes at a char
/// boundary (the parser takes `&str`, so the result stays UTF-8).
#[derive(Debug, Clone)]
enum TextEdit {
    Insert(prop::sample::Index, String),
    Delete(prop::sample::Index, usize),
    Line(prop::sample::Index),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), prop_oneof![
            "[\\[\\]{}=\"'#,.\n0-9a-z -]{1,4}",
            fuzz_support::text(),
        ])
            .prop_map(|(i, s)| TextEdit::Insert(i, s)),
        2 => (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| TextEdit::Delete(i, n)),
        1 => any::<prop::sample::Index>().prop_map(TextEdit::Line),
    ]
}

fn char_boundary(text: &str, i: &prop::sample::Index) -> usize {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain([text.len()])
        .collect();
    bounds[i.index(bounds.len())]
}

fn apply_text(text: &mut String, edit: &TextEdit) {
    match edit {
        TextEdit::Insert(i, s) => {
            let at = char_boundary(text, i);
            text.insert_str(at, s);
        }
        TextEdit::Delete(i, n) => {
            let at = char_boundary(text, i);
            let end = text[at..]
                .char_indices()
                .nth(*n)
                .map_or(text.len(), |(b, _)| at + b);
            text.replace_range(at..end, "");
        }
        TextEdit::Line(i) => {
            // Duplicate a line (a repeated key or table header).
            let lines: Vec<&str> = text.lines().collect();
            if let Some(line) = lines.get(i.index(lines.len().max(1))) {
                let line = format!("{line}\n");
                text.push('\n');
                text.push_str(&line);
            }
        }
    }
}

proptest! {
    #![proptest_config(fuzz_support::config(2_000))]

    /// Any text at all: errors, never panics.
    #[test]
    fn arbitrary_text_never_panics(text in prop_oneof![
        any::<String>(),
        "[\\[\\]{}=\"'#,.\n0-9a-z_ -]{0,200}",
    ]) {
        check(&text)?;
    }

    /// The examples with their TOML tree edited: values replaced by
    /// extreme ones, keys removed and added.
    #[test]
    fn edited_example_trees_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let all = examples();
        let (_, source) = &all[which.index(all.len())];
        let table: Table = toml::from_str(source).expect("examples parse as TOML");
        let mut root = Value::Table(table);
        for e in &edits {
            apply(&mut root, e);
        }
        let Value::Table(table) = root else { unreachable!("the root stays a table") };
        // Some edits make a tree TOML cannot write (e.g. NaN keys): skip those.
        if let Ok(text) = toml::to_string(&table) {
            check(&text)?;
        }
    }

    /// The examples with their text edited: bytes inserted, deleted, lines
    /// repeated.
    #[test]
    fn edited_example_texts_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(text_edit(), 1..4),
    ) {
        let all = examples();
        let (_, source) = &all[which.index(all.len())];
        let mut text = source.clone();
        for e in &edits {
            apply_text(&mut text, e);
        }
        check(&text)?;
    }
}

/// The unedited examples pass [`check`], so the targets start from specs
/// that reach validation's end and the wire round trip holds for them.
#[test]
fn the_examples_pass_the_fuzz_check() {
    for (file, text) in examples() {
        check(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(parse_job_spec(&text, &file).is_ok(), "{file}");
    }
}
