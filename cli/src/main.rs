//! `herd`: the one binary. Daemons (`coordinator`, `dev`) and client commands
//! (`cluster`, `job`, `node`, `var`), plus `bench` and `chaos`.

mod bench;
mod cmd;
mod exit;
mod output;

use clap::{Parser, Subcommand};

/// glibc's allocator showed up as a fifth of the CPU profile under write load
/// (see docs/benchmarks.md); mimalloc is markedly cheaper for many small,
/// short-lived buffers across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::exit::CliError;
use crate::output::OutputFormat;

/// herd: a cluster manager for VM fleets, GPU training and LLM serving.
#[derive(Parser)]
#[command(name = "herd", version, about, propagate_version = true)]
struct Cli {
    /// Coordinators to talk to, tried in turn.
    #[arg(long, global = true, env = "HERD_ADDR", default_value = cmd::dev::DEFAULT_ADDR)]
    addr: String,
    /// Output format of read commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Log filter for daemons (tracing's env-filter syntax).
    #[arg(long, global = true, env = "HERD_LOG")]
    log: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Bearer token sent with every request, once the cluster is
    /// bootstrapped (`herd acl bootstrap`); node agents and joining
    /// coordinators send it too.
    #[arg(long, global = true, env = "HERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The id this command's requests carry, for following it through the
    /// coordinators' and agents' logs (letters, digits, `-_.:`, at most 64);
    /// a fresh one by default, printed by `herd job run` and `herd job stop`.
    #[arg(long, global = true, env = "HERD_REQUEST_ID", value_name = "ID")]
    request_id: Option<String>,
    /// The cluster CA's certificate (PEM). With --tls-cert and --tls-key,
    /// every connection is mutual TLS (`herd tls ca create`).
    #[arg(long, global = true, env = "HERD_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// This process's certificate (PEM), signed by the CA for its role and
    /// name (`herd tls cert create --for coordinator|node|client NAME`).
    #[arg(long, global = true, env = "HERD_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "HERD_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve a coordinator or node agent in plaintext, without TLS: anyone
    /// who reaches its port can call it. Required to run without --tls-*.
    #[arg(long, global = true, env = "HERD_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator (a Raft member holding the cluster state).
    Coordinator(cmd::coordinator::CoordinatorArgs),
    /// Run a whole cluster in this process, for a first try.
    Dev(cmd::dev::DevArgs),
    /// Inspect the coordinators and change their membership.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Submit, inspect and stop jobs.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Inspect allocations (job instances placed on nodes).
    #[command(subcommand)]
    Alloc(cmd::alloc::AllocCommand),
    /// Decentralised load balancing among the node agents (`herd balance
    /// status`: the spread one agent sees).
    #[command(subcommand)]
    Balance(cmd::balance::BalanceCommand),
    /// Inspect live migrations (`herd alloc migrate` starts one).
    #[command(subcommand)]
    Migration(cmd::migration::MigrationCommand),
    /// Run a node agent (`herd node --name N --coordinators ADDR`), or
    /// inspect and drive nodes (`herd node list|drain|eligibility`).
    Node(cmd::node::NodeArgs),
    /// Read and write variables (replicated registers with compare-and-set).
    #[command(subcommand)]
    Var(cmd::var::VarCommand),
    /// Inference services: status (instances, load, TTFT/TBT percentiles,
    /// scaling events) and scale.
    #[command(subcommand)]
    Service(cmd::service::ServiceCommand),
    /// Client authentication: bootstrap, and create, list, revoke tokens.
    #[command(subcommand)]
    Acl(cmd::acl::AclCommand),
    /// Make the cluster's CA and certificates for mutual TLS.
    #[command(subcommand)]
    Tls(cmd::tls::TlsCommand),
    /// Operate the cluster: back up its state and restore it into a new cluster.
    #[command(subcommand)]
    Operator(cmd::operator::OperatorCommand),
    /// GPU power budgets per group of nodes, and what the nodes draw.
    #[command(subcommand)]
    Power(cmd::power::PowerCommand),
    /// Plan defragmenting migrations (`herd reschedule eval FILE`: compare
    /// the planners on an instance file; `generate`: a synthetic one;
    /// `plan|apply`: on the live cluster).
    #[command(subcommand)]
    Reschedule(cmd::reschedule::RescheduleCommand),
    /// Prepare what the vm driver boots (`herd vm guest DIR`: a small test guest).
    #[command(subcommand)]
    Vm(cmd::vm::VmCommand),
    /// Inject faults into real clusters and check what clients saw.
    #[command(subcommand)]
    Chaos(cmd::chaos::ChaosCommand),
    /// Measure herd against its targets.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Supervise one workload of the exec driver (started by the node agent).
    #[command(hide = true)]
    Executor(cmd::executor::ExecutorArgs),
    /// Train a small model, checkpointing and resuming (the dljob driver's default).
    ToyTrain(cmd::toy_train::ToyTrainArgs),
    /// One simulated VM of the simvm driver (started by the node agent).
    #[command(hide = true)]
    SimVm(cmd::sim_vm::SimVmArgs),
    /// Run one request on a SIMULATED LLM inference service and stream its tokens.
    Infer(cmd::infer::InferArgs),
    /// Move a running request of a SIMULATED LLM service to another instance while it decodes.
    InferMigrate(cmd::infer_migrate::InferMigrateArgs),
    /// Run a SIMULATED LLM engine (started by the inference driver).
    #[command(hide = true)]
    InferenceEngine(cmd::inference_engine::InferenceEngineArgs),
}

