//! `herd dev`: a one-member cluster in this process, for a first try.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herd_coordinator::config::CoordinatorSettings;
use herd_coordinator::CoordinatorConfig;
use herd_node::{NodeConfig, NodeSettings};

use crate::exit::CliError;

/// Where `herd dev` listens, and where client commands look by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7100";

/// Where `herd dev` serves the web dashboard unless told otherwise.
pub const DEFAULT_DASHBOARD_ADDR: &str = "127.0.0.1:7180";

/// Flags of `herd dev`.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Address of the coordinator.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub listen: String,
    /// Keep data here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node agents to run beside the coordinator.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Simulated GPUs each node agent reports (none by default).
    #[arg(long)]
    pub sim_gpus: Option<u32>,
    /// Where to serve the read-only web dashboard (port 0: any free port).
    #[arg(long, default_value = DEFAULT_DASHBOARD_ADDR)]
    pub http_listen: String,
    /// Serve the coordinator's Prometheus metrics on this IP:PORT, and each
    /// node agent's on a free port (all printed); off by default.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// `wanted`, unless it is the default address and that is taken (another
/// `herd dev` runs): then any free port, so that a second dev cluster
/// still starts; its address is printed either way.
fn dashboard_addr(wanted: &str) -> String {
    if wanted == DEFAULT_DASHBOARD_ADDR && std::net::TcpListener::bind(wanted).is_err() {
        "127.0.0.1:0".to_string()
    } else {
        wanted.to_string()
    }
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let (data_dir, _temp) = match args.data_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("herd-dev-")
                .tempdir()
                .map_err(|e| {
                    CliError::runtime(format!("cannot create a temporary data dir: {e}"))
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let http_listen = dashboard_addr(&args.http_listen);
    let config = CoordinatorConfig::resolve(CoordinatorSettings {
        id: Some(1),
        listen: Some(args.listen.clone()),
        data_dir: Some(data_dir.join("coordinator-1")),
        bootstrap: Some(true),
        peers: Some(format!("1={}", args.listen)),
        http_listen: Some(http_listen),
        metrics_listen: args.metrics_listen.clone(),
        ..Default::default()
    })
    .map_err(CliError::input)?;
    let running = herd_coordinator::start(config)
        .await
        .map_err(CliError::runtime)?;
    let coordinator = running.coordinator.clone();
    let started = std::time::Instant::now();
    while coordinator.identity().cluster_id().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err(CliError::runtime(
                "the dev coordinator did not elect itself leader within 20 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = running.local_addr;
    let executor = super::agent::executor_path()?;
    let mut agents = Vec::new();
    for n in 1..=args.nodes {
        let config = NodeConfig::resolve(NodeSettings {
            name: Some(format!("dev-{n}")),
            coordinators: Some(addr.to_string()),
            listen: Some("127.0.0.1:0".to_string()),
            data_dir: Some(data_dir.join(format!("node-{n}"))),
            sim_gpus: args.sim_gpus,
            metrics_listen: args
                .metrics_listen
                .as_ref()
                .map(|_| "127.0.0.1:0".to_string()),
            // A throwaway cluster on this machine: jobs may also name files
            // under the temporary directory (examples/web.toml's workdir,
            // examples/vm.toml's guest from `herd vm guest`); a real node
            // allows only what its operator lists (docs/security.md).
            allow_paths: Some(vec![std::env::temp_dir()]),
            ..Default::default()
        })
        .map_err(CliError::input)?;
        let agent = herd_node::start(config, executor.clone())
            .await
            .map_err(CliError::runtime)?;
        agents.push((format!("dev-{n}"), agent));
    }
    let kept = if _temp.is_some() {
        "removed on exit"
    } else {
        "kept"
    };
    println!("herd dev: a one-member cluster is running");
    println!("  transport    plaintext on this host (as with --insecure): for a first try only; see docs/security.md for TLS");
    println!(
        "  coordinator  {addr}  (data in {}, {kept})",
        data_dir.display()
    );
    for (name, agent) in &agents {
        println!("  node agent   {name} at {}", agent.local_addr);
    }
    if let Some(metrics) = running.metrics_addr {
        println!("  metrics      http://{metrics}/metrics  (coordinator, Prometheus)");
    }
    for (name, agent) in &agents {
        if let Some(metrics) = agent.metrics_addr {
            println!("  metrics      http://{metrics}/metrics  (node agent {name})");
        }
    }
    if let Some(dashboard) = running.dashboard_addr {
        println!("  dashboard    http://{dashboard}/  (read-only web pages)");
    }
    println!();
    println!(
        "Next, in another terminal (from a checkout, `cargo run --release --` stands for `herd`):"
    );
    println!("  herd job run examples/web.toml    # three instances of a small service; returns once they are placed");
    println!("  herd alloc list                   # where they run");
    println!("  herd alloc logs ID -f             # what one prints");
    println!("  herd node drain dev-1             # move them off a node");
    println!("  herd cluster status");
    println!();
    println!("Press Ctrl-C to stop (the workloads stop with it).");
    super::coordinator::wait_for_signal()
        .await
        .map_err(CliError::runtime)?;
    // The data dir may vanish on exit: take the workloads down with it.
    for (_, agent) in agents {
        agent
            .stop_workloads_and_shutdown(Duration::from_secs(15))
            .await;
    }
    running.shutdown().await;
    Ok(())
}
