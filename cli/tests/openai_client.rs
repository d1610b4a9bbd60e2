//! The official `openai` Python client (from PyPI, pinned, installed into a
//! venv the test makes) against an agent's OpenAI-compatible endpoint, on
//! real processes: 1 coordinator, 1 `herd node --http-listen` agent and one
//! instance of a SIMULATED LLM service. The client lists the models, streams
//! a completion and a chat completion with `stream_options:
//! {"include_usage": true}` (usage in the last chunk only, whose choices are
//! empty, as OpenAI's API does), makes a chat completion that does not
//! stream, and gets a 404 for an unknown model. Where Python or its venv
//! module is missing, or PyPI cannot be reached, the test skips with a
//! message (it fails in CI, where `.ci/run` installs them).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::serve::{call, must_list_model, start_http_agent, ServiceSpec};
use common::*;
use serde_json::{json, Value};

/// The client's version, pinned so that a new release cannot change what
/// this test checks unnoticed.
const OPENAI: &str = "openai==3.63.0";

/// Tokens asked of every generation.
const MAX_TOKENS: u64 = 20;

/// One instance of 64 KV blocks, at a tenth of the modelled speed's wall
/// time.
fn spec() -> ServiceSpec {
    ServiceSpec::llm(1).any_node().time_scale("0.1")
}

/// What the client does; prints one JSON object. Every field the client's
/// types declare is read through the typed objects (an attribute missing
/// from a chunk raises), so the endpoint's shapes are checked by the client
/// itself, not by this test's own parsing.
const SCRIPT: &str = r#"
import json, sys
import openai

base_url, model, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
out = {"version": openai.__version__}

out["models"] = [m.id for m in client.models.list()]

def usage(u):
    if u is None:
        return None
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}

def record(chunk, text_of):
    return {
        "id": chunk.id, "object": chunk.object, "created": chunk.created, "model": chunk.model,
        "choices": [{"index": c.index, "text": text_of(c), "finish_reason": c.finish_reason}
                    for c in chunk.choices],
        "usage": usage(chunk.usage),
    }

stream = client.completions.create(
    model=model, prompt="hello there, how are you today", max_tokens=max_tokens,
    stream=True, stream_options={"include_usage": True})
out["completion_stream"] = [record(c, lambda ch: ch.text) for c in stream]

stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=max_tokens,
    stream=True, stream_options={"include_usage": True})
out["chat_stream"] = [record(c, lambda ch: ch.delta.content) for c in stream]

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=max_tokens)
out["chat"] = {"object": chat.object, "content": chat.choices[0].message.content,
               "role": chat.choices[0].message.role,
               "finish_reason": chat.choices[0].finish_reason, "usage": usage(chat.usage)}

try:
    client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    out["unknown_model"] = {"status_code": None}
except openai.APIStatusError as e:
    out["unknown_model"] = {"status_code": e.status_code, "type": type(e).__name__}

print(json.dumps(out))
"#;

/// Output of `program ARGS`: Err(why) when it cannot run or fails.
fn run(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {args:?} failed ({:?}):\n{text}",
            program.display(),
            out.status.code()
        ))
    }
}

/// Whether pip's failure `output` says that the index could not be
/// reached (rather than, say, that the pinned version does not exist).
fn pypi_unreachable(output: &str) -> bool {
    [
        "(from versions: none)",
        "NewConnectionError",
        "Temporary failure in name resolution",
        "Name or service not known",
        "ProxyError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "Network is unreachable",
    ]
    .iter()
    .any(|hint| output.contains(hint))
}

/// A venv in `dir` with the pinned client; None (after `skip_or_fail`)
/// where Python, its venv module or PyPI is missing. pip's downloads are
/// cached in `target/pip-cache`, so a rerun installs offline-fast.
fn venv_with_openai(dir: &Path) -> Option<std::path::PathBuf> {
    let venv = dir.join("venv");
    let venv_arg = venv.display().to_string();
    if let Err(why) = run(Path::new("python3"), &["-m", "venv", &venv_arg], &[]) {
        skip_or_fail(&format!(
            "the openai client test needs python3 with its venv module \
             (Debian: apt-get install python3 python3-venv python3-pip): {why}"
        ));
        return None;
    }
    let target = herd_bin()
        .parent()
        .and_then(Path::parent)
        .expect("herd's target dir");
    let cache = target.join("pip-cache");
    let pip = venv.join("bin").join("pip");
    let installed = run(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--retries",
            "2",
            "--timeout",
            "20",
            OPENAI,
        ],
        &[("PIP_CACHE_DIR", &cache)],
    );
    match installed {
        Ok(_) => Some(venv.join("bin").join("python")),
        Err(why) if pypi_unreachable(&why) => {
            skip_or_fail(&format!("pip cannot reach PyPI to install {OPENAI}: {why}"));
            None
        }
        Err(why) => panic!("installing {OPENAI}: {why}"),
    }
}

