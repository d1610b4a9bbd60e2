//! `herd bench schedule`: placements per second through the real Raft path.
//!
//! Starts `herd coordinator` processes (as `herd bench raft` does), registers
//! simulated nodes through the agent API's `Register` (registrations only:
//! nothing runs on them), submits jobs through the client API concurrently,
//! and polls the leader's job list until every instance is placed.
//!
//! - placements/s: instances placed ÷ time from the first submit to the last
//!   job fully placed;
//! - per-job latency: from sending its submit to the first poll that sees
//!   all its instances placed (so it includes up to one poll interval).
//!
//! The simulated nodes are registrations without agents, so they send no
//! heartbeats: the coordinators run with a node TTL of an hour, longer than
//! any run, so that none is marked down mid-run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use herd_api::client::HerdClient;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::RegisterNodeRequest;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_chaos::process_cluster::ProcessCluster;

use super::load::percentile;
use crate::exit::CliError;

/// Flags of `herd bench schedule`.
#[derive(Args, Debug)]
pub struct ScheduleBenchArgs {
    /// Coordinator processes to start (1, or 3 for replication).
    #[arg(long, default_value_t = 1)]
    coordinators: u64,
    /// Simulated nodes to register.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Instances to place in all.
    #[arg(long, default_value_t = 100_000)]
    allocs: usize,
    /// Jobs the instances are split into (each gets allocs / job-count).
    #[arg(long, default_value_t = 1000)]
    job_count: usize,
    /// Requests in flight while registering and submitting.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Milliseconds between polls of the job list.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Give up after this many seconds of waiting for placements.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
}

/// What each simulated node offers: 64 cores, 256 GiB.
fn node_capacity() -> pb::Resources {
    pb::Resources {
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        gpus: 0,
        gpu_model: String::new(),
    }
}

