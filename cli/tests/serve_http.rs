//! Serving across the fleet, end to end on real processes: 1 coordinator
//! and 2 `herd node` agents, each running one instance of a SIMULATED LLM
//! service and each serving the OpenAI-compatible HTTP endpoint. Requests
//! enter at ONE agent's endpoint and are spread over both instances by
//! virtual usage (a long request fills one instance; short ones then go to
//! the other); a streamed completion arrives as server-sent events with
//! every token in order and the usage in its last chunk; `/v1/models`
//! lists the service; an unknown model, bad JSON, a bad field and a request
//! larger than any instance are refused with OpenAI-style errors; `herd
//! infer` entering at either agent is dispatched the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::serve::{call, events, must_list_model, send, start_http_agent, ServiceSpec};
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// Two instances (one per node) of 64 KV blocks (1 024 tokens) each, at
/// half the modelled speed's wall time.
fn spec() -> ServiceSpec {
    ServiceSpec::llm(2).time_scale("0.5")
}

fn short(prompt: usize) -> String {
    json!({"model": "llm", "prompt": vec![1; prompt], "max_tokens": 4}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_entering_at_one_agent_spread_over_the_fleet_by_virtual_usage() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let mut http = BTreeMap::new();
    for name in ["h1", "h2"] {
        http.insert(name, start_http_agent(&mut agents, name));
    }
    must_have_ready_nodes(&addr, &["h1", "h2"]).await;
    // Each node's HTTP endpoint is registered and listed.
    let listed: BTreeMap<String, String> = json(&addr, &["node", "list"])
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["http"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (name, listen) in &http {
        assert_eq!(listed.get(*name), Some(listen), "{listed:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    spec().run(&addr, dir.path());
    let instances: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["id"].as_str().unwrap_or_default().to_string(),
                            a["node"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    let nodes: BTreeSet<&String> = instances.values().collect();
    assert_eq!(nodes.len(), 2, "one instance per node: {instances:?}");
    let entry = http["h1"].clone();

    // The agent lists the services from the coordinators every 2 s.
    must_list_model(&entry, "llm").await;

    // Idle instances tie: requests entering at h1 reach both, once h1's
    // fleet view knows h2's instance and its load.
    let mut served = BTreeSet::new();
    let started = std::time::Instant::now();
    while served.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {served:?} served"
        );
        let (status, headers, body) = call(&entry, "POST", "/v1/completions", &short(8)).await;
        if status == 200 {
            assert_eq!(body["usage"]["completion_tokens"], 4, "{body}");
            assert_eq!(body["usage"]["prompt_tokens"], 8, "{body}");
            assert_eq!(body["choices"][0]["text"], " tok0 tok1 tok2 tok3", "{body}");
            let alloc = headers
                .get("x-herd-alloc-id")
                .cloned()
                .expect("the serving allocation");
            assert_eq!(body["herd"]["alloc_id"], alloc.as_str());
            assert_eq!(body["herd"]["node"], instances[&alloc].as_str());
            served.insert(alloc);
        } else {
            // Not yet running an engine, or not yet known: 503, never a 4xx.
            assert_eq!(status, 503, "{body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A long request (600 prompt tokens: 38 of 64 blocks) streams from one
    // instance; short ones sent meanwhile all go to the other, whose
    // virtual usage is lower.
    let long = json!({"model": "llm", "prompt": vec![7; 600], "max_tokens": 200, "stream": true, "stream_options": {"include_usage": true}}).to_string();
    let (status, headers, mut reader) = send(&entry, "POST", "/v1/completions", &long).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("text/event-stream"),
        "{headers:?}"
    );
    let busy = headers["x-herd-alloc-id"].clone();
    let stream = tokio::spawn(async move {
        let mut text = String::new();
        reader.read_to_string(&mut text).await.map(|_| text)
    });
    for _ in 0..4 {
        let (status, headers, body) = call(&entry, "POST", "/v1/completions", &short(16)).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(
            headers["x-herd-alloc-id"], busy,
            "a short request joined the full instance"
        );
    }
    assert!(
        !stream.is_finished(),
        "the long request ended before the short ones were sent"
    );
    let text = stream.await.expect("join").expect("the stream");
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("a JSON chunk"))
        .collect();
    let texts: Vec<String> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!(" tok{i}")).collect();
    assert_eq!(texts, expected, "every token once, in order");
    assert_eq!(chunks[0]["herd"]["alloc_id"], busy.as_str());
    assert_eq!(chunks[199]["choices"][0]["finish_reason"], "length");
    let usage = &chunks.last().expect("a usage chunk")["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64(),
            usage["total_tokens"].as_u64()
        ),
        (Some(600), Some(200), Some(800))
    );

    // Chat, not streamed.
    let chat = json!({"model": "llm", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}).to_string();
    let (status, _, body) = call(&entry, "POST", "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], " tok0 tok1 tok2");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    // Models, and errors.
    let (status, _, body) = call(&entry, "GET", "/v1/models", "").await;
    assert_eq!(status, 200);
    assert!(
        body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "llm")),
        "{body}"
    );
    let (status, _, body) = call(
        &entry,
        "POST",
        "/v1/completions",
        r#"{"model": "nope", "prompt": "hi"}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    let (status, _, body) = call(
        &entry,
        "POST",
        "/v1/completions",
        r#"{"model": "llm", "prompt": "#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON")),
        "{body}"
    );
    let (status, _, body) = call(
        &entry,
        "POST",
        "/v1/completions",
        r#"{"model": "llm", "prompt": "hi", "max_tokens": 0}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("max_tokens")),
        "{body}"
    );
    let (status, _, body) = call(
        &entry,
        "POST",
        "/v1/completions",
        &json!({"model": "llm", "prompt": vec![1; 1000], "max_tokens": 100}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV cache")),
        "{body}"
    );
    let huge = "x".repeat(2 << 20);
    let (status, _, body) = call(&entry, "POST", "/v1/completions", &huge).await;
    assert_eq!(status, 413, "{body}");

    // herd infer enters at the agent of either instance and is dispatched
    // over the fleet; its summary names the instance that served it.
    let out = must_cli_ok(&[
        "--addr",
        &addr,
        "infer",
        "llm",
        "--prompt-tokens",
        "10",
        "--max-tokens",
        "3",
        "-o",
        "json",
    ]);
    let summary: Value = serde_json::from_str(&out).expect("json summary");
    assert_eq!(summary["tokens"], 3, "{summary}");
    let alloc = summary["alloc_id"].as_str().expect("alloc_id");
    assert_eq!(summary["node"], instances[alloc].as_str(), "{summary}");
}