/// Checks a stream recorded by the script: `MAX_TOKENS` content chunks with
/// the tokens in order, the last with `finish_reason` "length", then one
/// chunk with no choice and the usage; no other chunk has usage.
fn check_stream(name: &str, chunks: &[Value], object: &str, prompt_tokens: Option<u64>) -> u64 {
    let (content, tail) = chunks.split_at(chunks.len().saturating_sub(1));
    assert_eq!(content.len() as u64, MAX_TOKENS, "{name}: {chunks:#?}");
    let texts: Vec<&str> = content
        .iter()
        .map(|c| {
            assert_eq!(
                c["choices"].as_array().map(Vec::len),
                Some(1),
                "{name}: {c}"
            );
            assert_eq!(c["choices"][0]["index"], 0, "{name}: {c}");
            assert!(c["usage"].is_null(), "{name}: usage before the end: {c}");
            c["choices"][0]["text"].as_str().expect("a token's text")
        })
        .collect();
    let expected: Vec<String> = (0..MAX_TOKENS).map(|i| format!(" tok{i}")).collect();
    assert_eq!(texts, expected, "{name}: every token once, in order");
    for (i, c) in content.iter().enumerate() {
        let finish = if i as u64 == MAX_TOKENS - 1 {
            json!("length")
        } else {
            Value::Null
        };
        assert_eq!(c["choices"][0]["finish_reason"], finish, "{name}: {c}");
    }
    let last = &tail[0];
    assert_eq!(last["choices"], json!([]), "{name}: {last}");
    for c in chunks {
        assert_eq!(c["object"], object, "{name}: {c}");
        assert_eq!(c["model"], "llm", "{name}: {c}");
        assert_eq!(c["id"], chunks[0]["id"], "{name}: one id per stream");
        assert!(c["created"].as_u64().is_some_and(|t| t > 0), "{name}: {c}");
    }
    check_usage(name, &last["usage"], prompt_tokens)
}

/// Checks a usage object: `MAX_TOKENS` completion tokens, a prompt (equal
/// to `prompt_tokens` where given), the total their sum; returns the prompt.
fn check_usage(name: &str, usage: &Value, prompt_tokens: Option<u64>) -> u64 {
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt > 0, "{name}: {usage}");
    if let Some(expected) = prompt_tokens {
        assert_eq!(prompt, expected, "{name}: {usage}");
    }
    assert_eq!(usage["completion_tokens"], MAX_TOKENS, "{name}: {usage}");
    assert_eq!(
        usage["total_tokens"],
        prompt + MAX_TOKENS,
        "{name}: {usage}"
    );
    prompt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_streams_with_usage_in_the_last_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(python) = venv_with_openai(dir.path()) else {
        return;
    };
    let script = dir.path().join("client.py");
    std::fs::write(&script, SCRIPT).expect("write the script");

    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let entry = start_http_agent(&mut agents, "h1");
    must_have_ready_nodes(&addr, &["h1"]).await;
    spec().run(&addr, dir.path());
    until("a running instance", Duration::from_secs(20), || {
        (running_allocs(&addr, "llm").len() == 1).then_some(())
    })
    .await;
    must_list_model(&entry, "llm").await;
    // Until its engine runs, the instance is answered 503; the client is
    // given no retries, so wait for a first 200 here.
    let probe = json!({"model": "llm", "prompt": "hi", "max_tokens": 1}).to_string();
    let started = std::time::Instant::now();
    loop {
        let (status, _, body) = call(&entry, "POST", "/v1/completions", &probe).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let base_url = format!("http://{entry}/v1");
    let max_tokens = MAX_TOKENS.to_string();
    let script_arg = script.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(&python, &[&script_arg, &base_url, "llm", &max_tokens], &[])
    })
    .await
    .expect("join");
    let out = out.unwrap_or_else(|why| panic!("the client script: {why}"));
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));

    assert!(
        report["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|id| id == "llm")),
        "{report}"
    );
    let completion = report["completion_stream"].as_array().expect("chunks");
    check_stream("completion stream", completion, "text_completion", None);
    let chat_stream = report["chat_stream"].as_array().expect("chunks");
    let chat_prompt = check_stream("chat stream", chat_stream, "chat.completion.chunk", None);

    let chat = &report["chat"];
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert_eq!(chat["role"], "assistant", "{chat}");
    assert_eq!(chat["finish_reason"], "length", "{chat}");
    let expected: String = (0..MAX_TOKENS).map(|i| format!(" tok{i}")).collect();
    assert_eq!(chat["content"], expected.as_str(), "{chat}");
    // The same messages count the same, streamed or not.
    check_usage("chat", &chat["usage"], Some(chat_prompt));

    assert_eq!(
        report["unknown_model"],
        json!({"status_code": 404, "type": "NotFoundError"}),
        "{report}"
    );
}
