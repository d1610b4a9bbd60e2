//! `herd bench power` end to end through the binary: the SIMULATION's
//! comparison comes out as JSON with every row, the policy rows keep the
//! feed and spare inference, the same seed prints the same figures, and
//! bad flags exit 2 naming what is wrong.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn herd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd"))
}

fn bench_json(seed: &str) -> Vec<Value> {
    let out = herd()
        .args(["-o", "json", "bench", "power", "--hours", "0.1"])
        .args([
            "--start-hour",
            "15",
            "--feed-kw",
            "60",
            "--oversub",
            "30,40",
        ])
        .args(["--seed", seed])
        .output()
        .expect("run herd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    rows.as_array().expect("rows").clone()
}

#[test]
fn the_comparison_is_complete_and_deterministic() {
    let rows = bench_json("5");
    // Nameplate, then uncapped, static cap, policy and demand shares for
    // each of 2 levels.
    assert_eq!(rows.len(), 9, "{rows:?}");
    assert!(rows.iter().all(|r| r["simulation"] == true));
    let nameplate = &rows[0];
    assert_eq!(nameplate["row"], "nameplate");
    assert_eq!(nameplate["over_budget_s"], 0.0, "{nameplate}");
    let herd = |r: &&Value| {
        r["provisioning"] == "herd policy" || r["provisioning"] == "herd demand shares"
    };
    assert_eq!(rows.iter().filter(herd).count(), 4);
    for row in rows.iter().filter(herd) {
        assert!(
            row["more_servers"].as_f64().is_some_and(|m| m >= 0.29),
            "{row}"
        );
        assert!(
            row["longest_excursion_s"]
                .as_f64()
                .is_some_and(|s| s <= 1.0),
            "{row}"
        );
        let inference = row["loss_inference"].as_f64().expect("loss");
        let training = row["loss_training"].as_f64().expect("loss");
        assert!(inference <= training, "{row}");
    }
    let strip = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut r| {
                r["wall_s"] = Value::Null;
                r
            })
            .collect()
    };
    assert_eq!(strip(rows), strip(bench_json("5")));
}

#[test]
fn bad_flags_exit_2_naming_what_is_wrong() {
    for (args, needle) in [
        (vec!["--hours", "0"], "hours"),
        (vec!["--hours", "1000"], "hours"),
        (vec!["--feed-kw", "1"], "does not cover one server"),
        (vec!["--feed-kw=-5"], "--feed-kw"),
        (vec!["--oversub", "500"], "--oversub"),
        (vec!["--start-hour", "25"], "start hour"),
    ] {
        let out = herd()
            .args(["bench", "power"])
            .args(&args)
            .output()
            .expect("run herd");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
