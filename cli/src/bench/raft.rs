//! `herd bench raft`: durable committed writes through a real 3-member
//! cluster of `herd coordinator` processes on loopback, then the same load
//! against a 3-member etcd cluster when etcd is installed.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herd_api::client::HerdClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::PutVariableRequest;
use herd_api::put_stream::PutStream;
use herd_chaos::process_cluster::ProcessCluster;
use tonic::transport::{Channel, Endpoint};

use super::etcd::{self, EtcdCluster};
use super::load::{closed_loop, LoadReport};
use crate::exit::CliError;

/// Flags of `herd bench raft`.
#[derive(Args, Debug)]
pub struct RaftBenchArgs {
    /// Client counts to run, each a separate measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// etcd binary to compare with (default: `etcd` on PATH).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Skip the etcd comparison.
    #[arg(long)]
    no_etcd: bool,
    /// Load an already running herd cluster (comma-separated addresses) instead of starting one.
    #[arg(long)]
    against: Option<String>,
}

fn channel(addr: &str) -> Result<Channel, CliError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(CliError::input)?
        .tcp_nodelay(true)
        .connect_lazy())
}

fn row(system: &str, r: &LoadReport) -> String {
    format!(
        "| {system} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
        r.clients,
        r.ok,
        r.throughput,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
        r.errors
    )
}

/// Measures `op` at each client count of `args`, adding a row per count.
async fn series<F, Fut>(system: &str, args: &RaftBenchArgs, rows: &mut Vec<String>, op: F)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measured = Duration::from_secs(args.seconds);
    for &clients in &args.clients {
        let report = closed_loop(clients, warmup, measured, op.clone()).await;
        if let Some(e) = &report.first_error {
            eprintln!("{system}, {clients} clients: first error: {e}");
        }
        let line = row(system, &report);
        eprintln!("{line}");
        rows.push(line);
    }
}

/// Runs the benchmark and prints a Markdown table.
pub async fn run(args: RaftBenchArgs) -> Result<(), CliError> {
    let value = vec![b'x'; args.value_size];
    let mut rows = Vec::new();

    let mut cluster = None;
    let addrs: Vec<String> = match &args.against {
        Some(list) => list
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| CliError::runtime(format!("cannot find the herd binary: {e}")))?;
            eprintln!("starting 3 herd coordinators ({})", exe.display());
            let started = ProcessCluster::start(&exe, 3, &[]).map_err(CliError::runtime)?;
            started
                .wait_for_leader(Duration::from_secs(30))
                .await
                .map_err(CliError::runtime)?;
            let addrs = started
                .ids()
                .iter()
                .map(|id| {
                    started
                        .member(*id)
                        .map(|m| m.addr.clone())
                        .map_err(CliError::runtime)
                })
                .collect::<Result<_, _>>()?;
            cluster = Some(started);
            addrs
        }
    };
    let channels: Vec<Channel> = addrs.iter().map(|a| channel(a)).collect::<Result<_, _>>()?;
    let put = move |client: usize, value: &Vec<u8>| PutVariableRequest {
        key: format!("bench/{client}"),
        value: value.clone(),
        expected_version: None,
    };
    {
        let (channels, value) = (channels.clone(), value.clone());
        series("herd", &args, &mut rows, move |client, _seq| {
            let channel = channels[client % channels.len()].clone();
            let request = put(client, &value);
            async move {
                VariablesClient::new(channel)
                    .put(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.message().to_string())
            }
        })
        .await;
    }
    // The same load through herd's own client with leader routing: writes
    // go straight to the leader instead of through a follower.
    let routed = HerdClient::new(&addrs)
        .map_err(CliError::input)?
        .with_leader_routing();
    {
        let (routed, value) = (routed.clone(), value.clone());
        series(
            "herd, leader-routed client",
            &args,
            &mut rows,
            move |client, _seq| {
                let routed = routed.clone();
                let request = put(client, &value);
                async move {
                    routed
                    .call_leader(|channel| {
                        let request = request.clone();
                        async move { VariablesClient::new(channel).put(request).await.map(|_| ()) }
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
            },
        )
        .await;
    }
    // The same writes over one `PutStream` per member, spread as above, and
    // over one stream to the leader.
    let mut spread = Vec::new();
    for channel in &channels {
        spread.push(PutStream::open(channel.clone()).await.map_err(|s| {
            CliError::runtime(format!("cannot open a put stream: {}", s.message()))
        })?);
    }
    let to_leader = routed
        .call_leader(|channel| async move { PutStream::open(channel).await })
        .await
        .map_err(|e| CliError::runtime(format!("cannot open a put stream to the leader: {e}")))?;
    for (system, streams) in [
        ("herd, put stream", spread),
        ("herd, put stream to the leader", vec![to_leader]),
    ] {
        let value = value.clone();
        series(system, &args, &mut rows, move |client, _seq| {
            let stream = streams[client % streams.len()].clone();
            let request = put(client, &value);
            async move {
                stream
                    .put(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.message().to_string())
            }
        })
        .await;
    }
    drop(cluster);

    if !args.no_etcd {
        match etcd::locate(args.etcd.as_deref()) {
            None => eprintln!("etcd not found (install Debian's etcd-server or pass --etcd PATH); skipping the comparison"),
            Some(binary) => {
                eprintln!("starting 3 etcd members ({})", binary.display());
                let cluster = EtcdCluster::start(&binary).await.map_err(CliError::runtime)?;
                let channels: Vec<Channel> = (0..3).map(|i| cluster.channel(i)).collect::<Result<_, _>>().map_err(CliError::runtime)?;
                series("etcd", &args, &mut rows, move |client, _seq| {
                    let channel = channels[client % channels.len()].clone();
                    etcd::put(channel, format!("bench/{client}").into_bytes(), value.clone())
                })
                .await;
            }
        }
    }

    println!(
        "3 members on loopback, durable writes, {}-byte values, {} s measured after {} s warm-up; \"herd\" and \"etcd\" rows spread clients over the members with one request per write, \"leader-routed client\" rows use herd's client sending writes to the leader, \"put stream\" rows send the same writes over one long-lived stream per member (Variables.PutStream)",
        args.value_size, args.seconds, args.warmup_seconds
    );
    println!();
    println!("| system | clients | writes | writes/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
