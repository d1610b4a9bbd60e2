//! A request id follows a job from the CLI through the coordinator that
//! received it and the leader that placed it to the agent that runs it, in
//! their JSON logs (issue: operations, observability). Real processes: 3
//! coordinators, 1 agent; the job is submitted through a follower, so the
//! id must cross the replicated state to reach the leader's log.

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents_args, must_have_ready_nodes, running_allocs};
use common::*;
use serde_json::Value;

const ID: &str = "test-req-0042";

fn sleep_spec(count: u32) -> String {
    format!(
        "name = \"web\"\ntype = \"service\"\ncount = {count}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 600\"]\n[task.resources]\ncpu = 100\nmemory = \"16MiB\"\n"
    )
}

/// The JSON log events in `log` whose message is `message` and that carry
/// request id `id`, in their own fields or in an enclosing span's.
fn events_with(log: &str, message: &str, id: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["message"] == message)
        .filter(|event| {
            event["fields"]["request_id"] == id
                || event["span"]["request_id"] == id
                || event["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == id))
        })
        .collect()
}

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_a_job_from_the_cli_through_the_leader_to_the_agent() {
    let (cluster, addr, mut agents) =
        cluster_with_agents_args(3, &["--node-ttl-ms", "3000", "--log-json"]).await;
    agents.start("a", &["--log-json"]).expect("start agent");
    must_have_ready_nodes(&addr, &["a"]).await;

    let status: Value = serde_json::from_str(&must_cli_ok(&[
        "--addr", &addr, "cluster", "status", "-o", "json",
    ]))
    .expect("status json");
    let leader = status["leader"].as_u64().expect("leader id");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let follower_addr = cluster.member(follower).expect("member").addr.clone();

    // A malformed id is the caller's mistake: exit 2, nothing sent.
    let bad = must_run_cli(&[
        "--addr",
        &follower_addr,
        "--request-id",
        "two words",
        "job",
        "list",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--request-id"),
        "{bad:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "web", &sleep_spec(1));
    let out = must_cli_ok(&[
        "--addr",
        &follower_addr,
        "--request-id",
        ID,
        "job",
        "run",
        "--detach",
        &spec,
    ]);
    assert!(out.contains(&format!("request {ID}")), "{out}");

    let alloc = until("the instance runs", Duration::from_secs(30), || {
        running_allocs(&addr, "web")
            .first()
            .and_then(|a| a["id"].as_str().map(str::to_string))
    })
    .await;

    // The member that took the call logged the id...
    let follower_log = log_of(&cluster.member(follower).expect("member").log_path);
    assert!(
        !events_with(&follower_log, "job submitted", ID).is_empty(),
        "the receiving member logs the request id:\n{follower_log}"
    );
    // ...the leader placed the job under it...
    let leader_log = until(
        "the leader logs the placement",
        Duration::from_secs(10),
        || {
            let log = log_of(&cluster.member(leader).expect("member").log_path);
            (!events_with(&log, "plan applied", ID).is_empty()).then_some(log)
        },
    )
    .await;
    assert!(
        events_with(&follower_log, "plan applied", ID).is_empty(),
        "only the leader places"
    );
    drop(leader_log);
    // ...and the agent got it with the allocation it runs.
    let agent_log_path = agents.agent("a").expect("agent").log_path.clone();
    let assigned = until(
        "the agent logs the assignment",
        Duration::from_secs(10),
        || {
            let events = events_with(&log_of(&agent_log_path), "allocation assigned", ID);
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    assert_eq!(
        assigned[0]["fields"]["alloc"],
        alloc.as_str(),
        "{assigned:?}"
    );

    // The job says which request made its version; resubmitting the same
    // spec (another request, no new version) leaves that so.
    let job = json(&addr, &["job", "status", "web"]);
    assert_eq!(job["request_id"], ID, "{job}");
    let again = must_cli_ok(&[
        "--addr",
        &addr,
        "--request-id",
        "test-req-0043",
        "job",
        "run",
        "--detach",
        &spec,
    ]);
    assert!(again.contains("unchanged"), "{again}");
    let job = json(&addr, &["job", "status", "web"]);
    assert_eq!(job["request_id"], ID, "an unchanged resubmission: {job}");

    // A change is the new request's, and its stop is logged under its own.
    let spec2 = write_spec(dir.path(), "web2", &sleep_spec(2));
    must_cli_ok(&[
        "--addr",
        &addr,
        "--request-id",
        "test-req-0044",
        "job",
        "run",
        "--detach",
        &spec2,
    ]);
    let job = json(&addr, &["job", "status", "web"]);
    assert_eq!(job["request_id"], "test-req-0044", "{job}");
    let stopped = must_cli_ok(&[
        "--addr",
        &follower_addr,
        "--request-id",
        "test-req-0045",
        "job",
        "stop",
        "web",
    ]);
    assert!(stopped.contains("request test-req-0045"), "{stopped}");
    let follower_log = log_of(&cluster.member(follower).expect("member").log_path);
    assert!(
        !events_with(&follower_log, "job stopped", "test-req-0045").is_empty(),
        "{follower_log}"
    );
}
