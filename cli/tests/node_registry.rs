//! The agent API's registration path and `herd node list`, on a real coordinator.

mod common;

use common::*;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::RegisterNodeRequest;
use herd_api::proto::v1::{DriverCapabilities, Resources};

fn request(name: &str, cpu_millis: u64) -> RegisterNodeRequest {
    RegisterNodeRequest {
        name: name.to_string(),
        addr: "127.0.0.1:7200".to_string(),
        capacity: Some(Resources {
            cpu_millis,
            memory_bytes: 8 << 30,
            gpus: 2,
            gpu_model: "h100".to_string(),
        }),
        labels: [("rack".to_string(), "r1".to_string())]
            .into_iter()
            .collect(),
        // An agent older than driver capabilities sends none.
        drivers: vec![],
        http: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registered_nodes_are_listed_and_bad_registrations_refused() {
    // Registrations without agents send no heartbeats: a TTL that outlasts the test.
    let cluster = must_start_one_member(&["--node-ttl-ms", "3600000"]).await;
    let client = cluster.client().expect("client");

    let register = |req: RegisterNodeRequest| {
        let client = client.clone();
        async move {
            client
                .call(|ch| {
                    let req = req.clone();
                    async move {
                        AgentClient::new(ch)
                            .register(req)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await
        }
    };
    register(request("gpu-1", 64_000)).await.expect("register");
    // Re-registering refreshes the node instead of duplicating it.
    register(request("gpu-1", 32_000))
        .await
        .expect("re-register");
    let bad = register(request("", 1000)).await.expect_err("empty name");
    assert_eq!(bad.code(), Some(tonic::Code::InvalidArgument), "{bad}");
    let bad = register(request("gpu-2", 0)).await.expect_err("no cpu");
    assert_eq!(bad.code(), Some(tonic::Code::InvalidArgument), "{bad}");

    let out = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("json");
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 1, "{out}");
    assert_eq!(nodes[0]["name"], "gpu-1");
    assert_eq!(nodes[0]["status"], "ready");
    assert_eq!(nodes[0]["capacity"]["cpu_millis"], 32_000);
    assert_eq!(nodes[0]["capacity"]["gpus"], 2);
    assert_eq!(nodes[0]["labels"]["rack"], "r1");
    // Registered as an agent older than driver capabilities: unknown.
    assert_eq!(nodes[0]["drivers"], serde_json::Value::Null, "{out}");
    let table = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list"]);
    assert!(
        table.contains("MOVES") && table.contains("unknown"),
        "{table}"
    );

    // A newer agent says what its drivers allow.
    let caps = |driver: &str, migration: &str, pause| DriverCapabilities {
        driver: driver.to_string(),
        migration: migration.to_string(),
        pause,
        power_cap: false,
    };
    let mut newer = request("gpu-1", 32_000);
    newer.drivers = vec![caps("exec", "none", false), caps("vm", "live", true)];
    register(newer.clone())
        .await
        .expect("register with drivers");
    let out = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        nodes[0]["drivers"],
        serde_json::json!({
            "exec": {"migration": "none", "pause": false, "power_cap": false},
            "vm": {"migration": "live", "pause": true, "power_cap": false},
        }),
        "{out}"
    );
    let table = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list"]);
    assert!(
        table.contains("vm") && !table.contains("unknown"),
        "{table}"
    );

    // Bad declarations are refused whole, naming the field; nothing changes.
    let mut bad = newer.clone();
    bad.drivers[1].migration = "teleport".to_string();
    let e = register(bad).await.expect_err("unknown mode");
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(
        e.to_string().contains("drivers[1].migration") && e.to_string().contains("teleport"),
        "{e}"
    );
    let mut bad = newer.clone();
    bad.drivers = (0..33)
        .map(|i| caps(&format!("d{i}"), "none", false))
        .collect();
    let e = register(bad).await.expect_err("too many drivers");
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("at most 32 drivers"), "{e}");
    let after = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list", "-o", "json"]);
    let after: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(after[0]["drivers"], nodes[0]["drivers"]);

    // The same node registered again by an older agent: unknown again, not
    // what the newer one could do.
    register(request("gpu-1", 32_000))
        .await
        .expect("older agent");
    let out = must_cli_ok(&["--addr", &cluster.addr_list(), "node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(nodes[0]["drivers"], serde_json::Value::Null, "{out}");
}