/// Job `i` of the run: `count` instances of 100 millicores and 64 MiB.
fn job_spec(i: usize, count: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("bench-{i:05}"),
        r#type: "service".into(),
        count,
        priority: 50,
        task: Some(pb::TaskSpec {
            driver: "exec".into(),
            command: "/bin/true".into(),
            resources: Some(pb::Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
                gpus: 0,
                gpu_model: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `op(i)` for every `i` in `0..total` with `concurrency` in flight;
/// the first error stops the run.
async fn for_each<F, Fut>(total: usize, concurrency: usize, op: F) -> Result<(), CliError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let mut workers: tokio::task::JoinSet<Result<(), String>> = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, op) = (next.clone(), op.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| CliError::runtime(format!("bench worker failed: {e}")))?
            .map_err(CliError::runtime)?;
    }
    Ok(())
}

/// Runs the benchmark and prints a Markdown table row with its header.
pub async fn run(args: ScheduleBenchArgs) -> Result<(), CliError> {
    if args.job_count == 0 || !args.allocs.is_multiple_of(args.job_count) {
        return Err(CliError::input(format!(
            "--allocs ({}) must be a multiple of --job-count ({})",
            args.allocs, args.job_count
        )));
    }
    let count = u32::try_from(args.allocs / args.job_count)
        .ok()
        .filter(|c| (1..=herd_api::validate::MAX_COUNT).contains(c))
        .ok_or_else(|| {
            CliError::input(format!(
                "each job would have {} instances; a job may have 1 to {}",
                args.allocs / args.job_count,
                herd_api::validate::MAX_COUNT
            ))
        })?;

    let exe = std::env::current_exe()
        .map_err(|e| CliError::runtime(format!("cannot find the herd binary: {e}")))?;
    eprintln!(
        "starting {} herd coordinator(s) ({})",
        args.coordinators,
        exe.display()
    );
    let cluster = ProcessCluster::start(&exe, args.coordinators, &["--node-ttl-ms", "3600000"])
        .map_err(CliError::runtime)?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .map_err(CliError::runtime)?;
    let client = cluster
        .client()
        .map_err(CliError::runtime)?
        .with_leader_routing();

    eprintln!("registering {} simulated nodes", args.nodes);
    let started = Instant::now();
    let registrar = client.clone();
    for_each(args.nodes, args.concurrency, move |i| {
        let client = registrar.clone();
        async move {
            let request = RegisterNodeRequest {
                name: format!("sim-{i:05}"),
                addr: format!("127.0.0.1:{}", 20_000 + i % 40_000),
                capacity: Some(node_capacity()),
                labels: [("rack".to_string(), format!("r{}", i % 20))].into(),
                // Simulated nodes run nothing: no drivers to declare.
                drivers: vec![],
                http: String::new(),
            };
            register(&client, request).await
        }
    })
    .await?;
    eprintln!(
        "registered in {:.1} s; submitting {} jobs x {count}",
        started.elapsed().as_secs_f64(),
        args.job_count
    );

    let submitted: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; args.job_count]));
    let first_submit = Instant::now();
    let (submitter, times) = (client.clone(), submitted.clone());
    let submitting = tokio::spawn(for_each(args.job_count, args.concurrency, move |i| {
        let (client, times) = (submitter.clone(), times.clone());
        async move {
            let sent = Instant::now();
            submit(&client, job_spec(i, count)).await?;
            times.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(sent);
            Ok(())
        }
    }));

    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let mut placed_at: Vec<Option<Instant>> = vec![None; args.job_count];
    let mut remaining = args.job_count;
    while remaining > 0 {
        if Instant::now() > deadline {
            return Err(CliError::runtime(format!(
                "{remaining} of {} jobs not fully placed after {} s",
                args.job_count, args.timeout_seconds
            )));
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        let jobs = list_jobs(&client).await?;
        let now = Instant::now();
        for job in jobs {
            let Some(i) = job
                .spec
                .as_ref()
                .and_then(|s| s.name.strip_prefix("bench-"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&i| i < args.job_count)
            else {
                continue;
            };
            if placed_at[i].is_none() && job.placed == count {
                placed_at[i] = Some(now);
                remaining -= 1;
            }
        }
    }
    let last_placed = placed_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(first_submit);
    submitting
        .await
        .map_err(|e| CliError::runtime(format!("submitting failed: {e}")))??;

    let submitted = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies: Vec<Duration> = submitted
        .iter()
        .zip(&placed_at)
        .filter_map(|(s, p)| Some(p.as_ref()?.saturating_duration_since(*s.as_ref()?)))
        .collect();
    latencies.sort();
    let elapsed = last_placed.duration_since(first_submit);
    let rate = args.allocs as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    drop(cluster);

    println!(
        "{} coordinator(s) on loopback, durable writes, {} simulated nodes (registrations only), \
         {} jobs x {count} instances submitted by {} concurrent clients, polled every {} ms",
        args.coordinators, args.nodes, args.job_count, args.concurrency, args.poll_ms
    );
    println!();
    println!(
        "| coordinators | nodes | instances | jobs | seconds | placements/s | job p50 ms | job p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} |",
        args.coordinators,
        args.nodes,
        args.allocs,
        args.job_count,
        elapsed.as_secs_f64(),
        rate,
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    );
    Ok(())
}

async fn register(client: &HerdClient, request: RegisterNodeRequest) -> Result<(), String> {
    client
        .call_leader(|channel| {
            let request = request.clone();
            async move {
                AgentClient::new(channel)
                    .register(request)
                    .await
                    .map(|_| ())
            }
        })
        .await
        .map_err(|e| format!("register: {e}"))
}

async fn submit(client: &HerdClient, spec: pb::JobSpec) -> Result<(), String> {
    let request = pb::SubmitJobRequest { spec: Some(spec) };
    client
        .call_leader(|channel| {
            let request = request.clone();
            async move { JobsClient::new(channel).submit(request).await.map(|_| ()) }
        })
        .await
        .map_err(|e| format!("submit: {e}"))
}

/// The leader's own view of the jobs: what it has applied is committed.
async fn list_jobs(client: &HerdClient) -> Result<Vec<pb::Job>, CliError> {
    client
        .call_leader(|channel| async move {
            JobsClient::new(channel)
                .list(pb::ListJobsRequest { stale: true })
                .await
                .map(|r| r.into_inner().jobs)
        })
        .await
        .map_err(|e| CliError::runtime(format!("list jobs: {e}")))
}
