//! `herd inference-engine` (the SIMULATED engine process) on SIGTERM: it
//! drains for at most 4 s, and then ends, open streams included.
//!
//! - `a_stopped_engine_does_not_stream_past_its_drain_limit`: a request
//!   that would decode for about 40 s is streaming when the engine gets
//!   SIGTERM; its stream ends (cut) within the drain limit plus a margin,
//!   and the process exits, where the server's graceful shutdown alone
//!   would keep streaming it to its end.

// Test code: an unwrap/expect failing here fails the test at its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::herd_command;
use futures::StreamExt;
use herd_actors::inference::endpoint::EngineEndpoint;
use herd_api::proto::inference::inference_engine_client::InferenceEngineClient;
use herd_api::proto::inference::GenerateRequest;

/// The engine's drain limit (`cli/src/cmd/inference_engine.rs`).
const DRAIN_LIMIT: Duration = Duration::from_secs(4);
/// What the test allows beyond it: the cut (300 ms) and a slow machine.
const MARGIN: Duration = Duration::from_millis(2500);

/// Kills the engine process if the test ends early.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_does_not_stream_past_its_drain_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = herd_command()
        .args(["inference-engine", "--alloc-dir"])
        .arg(dir.path())
        .args(["--set", "time_scale=1", "--set", "kv_blocks=256"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start herd inference-engine");
    let mut engine = Engine(child);
    let started = Instant::now();
    let endpoint = loop {
        if let Some(e) = EngineEndpoint::read(dir.path()).ok().flatten() {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "engine.json not written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = InferenceEngineClient::connect(format!("http://{}", endpoint.addr))
        .await
        .expect("connect to the engine");
    // 2 000 tokens at a modelled 20 ms and more each: about 40 s.
    let mut tokens = client
        .generate(GenerateRequest {
            prompt_tokens: 16,
            max_tokens: 2000,
            priority: "normal".into(),
        })
        .await
        .expect("generate")
        .into_inner();
    for _ in 0..5 {
        tokens
            .next()
            .await
            .expect("a token")
            .expect("a token, not an error");
    }

    let pid = i32::try_from(engine.0.id()).expect("pid");
    // SAFETY: kill(2) on the child this test started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
    let stopped = Instant::now();
    let mut after = 0u32;
    let ended = tokio::time::timeout(DRAIN_LIMIT + MARGIN, async {
        while let Some(t) = tokens.next().await {
            if t.is_err() {
                break;
            }
            after += 1;
        }
    })
    .await;
    println!(
        "stream ended {:?} after SIGTERM, {after} tokens later",
        stopped.elapsed()
    );
    assert!(
        ended.is_ok(),
        "still streaming {:?} after SIGTERM ({after} tokens since)",
        stopped.elapsed()
    );
    // Not cut before the drain limit: the request had 4 s to finish or move.
    assert!(
        stopped.elapsed() >= DRAIN_LIMIT - Duration::from_millis(200),
        "cut after {:?} only",
        stopped.elapsed()
    );
    let exited = loop {
        if let Some(status) = engine.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            stopped.elapsed() < DRAIN_LIMIT + MARGIN,
            "the engine process still runs {:?} after SIGTERM",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
    assert!(
        EngineEndpoint::read(dir.path()).ok().flatten().is_none(),
        "engine.json removed"
    );
}
