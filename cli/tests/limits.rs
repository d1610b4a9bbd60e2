//! The limits every server applies (docs/security.md, "Limits"), on real
//! coordinator processes: a flood from one client is answered
//! RESOURCE_EXHAUSTED while another client is served; an oversized job spec
//! is refused naming the field and the limit; streams over a connection's
//! limit wait without harming other clients; connections over an address's
//! cap are closed, and served again once it holds fewer.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use herd_api::client::{ClientError, HerdClient};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::cluster_client::ClusterClient;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use common::{must_start_one_member, write_spec};

/// A fresh connection to `addr` (each its own HTTP/2 connection).
async fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect")
}

fn first_addr(cluster: &ProcessCluster) -> String {
    cluster
        .addr_list()
        .split(',')
        .next()
        .expect("an address")
        .to_string()
}

/// `request` with `token` as its bearer token.
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

/// `herd --addr ADDR --token TOKEN ARGS -o json`, which must succeed.
fn json_as(addr: &str, token: &str, args: &[&str]) -> Value {
    let out = common::herd_command()
        .args(["--addr", addr, "--token", token])
        .args(args)
        .args(["-o", "json"])
        .env("HERD_LOG", "error")
        .env_remove("HERD_TOKEN")
        .output()
        .expect("run herd");
    assert!(
        out.status.success(),
        "herd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// (accessor, secret) of a new token of `role`.
fn token(addr: &str, operator: &str, name: &str, role: &str) -> (String, String) {
    let made = json_as(
        addr,
        operator,
        &["acl", "token", "create", "--name", name, "--role", role],
    );
    (
        made["accessor"].as_str().expect("accessor").to_string(),
        made["secret"].as_str().expect("secret").to_string(),
    )
}

async fn status_as(channel: &Channel, token: &str) -> Result<(), Status> {
    ClusterClient::new(channel.clone())
        .status(with_token(pb::ClusterStatusRequest::default(), token))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_token_is_refused_while_another_token_is_served() {
    let cluster =
        must_start_one_member(&["--requests-per-second", "5", "--request-burst", "10"]).await;
    let addr = first_addr(&cluster);
    let operator = json_as(&addr, "", &["acl", "bootstrap"])["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let (flood_accessor, flood) = token(&addr, &operator, "flood", "read");
    let (_, calm) = token(&addr, &operator, "calm", "read");
    let channel = connect(&addr).await;

    let started = Instant::now();
    let (mut served, mut refused) = (0u32, Vec::new());
    for _ in 0..60 {
        match status_as(&channel, &flood).await {
            Ok(()) => served += 1,
            Err(status) => refused.push(status),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 10.0 + 5.0 * elapsed + 1.0;
    assert!(
        f64::from(served) <= allowed,
        "{served} served in {elapsed:.2} s, at most {allowed:.0} allowed"
    );
    let first = refused.first().expect("the flood was refused");
    assert!(
        refused.iter().all(|s| s.code() == Code::ResourceExhausted),
        "{refused:?}"
    );
    let message = first.message();
    assert!(message.contains(&flood_accessor), "{message}");
    assert!(message.contains("requests_per_second"), "{message}");
    assert!(message.contains("5 requests per second"), "{message}");

    // Another token, on the same connection from the same address: served.
    for _ in 0..3 {
        status_as(&channel, &calm).await.expect("calm is served");
    }
    // The api client reports the refusal as it is, and does not try it
    // elsewhere as if the member were unavailable.
    let client = HerdClient::new(&[addr.as_str()])
        .expect("client")
        .with_token(&flood)
        .expect("token");
    let err = client
        .call_as(herd_api::client::Repeat::Safe, |channel| async move {
            ClusterClient::new(channel)
                .status(pb::ClusterStatusRequest::default())
                .await
        })
        .await
        .expect_err("still over the limit");
    match err {
        ClientError::Status { status, .. } => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}")
        }
        other => panic!("expected the member's status, got {other}"),
    }
    // Once the client slows down it is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    status_as(&channel, &flood)
        .await
        .expect("served after slowing down");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_spec_is_refused_naming_the_field_and_the_limit() {
    let cluster = must_start_one_member(&[]).await;
    let addr = first_addr(&cluster);
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = "x".repeat(herd_api::validate::MAX_ENV_VALUE_BYTES + 1);
    let text = format!(
        "name = \"big\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/true\"\n\
         [task.env]\nHUGE = \"{huge}\"\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n"
    );
    let spec = write_spec(dir.path(), "big", &text);
    let out = common::herd_command()
        .args(["--addr", &addr, "job", "run", &spec])
        .env("HERD_LOG", "error")
        .env_remove("HERD_TOKEN")
        .output()
        .expect("run herd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an oversized spec was accepted");
    assert!(stderr.contains("task.env.HUGE"), "{stderr}");
    assert!(stderr.contains("32768"), "{stderr}");

    // The same spec sent past the CLI's own check: the server refuses it.
    let small = text.replace(&huge, "x");
    let mut job = herd_api::spec_file::parse_job_spec(&small, "big.toml").expect("valid spec");
    job.task.env.insert("HUGE".into(), huge.clone());
    let channel = connect(&addr).await;
    let refused = JobsClient::new(channel.clone())
        .submit(pb::SubmitJobRequest {
            spec: Some((&job).into()),
        })
        .await
        .expect_err("the server checks too");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("task.env.HUGE"), "{refused:?}");
    assert!(refused.message().contains("32768"), "{refused:?}");

    // Each value under its own limit but the whole over the task's.
    let mut job = herd_api::spec_file::parse_job_spec(&small, "big.toml").expect("valid spec");
    for i in 0..40 {
        job.task.env.insert(
            format!("V{i}"),
            "y".repeat(herd_api::validate::MAX_ENV_VALUE_BYTES),
        );
    }
    let refused = JobsClient::new(channel.clone())
        .submit(pb::SubmitJobRequest {
            spec: Some((&job).into()),
        })
        .await
        .expect_err("too much text in all");
    assert!(
        refused.message().contains("MAX_TASK_TEXT_BYTES"),
        "{refused:?}"
    );

    // A message over the server's decode limit never reaches the service.
    let mut job = herd_api::spec_file::parse_job_spec(&small, "big.toml").expect("valid spec");
    job.task.args = vec!["z".repeat(4096); 1100];
    let refused = JobsClient::new(channel.clone())
        .max_encoding_message_size(16 << 20)
        .submit(pb::SubmitJobRequest {
            spec: Some((&job).into()),
        })
        .await
        .expect_err("over the message limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("4194304"), "{refused:?}");
    // The member still serves.
    ClusterClient::new(channel)
        .status(pb::ClusterStatusRequest::default())
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_over_a_connections_limit_wait_and_other_clients_are_served() {
    let cluster = must_start_one_member(&[
        "--max-concurrent-streams",
        "2",
        "--max-connections-per-ip",
        "24",
    ])
    .await;
    let addr = first_addr(&cluster);
    let busy = connect(&addr).await;
    // Two streams left open (their request side never ends).
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::PutVariableBatch>(1);
        let stream = VariablesClient::new(busy.clone())
            .put_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream opened");
        held.push((tx, stream));
    }
    let status = |channel: Channel| async move {
        ClusterClient::new(channel)
            .status(pb::ClusterStatusRequest::default())
            .await
    };
    // A third call on the full connection waits...
    let waiting = tokio::spawn(status(busy.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "a third stream was not held");
    // ...while another client is served at once.
    let other = connect(&addr).await;
    let started = Instant::now();
    status(other.clone()).await.expect("another client");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Once a stream ends, the held call goes through.
    held.pop();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the held call ran once a stream closed")
        .expect("task")
        .expect("served");

    // Connections: fill the address's cap with idle sockets; a new client
    // is closed unserved, the clients already connected are still served,
    // and once the sockets close new clients are served again.
    let mut sockets = Vec::new();
    for _ in 0..24 {
        sockets.push(tokio::net::TcpStream::connect(&addr).await.expect("tcp"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let err = status(refused).await.expect_err("over the connection cap");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{err:?}"
    );
    status(other.clone()).await.expect("a connected client");
    drop(sockets);
    let mut served = false;
    for _ in 0..50 {
        if status(connect(&addr).await).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "new clients are served once the sockets closed");
    drop(held);
}
