//! Shared by every fuzz target (docs/fuzzing.md): the case count, the list
//! of RPCs read from the `.proto` files, which server each service is
//! fuzzed against, a generator of protobuf-shaped bytes, and a record of
//! panics on any thread (a handler panicking inside a tonic server does not
//! fail the calling test by itself).
//!
//! Included with `#[path]` by the fuzz tests of several crates, so some of
//! it is unused in each.
#![allow(dead_code)]
// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Mutex, Once};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per fuzz target: `HERD_FUZZ_CASES`, else `default` (kept short so
/// the whole fuzz suite stays well under a minute in CI).
pub fn cases(default: u32) -> u32 {
    match std::env::var("HERD_FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("HERD_FUZZ_CASES={text:?} is not a count: {e}")),
        Err(_) => default,
    }
}

/// The proptest configuration of a target: [`cases`], no regression files
/// written into the source tree (found panics become named regression
/// tests instead), and few shrink steps so a finding reports quickly.
pub fn config(default_cases: u32) -> Config {
    Config {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// One RPC as a `.proto` file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// The protobuf package (`herd.v1`).
    pub package: String,
    /// The service (`Jobs`).
    pub service: String,
    /// The method (`Submit`).
    pub method: String,
    /// The request message's name as written (`SubmitJobRequest`).
    pub request: String,
    /// Whether the client sends a stream of requests.
    pub client_streaming: bool,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
}

impl Rpc {
    /// `herd.v1.Jobs`.
    pub fn full_service(&self) -> String {
        format!("{}.{}", self.package, self.service)
    }

    /// The HTTP/2 path of the method: `/herd.v1.Jobs/Submit`.
    pub fn path(&self) -> String {
        format!("/{}.{}/{}", self.package, self.service, self.method)
    }
}

/// Where the fuzz targets for each service's handlers live. Every service
/// of the `.proto` files must be listed (api/tests/fuzz_requests.rs checks),
/// so a new service cannot go unfuzzed; a new method of a listed service is
/// fuzzed by its target without any change.
pub const SERVED_BY: &[(&str, &str)] = &[
    ("herd.v1.Cluster", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Jobs", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Allocs", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Migrations", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Nodes", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Variables", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Operator", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Power", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Reschedule", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Acl", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.v1.Services", "coordinator/tests/fuzz_handlers.rs"),
    ("herd.agent.v1.Agent", "coordinator/tests/fuzz_handlers.rs"),
    (
        "herd.internal.v1.Internal",
        "coordinator/tests/fuzz_handlers.rs",
    ),
    ("herd.agent.v1.AgentPeer", "node/tests/fuzz_peer.rs"),
    ("herd.agent.v1.NodeAgent", "node/tests/fuzz_peer.rs"),
    (
        "herd.inference.v1.InferenceEngine",
        "actors/tests/fuzz_inference.rs",
    ),
];

/// Every RPC of every `.proto` file under api/proto, in file order.
pub fn rpcs() -> Vec<Rpc> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/proto/herd");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .proto file in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        out.extend(parse_rpcs(&text, &file.display().to_string()));
    }
    out
}

/// The RPCs declared in one `.proto` file's text (`rpc` declarations are
/// one line each in this project; a split one fails loudly).
pub fn parse_rpcs(text: &str, file: &str) -> Vec<Rpc> {
    let mut package = None::<String>;
    let mut service = None::<String>;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim_end_matches(';').trim().to_string());
        } else if let Some(rest) = line.strip_prefix("service ") {
            service = Some(rest.trim_end_matches('{').trim().to_string());
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let at = || format!("{file}:{}: {raw:?}", n + 1);
            let (method, rest) = rest.split_once('(').unwrap_or_else(|| panic!("{}", at()));
            let (request, rest) = rest.split_once(')').unwrap_or_else(|| panic!("{}", at()));
            let (_, reply) = rest
                .split_once("returns")
                .unwrap_or_else(|| panic!("rpc not on one line: {}", at()));
            let request = request.trim();
            let (client_streaming, request) = match request.strip_prefix("stream ") {
                Some(r) => (true, r.trim()),
                None => (false, request),
            };
            let reply = reply.trim().trim_start_matches('(').trim();
            out.push(Rpc {
                package: package
                    .clone()
                    .unwrap_or_else(|| panic!("no package before {}", at())),
                service: service
                    .clone()
                    .unwrap_or_else(|| panic!("no service around {}", at())),
                method: method.trim().to_string(),
                request: request.to_string(),
                client_streaming,
                server_streaming: reply.starts_with("stream "),
            });
        }
    }
    out
}

