//! `herd bench migrate` end to end through the binary, one small row per
//! kind: a real VM (TCG) beside QEMU alone, a DL checkpoint and a
//! simulated VM each move through a coordinator and two agents it starts,
//! and every row comes back with herd's figures and no note. The bench's
//! agents confine the paths a job names like any agent: a bench that
//! forgets to allow its own files fails every row here (as it once did).
//! Skipped where QEMU, busybox or the guest kernel are missing, except in
//! CI (`CI=true`), where that fails.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qemu::guest_parts;
use common::*;
use serde_json::Value;

#[test]
fn one_row_of_each_kind_moves_and_is_measured() {
    let parts = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let out = std::process::Command::new(herd_bin())
        .args(["-o", "json", "bench", "migrate"])
        .args(["--kinds", "vm,dljob,simvm", "--loads", "idle"])
        .args(["--sizes", "vm:128MiB,dljob:10MiB,simvm:1GiB"])
        .args(["--simvm-dirty-rates", "0"])
        .arg("--kernel")
        .arg(&parts.kernel)
        .output()
        .expect("run herd bench migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("an array of rows");
    let kinds: Vec<&str> = rows.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["vm", "dljob", "simvm"], "{rows:#?}");
    for row in rows {
        assert!(
            row["note"].is_null(),
            "a row with a note: {row:#}\n{stderr}"
        );
        let total = row["herd_total_ms"].as_u64().expect("herd's total");
        assert!(total > 0, "{row:#}");
        assert!(row["bytes"].as_u64() > Some(0), "bytes moved: {row:#}");
    }
    let vm = &rows[0];
    assert!(
        vm["baseline_total_ms"].as_u64() > Some(0),
        "QEMU alone measured beside it: {vm:#}"
    );
    assert!(vm["ratio"].as_f64() > Some(0.0), "{vm:#}");
}
