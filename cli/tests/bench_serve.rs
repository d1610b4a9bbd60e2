//! `herd bench serve` end to end through the binary: the SIMULATED fleet's
//! comparison comes out as JSON, every request of every policy finishes with
//! every token once, the same seed prints the same figures, and bad flags
//! exit 2 naming the flag.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn herd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd"))
}

fn bench_json(seed: &str) -> Value {
    let out = herd()
        .args(["-o", "json", "bench", "serve", "--rate", "20"])
        .args(["--instances", "4", "--requests", "300", "--seed", seed])
        .output()
        .expect("run herd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn the_comparison_is_complete_checked_and_deterministic() {
    let first = bench_json("3");
    assert_eq!(first["simulation"], true);
    let runs = first["runs"].as_array().expect("runs");
    // 4 policies × (Poisson, Gamma).
    assert_eq!(runs.len(), 8, "{first}");
    let policies: std::collections::BTreeSet<&str> =
        runs.iter().filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(policies.len(), 4, "{policies:?}");
    for run in runs {
        assert_eq!(run["finished"], 300, "{run}");
        assert_eq!(run["refused"], 0, "{run}");
        assert_eq!(run["token_errors"], 0, "{run}");
        assert!(
            run["ttft_p99_ms"].as_f64().is_some_and(|v| v > 0.0),
            "{run}"
        );
        assert!(run["ttft_mean_ms"].as_f64().is_some_and(|v| v > 0.0));
    }
    // Same seed, same figures (wall time aside).
    let again = bench_json("3");
    assert_eq!(first["runs"], again["runs"]);
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (vec!["--instances", "0"], "--instances"),
        (vec!["--rate=0"], "--rate"),
        (vec!["--prompt-mean", "9000"], "prompt lengths"),
        (vec!["--cv", "0"], "coefficient of variation"),
        (vec!["--kv-blocks", "8"], "--kv-blocks"),
    ] {
        let out = herd()
            .args(["bench", "serve"])
            .args(&args)
            .output()
            .expect("run herd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
