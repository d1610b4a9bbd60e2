//! The chaos harness's fault shim, preloaded into a real coordinator: its
//! wall clock moves when the control file says so (and back), and its log
//! writes wait for the slowed fsyncs. The `slow-fsync` and `clock-skew`
//! scenarios rely on both.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};
use herd_chaos::shim::ShimFaults;

const SPEC: &str = "type = \"batch\"\npriority = 50\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"30\"]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Submits job `name` and returns the time the coordinator stamped on it.
fn submitted_at_ms(addr: &str, dir: &std::path::Path, name: &str) -> i64 {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{SPEC}")).expect("write spec");
    let path = path.display().to_string();
    // No node runs here: stored is all this needs.
    must_cli_ok(&["--addr", addr, "job", "run", "--detach", &path]);
    let status = must_cli_ok(&["--addr", addr, "job", "status", name, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&status).expect("json");
    json["submitted_at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no submitted_at_ms in {status}"))
}

/// How long the library may take to re-read its control file (every 25 ms)
/// on a loaded machine: a bound on the waits below, not a pause.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_skews_a_coordinators_wall_clock_and_delays_its_fsyncs() {
    let shim = chaos_shim();
    let addrs = ProcessCluster::pick_addrs(1).expect("addrs");
    let setup = ClusterSetup {
        shim: Some(shim),
        ..ClusterSetup::default()
    };
    let mut cluster = ProcessCluster::start_at(herd_bin(), &addrs, setup).expect("start");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let dir = tempfile::tempdir().expect("dir");

    // Untouched, the coordinator stamps jobs with the real time.
    let drift = submitted_at_ms(&addr, dir.path(), "before") - now_ms();
    assert!(drift.abs() < 60_000, "unskewed clock off by {drift} ms");

    // An hour ahead, while it runs.
    let hour = 3_600_000;
    cluster
        .set_shim_faults(
            1,
            ShimFaults {
                clock_offset_ms: hour,
                ..ShimFaults::default()
            },
        )
        .expect("skew");
    let mut tries = 0;
    let mut drift = 0;
    let skewed = until_or_none(RELOAD_LIMIT, || {
        tries += 1;
        drift = submitted_at_ms(&addr, dir.path(), &format!("skewed-{tries}")) - now_ms();
        ((drift - hour).abs() < 60_000).then_some(())
    })
    .await;
    assert!(
        skewed.is_some(),
        "expected jobs stamped an hour ahead, the last is {drift} ms off"
    );

    // And back.
    cluster
        .set_shim_faults(1, ShimFaults::default())
        .expect("heal");
    let healed = until_or_none(RELOAD_LIMIT, || {
        tries += 1;
        drift = submitted_at_ms(&addr, dir.path(), &format!("after-{tries}")) - now_ms();
        (drift.abs() < 60_000).then_some(())
    })
    .await;
    assert!(healed.is_some(), "healed clock off by {drift} ms");

    // Every acknowledged write waited for at least one slowed fsync of the
    // single member's log.
    let client = cluster.client().expect("client");
    let delay = 400;
    cluster
        .set_shim_faults(
            1,
            ShimFaults {
                fsync_delay_ms: delay,
                ..ShimFaults::default()
            },
        )
        .expect("slow fsync");
    // Once one write waits for a slow fsync, the fault is in force...
    let started = Instant::now();
    let mut i = 0;
    loop {
        let begun = Instant::now();
        put(&client, "slow", &format!("w{i}")).await.expect("put");
        if begun.elapsed() >= Duration::from_millis(delay) {
            break;
        }
        assert!(
            started.elapsed() < RELOAD_LIMIT,
            "no write waited for a {delay} ms fsync within {RELOAD_LIMIT:?}"
        );
        i += 1;
    }
    // ... and every later write waits too.
    for i in 0..3 {
        let started = Instant::now();
        put(&client, "slow", &format!("v{i}")).await.expect("put");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(delay),
            "a write was acknowledged after {took:?}, before a {delay} ms fsync could finish"
        );
    }
    cluster
        .set_shim_faults(1, ShimFaults::default())
        .expect("heal");
}
