//! The agent API's registration path and `herd node list`, on a real coordinator.

mod common;

use common::*;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::RegisterNodeRequest;
use herd_api::proto::v1::Resources;

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
}