/// One field of a protobuf message, as the generator builds it.
#[derive(Debug, Clone)]
pub enum WireField {
    /// Wire type 0.
    Varint(u32, u64),
    /// Wire type 1.
    Fixed64(u32, u64),
    /// Wire type 5.
    Fixed32(u32, u32),
    /// Wire type 2 holding arbitrary bytes.
    Bytes(u32, Vec<u8>),
    /// Wire type 2 holding text (strings are most of herd's fields).
    Text(u32, String),
    /// Wire type 2 holding a nested message.
    Message(u32, Vec<WireField>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// The protobuf encoding of `fields`.
pub fn encode_fields(fields: &[WireField]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            WireField::Varint(n, v) => {
                put_key(&mut out, *n, 0);
                put_varint(&mut out, *v);
            }
            WireField::Fixed64(n, v) => {
                put_key(&mut out, *n, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            WireField::Fixed32(n, v) => {
                put_key(&mut out, *n, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            WireField::Bytes(n, b) => {
                put_key(&mut out, *n, 2);
                put_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            WireField::Text(n, s) => {
                put_key(&mut out, *n, 2);
                put_varint(&mut out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            WireField::Message(n, inner) => {
                let body = encode_fields(inner);
                put_key(&mut out, *n, 2);
                put_varint(&mut out, body.len() as u64);
                out.extend_from_slice(&body);
            }
        }
    }
    out
}

/// Field numbers: mostly the low ones real messages use.
fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![
        10 => 1u32..=12,
        2 => 13u32..=40,
        1 => 1u32..(1 << 29),
    ]
}

/// Numbers that find edges: small, bounds, and anything.
pub fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=4,
        2 => 0u64..=1_000,
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => Just(i64::MIN as u64),
        1 => Just(u64::MAX - 1),
        2 => any::<u64>(),
    ]
}

/// Words herd's messages understand, so random messages reach past the
/// first "unknown value" check.
const WORDS: &[&str] = &[
    "",
    "exec",
    "vm",
    "simvm",
    "dljob",
    "inference",
    "batch",
    "service",
    "64MiB",
    "1GiB",
    "rack",
    "=",
    "!=",
    "exists",
    "low",
    "medium",
    "max",
    "/bin/sh",
    "/tmp",
    "a/../b",
    "../x",
    "node-1",
    "127.0.0.1:1",
    "running",
    "pending",
    "complete",
    "failed",
    "lost",
    "hello",
    "m-1",
    "-1",
    "18446744073709551616",
    "1e309",
    "NaN",
    "\u{0}",
    "é",
    "kv_blocks",
    "max_batch",
    "preemption",
    "recompute",
    "swap",
    "time_scale",
    "bytes_per_token",
    "dirty_rate",
    "seed",
    "kernel",
    "disk_size",
    "numa",
    "accel",
    "0",
    "1",
    "4294967296",
    "0.5",
];

/// Text fields: known words, short ASCII, and any Unicode.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_string),
        3 => "[a-z0-9./:=-]{0,12}",
        1 => any::<String>(),
        1 => (1usize..3000).prop_map(|n| "x".repeat(n)),
    ]
}

/// A protobuf message of random fields, nested a few levels deep.
pub fn wire_fields() -> impl Strategy<Value = Vec<WireField>> {
    let leaf = prop_oneof![
        4 => (field_number(), interesting_u64()).prop_map(|(n, v)| WireField::Varint(n, v)),
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| WireField::Fixed64(n, v)),
        1 => (field_number(), any::<u32>()).prop_map(|(n, v)| WireField::Fixed32(n, v)),
        2 => (field_number(), proptest::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(n, b)| WireField::Bytes(n, b)),
        4 => (field_number(), text()).prop_map(|(n, s)| WireField::Text(n, s)),
    ];
    let field = leaf.prop_recursive(4, 48, 8, |inner| {
        (field_number(), proptest::collection::vec(inner, 0..8))
            .prop_map(|(n, fields)| WireField::Message(n, fields))
    });
    proptest::collection::vec(field, 0..10)
}

/// Bytes to hand a protobuf decoder: mostly well-framed random messages,
/// some raw noise, and some well-framed messages with a byte changed or cut.
pub fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => wire_fields().prop_map(|f| encode_fields(&f)),
        2 => proptest::collection::vec(any::<u8>(), 0..96),
        2 => (wire_fields(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>())
            .prop_map(|(f, at, byte, cut)| {
                let mut b = encode_fields(&f);
                if !b.is_empty() {
                    let i = at.index(b.len());
                    if cut {
                        b.truncate(i);
                    } else {
                        b[i] = byte;
                    }
                }
                b
            }),
    ]
}

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Records every panic of this process, on any thread, for
/// [`take_panics`]; the default report still prints.
pub fn record_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            if let Ok(mut list) = PANICS.lock() {
                list.push(format!("thread {thread}: {info}"));
            }
            previous(info);
        }));
    });
}

/// The panics recorded since the last call.
pub fn take_panics() -> Vec<String> {
    match PANICS.lock() {
        Ok(mut list) => std::mem::take(&mut *list),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}