impl Cli {
    /// The transport flags, for [`cmd::transport::install`].
    fn transport_settings(&self) -> cmd::transport::TransportFlags {
        cmd::transport::TransportFlags {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            insecure: self.insecure,
        }
    }
}

fn init_tracing(filter: Option<&str>, json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

const DAEMON_LOG: &str = "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn";
const CLIENT_LOG: &str = "warn,openraft=error";
/// `herd chaos sim` runs whole simulated clusters in this process, whose
/// members log every fault they live through: only its own lines show.
const SIM_LOG: &str = "off";

async fn run(cli: Cli) -> Result<(), CliError> {
    let daemon = match &cli.command {
        Command::Coordinator(_) | Command::Dev(_) | Command::InferenceEngine(_) => true,
        Command::Node(args) => args.command.is_none(),
        _ => false,
    };
    let simulation = matches!(
        &cli.command,
        Command::Chaos(cmd::chaos::ChaosCommand::Sim(_))
    );
    let default_log = if daemon {
        DAEMON_LOG
    } else if simulation {
        SIM_LOG
    } else {
        CLIENT_LOG
    };
    init_tracing(cli.log.as_deref(), cli.log_json, default_log);
    let request_id = match cli.request_id.as_deref() {
        Some(text) => herd_api::request_id::RequestId::parse(text)
            .map_err(|e| CliError::input(format!("--request-id / HERD_REQUEST_ID: {e}")))?,
        None => herd_api::request_id::RequestId::generate(),
    };
    let ctx = cmd::Context {
        addr: cli.addr,
        output: cli.output,
        token: cli.token,
        request_id,
    };
    match cli.command {
        Command::Coordinator(args) => cmd::coordinator::run(args, ctx.token.as_deref()).await,
        Command::Dev(args) => cmd::dev::run(args).await,
        Command::Cluster(command) => cmd::cluster::run(&ctx, command).await,
        Command::Job(command) => cmd::job::run(&ctx, command).await,
        Command::Node(args) => match args.command {
            Some(command) => cmd::node::run(&ctx, command).await,
            None => cmd::agent::run(args.agent, ctx.token.as_deref()).await,
        },
        Command::Alloc(command) => cmd::alloc::run(&ctx, command).await,
        Command::Migration(command) => cmd::migration::run(&ctx, command).await,
        Command::Balance(command) => cmd::balance::run(&ctx, command).await,
        Command::Var(command) => cmd::var::run(&ctx, command).await,
        Command::Service(command) => cmd::service::run(&ctx, command).await,
        Command::Acl(command) => cmd::acl::run(&ctx, command).await,
        Command::Tls(command) => cmd::tls::run(&ctx, command).await,
        Command::Operator(command) => cmd::operator::run(&ctx, command).await,
        Command::Power(command) => cmd::power::run(&ctx, command).await,
        Command::Vm(command) => cmd::vm::run(&ctx, command),
        Command::Reschedule(command) => cmd::reschedule::run(&ctx, command).await,
        Command::Bench(command) => bench::run(&ctx, command).await,
        Command::SimVm(args) => cmd::sim_vm::run(args).await,
        Command::Chaos(command) => cmd::chaos::run(command).await,
        Command::Infer(args) => cmd::infer::run(&ctx, args).await,
        Command::InferMigrate(args) => cmd::infer_migrate::run(&ctx, args).await,
        Command::InferenceEngine(args) => cmd::inference_engine::run(args).await,
        Command::Executor(_) => Err(CliError::runtime("the executor runs outside the runtime")),
        Command::ToyTrain(_) => Err(CliError::runtime("toy-train runs outside the runtime")),
    }
}

/// Client commands print their answer and exit; daemons, the harness and
/// the benchmark run on and hold sockets and child pipes of their own.
fn prints_and_exits(command: &Command) -> bool {
    match command {
        Command::Cluster(_)
        | Command::Job(_)
        | Command::Alloc(_)
        | Command::Migration(_)
        | Command::Balance(_)
        | Command::Var(_)
        | Command::Service(_)
        | Command::Acl(_)
        | Command::Tls(_)
        | Command::Operator(_)
        | Command::Power(_)
        | Command::Vm(_)
        | Command::Reschedule(_)
        | Command::Infer(_)
        | Command::InferMigrate(_) => true,
        Command::Node(args) => args.command.is_some(),
        Command::Coordinator(_)
        | Command::Dev(_)
        | Command::Chaos(_)
        | Command::Bench(_)
        | Command::Executor(_)
        | Command::ToyTrain(_)
        | Command::SimVm(_)
        | Command::InferenceEngine(_) => false,
    }
}

/// What `command` does with the network, for its transport (TLS or plaintext).
fn transport_use(command: &Command) -> cmd::transport::Use {
    use cmd::transport::Use;
    use herd_api::tls::PeerRole;
    match command {
        Command::Coordinator(_) => Use::Serve(PeerRole::Coordinator),
        Command::Node(args) if args.command.is_none() => Use::Serve(PeerRole::Node),
        Command::Dev(_) => Use::WholeCluster("herd dev"),
        Command::Chaos(cmd::chaos::ChaosCommand::Run(args)) if args.tls => Use::InstallsItsOwn,
        Command::Chaos(_) => Use::WholeCluster("herd chaos"),
        Command::Bench(_) => Use::WholeCluster("herd bench"),
        Command::Executor(_)
        | Command::ToyTrain(_)
        | Command::SimVm(_)
        | Command::InferenceEngine(_)
        | Command::Vm(_) => Use::Local,
        Command::Tls(command) if !command.dials() => Use::Local,
        Command::Tls(_) => Use::Client,
        Command::Node(_)
        | Command::Cluster(_)
        | Command::Job(_)
        | Command::Alloc(_)
        | Command::Migration(_)
        | Command::Balance(_)
        | Command::Var(_)
        | Command::Service(_)
        | Command::Acl(_)
        | Command::Operator(_)
        | Command::Power(_)
        | Command::Reschedule(_)
        | Command::Infer(_)
        | Command::InferMigrate(_) => Use::Client,
    }
}

/// Lets a client command end the way Unix tools do when its reader goes
/// away (`herd job list | head -1`): Rust ignores SIGPIPE, so the next
/// `println!` would panic with "failed printing to stdout: Broken pipe".
/// Only for client commands: their only pipe is stdout, and dying there
/// loses nothing, since every request has already been answered.
fn die_quietly_on_closed_stdout() {
    // SAFETY: called before any other thread exists; restoring a signal's
    // default disposition touches no memory of this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    let cli = Cli::parse();
    if let Command::Executor(args) = &cli.command {
        // Before any runtime thread exists: the executor waits with blocked
        // signals, which must not be delivered to another thread.
        std::process::exit(cmd::executor::run(args));
    }
    if let Command::ToyTrain(args) = &cli.command {
        // Single-threaded too: it waits for its signals between steps.
        std::process::exit(cmd::toy_train::run(args));
    }
    if prints_and_exits(&cli.command) {
        die_quietly_on_closed_stdout();
    }
    if let Err(e) = cmd::transport::install(&cli.transport_settings(), transport_use(&cli.command))
    {
        eprintln!("herd: {}", e.message);
        std::process::exit(e.code);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("herd: {}", e.message);
        std::process::exit(e.code);
    }
}
