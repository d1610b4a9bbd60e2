//! `herd job run` follows its job, as `nomad job run` does: it returns 0
//! once every instance is placed (so the next command sees allocations),
//! non-zero naming the scheduler's reason when the job stays blocked past
//! `--timeout`, and at once with `--detach`. Nodes here are registrations
//! without agents (allocations stay pending, which is placed), so the test
//! judges the command, not the agents.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn spec(name: &str, count: u32, memory: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\ncount = {count}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[task.resources]\ncpu = 100\nmemory = \"{memory}\"\n"
    )
}

/// Allocations of `job` that hold a place (meant to run, pending or running).
fn placed(addr: &str, job: &str) -> Vec<Value> {
    json(addr, &["alloc", "list", "--job", job])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["desired"] == "run" && (a["status"] == "pending" || a["status"] == "running"))
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_run_waits_until_placed_fails_naming_why_when_blocked_and_detaches_on_request() {
    // Registrations send no heartbeats: a TTL that never marks them down.
    let cluster = must_start_one_member(&["--node-ttl-ms", "3600000"]).await;
    let addr = cluster.addr_list();
    must_register_node(&cluster, "n1", 4000).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Placed: it returns 0 and the allocations are there when it does.
    let web = write_spec(dir.path(), "web", &spec("web", 2, "1GiB"));
    let out = must_run_cli(&["--addr", &addr, "job", "run", &web]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("job web submitted: version 1"), "{stdout}");
    assert!(
        stdout.contains("job web: all 2 instances placed"),
        "{stdout}"
    );
    let allocs = placed(&addr, "web");
    assert_eq!(allocs.len(), 2, "{allocs:#?}");
    assert!(allocs.iter().all(|a| a["job_version"] == 1), "{allocs:#?}");

    // Resubmitted unchanged: already placed, so it returns at once.
    let out = must_cli_ok(&["--addr", &addr, "job", "run", &web]);
    assert!(
        out.contains("unchanged") && out.contains("all 2 instances placed"),
        "{out}"
    );

    // Scripts read the outcome as JSON.
    let one = write_spec(dir.path(), "one", &spec("one", 1, "512MiB"));
    let doc = json(&addr, &["job", "run", &one]);
    assert_eq!(
        (&doc["outcome"], &doc["placed"], &doc["count"]),
        (&Value::from("placed"), &Value::from(1), &Value::from(1)),
        "{doc:#}"
    );

    // Blocked: 5 GiB instances on a node with 5.5 GiB free hold one,
    // not two. It waits out the timeout, then says why and exits 1; the job
    // stays submitted with its one placed instance.
    let big = write_spec(dir.path(), "big", &spec("big", 2, "5GiB"));
    let started = Instant::now();
    let out = must_run_cli(&["--addr", &addr, "job", "run", "--timeout", "2s", &big]);
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("job big: 1/2 instances placed after 2s; blocked:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("memory"),
        "the reason names memory: {stderr}"
    );
    assert!(stderr.contains("herd job stop big"), "{stderr}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "took {took:?} for a 2 s timeout"
    );
    let job = json(&addr, &["job", "status", "big"]);
    assert!(job["blocked"].is_string(), "{job:#}");
    assert_eq!(placed(&addr, "big").len(), 1);

    // More memory than any node has: refused at submit, naming the field.
    let huge = write_spec(dir.path(), "huge", &spec("huge", 1, "64GiB"));
    let out = must_run_cli(&["--addr", &addr, "job", "run", &huge]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no node could ever hold"), "{stderr}");

    // Detached: it returns as soon as the job is stored, even one that
    // cannot be placed now and a timeout far longer than the test.
    let later = write_spec(dir.path(), "later", &spec("later", 1, "3GiB"));
    let started = Instant::now();
    let out = must_run_cli(&[
        "--addr",
        &addr,
        "job",
        "run",
        "--detach",
        "--timeout",
        "10m",
        &later,
    ]);
    let took = started.elapsed();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("job later submitted: version 1"),
        "{stdout}"
    );
    assert!(!stdout.contains("placed"), "it did not follow: {stdout}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let job = until(
        "the detached job's blocked reason",
        Duration::from_secs(10),
        || {
            let job = json(&addr, &["job", "status", "later"]);
            job["blocked"].is_string().then_some(job)
        },
    )
    .await;
    assert_eq!(job["status"], "pending", "{job:#}");
}
