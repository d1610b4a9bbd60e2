//! A node agent's configuration: flags, a TOML file, or both (flags win),
//! resolved into one validated [`NodeConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_actors::driver::confine::{ConfineError, Confinement};
use herd_actors::driver::live::MigrationHost;
use herd_api::resources::parse_memory;
use serde::{Deserialize, Serialize};

pub use herd_api::config_file::{check_host_port, ConfigError};
use herd_api::config_file::{invalid, listen_and_advertise, required};

/// Every setting optional: what a config file or the command line provides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// The node's cluster-unique name.
    pub name: Option<String>,
    /// Coordinators to register with, `HOST:PORT,HOST:PORT,...`.
    pub coordinators: Option<String>,
    /// Address of the agent's own gRPC server (logs, peers).
    pub listen: Option<String>,
    /// Address others reach the agent at (default: `listen`).
    pub advertise: Option<String>,
    /// Host (IP or DNS name, no port) that incoming live migrations of VMs
    /// listen on and that other agents connect to (default: the host of
    /// `advertise`).
    pub migration_host: Option<String>,
    /// Where allocations, their logs and the agent's state live.
    pub data_dir: Option<PathBuf>,
    /// Labels constraints and spreading match on (`rack = "r1"`).
    pub labels: Option<BTreeMap<String, String>>,
    /// Simulated GPUs to report instead of real ones (no NVIDIA driver used).
    pub sim_gpus: Option<u32>,
    /// Model of the simulated GPUs (`h100`, `a100`, `l4`...).
    pub sim_gpu_model: Option<String>,
    /// Pinned activities of the simulated GPUs, `0.6,0.7,...` (0.0 to 1.0,
    /// GPU `i` takes value `i % len`), instead of following their work: a
    /// test knob (SIMULATION).
    pub sim_gpu_activity: Option<String>,
    /// Lock every GPU's graphics clock to `MIN:MAX` MHz at start (NVML
    /// only; steadier speed and power under a cap). Unset: clocks free.
    pub gpu_lock_clocks: Option<String>,
    /// CPU kept back for the system, millicores.
    pub reserved_cpu: Option<u64>,
    /// Memory kept back for the system (`"512MiB"`).
    pub reserved_memory: Option<String>,
    /// Heartbeat period, ms (the leader's TTL shortens it when needed).
    pub heartbeat_ms: Option<u64>,
    /// How long a stopping workload gets before it is killed, ms.
    pub stop_grace_ms: Option<u64>,
    /// Address of the agent's OpenAI-compatible HTTP endpoint; none: no
    /// endpoint.
    pub http_listen: Option<String>,
    /// Address HTTP clients reach it at (default: `http_listen`).
    pub http_advertise: Option<String>,
    /// Serve Prometheus metrics at `/metrics` on this `IP:PORT` (off when unset).
    pub metrics_listen: Option<String>,
    /// Decentralised balancing among agents (docs/balancing.md); on by
    /// default: it only gossips until a job says `[balance] movable`.
    pub balance: Option<bool>,
    /// Move running inference requests off this node's instances that
    /// drain or run low on KV blocks (docs/inference.md); on by default.
    pub reschedule: Option<bool>,
    /// Free KV blocks each inference instance keeps, as a fraction of its
    /// blocks: below it the rescheduler moves requests away, and a target
    /// must keep it after taking one (0.0 to 0.9; default 0.1).
    pub reschedule_reserve: Option<f64>,
    /// A request with fewer tokens than this left to generate is not moved
    /// (it would end before the move paid off; default 16).
    pub reschedule_min_tokens_left: Option<u32>,
    /// Unprivileged user `exec` tasks run as (`"nobody"`); unset: the
    /// agent's own user. Resolved at start: an unknown user is an error.
    pub exec_user: Option<String>,
    /// Directories, besides each allocation's own, that paths in job specs
    /// (working directories, VM kernels and disks) may name; none by default.
    pub allow_paths: Option<Vec<PathBuf>>,
    /// Host block devices a VM may be given as its disk; none by default.
    pub vm_devices: Option<Vec<PathBuf>>,
    /// Per-client request rate, streams and connections (`[limits]`).
    pub limits: Option<herd_api::limits::LimitSettings>,
}

herd_api::daemon_settings!(NodeSettings {
    name,
    coordinators,
    listen,
    advertise,
    migration_host,
    data_dir,
    labels,
    sim_gpus,
    sim_gpu_model,
    sim_gpu_activity,
    gpu_lock_clocks,
    reserved_cpu,
    reserved_memory,
    heartbeat_ms,
    stop_grace_ms,
    http_listen,
    http_advertise,
    metrics_listen,
    balance,
    reschedule,
    reschedule_reserve,
    reschedule_min_tokens_left,
    exec_user,
    allow_paths,
    vm_devices,
    limits,
});

/// Where the agent's OpenAI-compatible HTTP endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// The address bound.
    pub listen: SocketAddr,
    /// The address registered for clients (port 0: the one bound).
    pub advertise: String,
}

/// Simulated GPUs the agent reports (named simulated everywhere).
#[derive(Debug, Clone, PartialEq)]
pub struct SimGpus {
    /// How many.
    pub count: u32,
    /// Their model, lower case.
    pub model: String,
    /// Activities pinned by `sim_gpu_activity` (none: they follow the work).
    pub pinned_activity: Option<Vec<f64>>,
}

/// A validated node agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Cluster-unique node name.
    pub name: String,
    /// Coordinator addresses, tried in turn.
    pub coordinators: Vec<String>,
    /// Where the agent's gRPC server listens.
    pub listen: SocketAddr,
    /// Where others reach it.
    pub advertise: String,
    /// The host incoming live migrations of VMs (QEMU's migration stream
    /// and NBD server, the simulated VM's stream) listen on and publish to
    /// the source's agent: `migration_host`, or the host of `advertise`.
    pub migration_host: MigrationHost,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Simulated GPUs, when asked for.
    pub sim_gpus: Option<SimGpus>,
    /// The graphics clock range (MHz) every GPU is locked to at start, when
    /// asked for (`gpu_lock_clocks`).
    pub gpu_lock_clocks: Option<(u32, u32)>,
    /// CPU kept back for the system, millicores.
    pub reserved_cpu_millis: u64,
    /// Memory kept back for the system, bytes.
    pub reserved_memory_bytes: u64,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Grace period of a stopping workload.
    pub stop_grace: Duration,
    /// The OpenAI-compatible HTTP endpoint, when asked for.
    pub http: Option<HttpEndpoint>,
    /// Whether the agent balances load with its peers.
    pub balance_enabled: bool,
    /// Whether the agent reschedules running inference requests
    /// (`node/src/serve/resched.rs`).
    pub reschedule_requests: bool,
    /// The request rescheduler's policy settings (`reschedule_reserve`,
    /// `reschedule_min_tokens_left`).
    pub reschedule_policy: crate::serve::resched_policy::Settings,
    /// The balancing protocol's and policy's settings.
    pub balance: herd_balance::Config,
    /// Where the Prometheus metrics endpoint listens, when it is on.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token (role `node`) sent to the coordinators, which a
    /// bootstrapped cluster requires (`--token`/`HERD_TOKEN`, never read
    /// from the config file). None: none is sent.
    pub token: Option<String>,
    /// What the drivers confine jobs to: the exec user, the directories spec
    /// paths may name, the host devices VMs may have (`exec_user`,
    /// `allow_paths`, `vm_devices`; docs/security.md).
    pub confinement: Confinement,
    /// What one client may ask of this agent's servers (docs/security.md,
    /// "Limits").
    pub limits: herd_api::limits::Limits,
}

/// Largest number of simulated GPUs one node may claim.
const MAX_SIM_GPUS: u32 = 64;

impl NodeConfig {
    /// Checks what only this machine can tell, before the agent starts:
    /// that a listener can bind the migration host (an address of this
    /// host, or a name resolving to one), so that a wrong one stops the
    /// agent (exit 2) rather than failing its first incoming migration.
    /// Apart from [`NodeConfig::resolve`] so that a configuration for
    /// another machine (the documented example) still resolves here.
    pub fn check_on_this_host(&self) -> Result<(), ConfigError> {
        self.migration_host.check_bindable().map_err(|e| {
            invalid(
                "migration-host",
                format!(
                    "{e}; set migration_host (--migration-host) to an address of this host \
                     (unset, it is the host of advertise {:?})",
                    self.advertise
                ),
            )
        })
    }
}

impl NodeConfig {
    /// Validates settings into a configuration.
    pub fn resolve(settings: NodeSettings) -> Result<Self, ConfigError> {
        let name = required(settings.name, "name", "a cluster-unique node name")?;
        if name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "name",
                format!("{name:?} must be 1 to 128 letters, digits, '-', '_' or '.'"),
            ));
        }
        let coordinators: Vec<String> = required(
            settings.coordinators,
            "coordinators",
            "HOST:PORT[,HOST:PORT...]",
        )?
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
        if coordinators.is_empty() {
            return Err(invalid("coordinators", "no address given"));
        }
        for addr in &coordinators {
            check_host_port(addr).map_err(|e| invalid("coordinators", e))?;
        }
        let listen = settings.listen.unwrap_or_else(|| "127.0.0.1:0".to_string());
        let (listen, advertise) = listen_and_advertise(&listen, settings.advertise, "clients")?;
        let migration_host = migration_host(settings.migration_host.as_deref(), &advertise)?;
        let data_dir = required(
            settings.data_dir,
            "data-dir",
            "a directory for allocations and their logs",
        )?;
        let pinned_activity = settings
            .sim_gpu_activity
            .as_deref()
            .map(parse_activities)
            .transpose()
            .map_err(|e| invalid("sim-gpu-activity", e))?;
        if pinned_activity.is_some() && settings.sim_gpus.unwrap_or(0) == 0 {
            return Err(invalid(
                "sim-gpu-activity",
                "given without sim-gpus (it pins simulated GPUs only)",
            ));
        }
        if let (Some(pinned), Some(count)) = (&pinned_activity, settings.sim_gpus) {
            if pinned.len() > count as usize {
                return Err(invalid(
                    "sim-gpu-activity",
                    format!(
                        "{} values for {count} simulated GPUs (one per GPU at most; fewer repeat)",
                        pinned.len()
                    ),
                ));
            }
        }
        let sim_gpus = match (settings.sim_gpus, settings.sim_gpu_model) {
            (None | Some(0), None) => None,
            (None | Some(0), Some(_)) => {
                return Err(invalid(
                    "sim-gpu-model",
                    "given without sim-gpus (how many simulated GPUs?)",
                ))
            }
            (Some(n), _) if n > MAX_SIM_GPUS => {
                return Err(invalid(
                    "sim-gpus",
                    format!("at most {MAX_SIM_GPUS} simulated GPUs, got {n}"),
                ))
            }
            (Some(n), model) => {
                let model = model.unwrap_or_else(|| "h100".to_string()).to_lowercase();
                if model.is_empty() || model.len() > 64 {
                    return Err(invalid("sim-gpu-model", "must be 1 to 64 characters"));
                }
                Some(SimGpus {
                    count: n,
                    model,
                    pinned_activity,
                })
            }
        };
        let reserved_memory_bytes = match settings.reserved_memory {
            Some(text) => parse_memory(&text).map_err(|e| invalid("reserved-memory", e))?,
            None => 0,
        };
        let heartbeat = Duration::from_millis(settings.heartbeat_ms.unwrap_or(1000));
        if !(100..=60_000).contains(&heartbeat.as_millis()) {
            return Err(invalid(
                "heartbeat-ms",
                format!("must be 100 to 60000, got {}", heartbeat.as_millis()),
            ));
        }
        let stop_grace = Duration::from_millis(settings.stop_grace_ms.unwrap_or(5000));
        if stop_grace > Duration::from_secs(3600) {
            return Err(invalid("stop-grace-ms", "at most one hour"));
        }
        let http = match settings.http_listen {
            Some(listen) => {
                let (listen, advertise) =
                    listen_and_advertise(&listen, settings.http_advertise, "HTTP clients")
                        .map_err(|e| match e {
                            ConfigError::Invalid { field, message } => invalid(
                                if field == "listen" {
                                    "http-listen"
                                } else {
                                    "http-advertise"
                                },
                                message,
                            ),
                            other => other,
                        })?;
                Some(HttpEndpoint { listen, advertise })
            }
            None if settings.http_advertise.is_some() => {
                return Err(invalid(
                    "http-advertise",
                    "given without http-listen (where does the endpoint listen?)",
                ))
            }
            None => None,
        };
        let metrics_listen =
            match settings.metrics_listen {
                None => None,
                Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                    invalid("metrics-listen", format!("{text:?} is not IP:PORT: {e}"))
                })?),
            };
        let gpu_lock_clocks = settings
            .gpu_lock_clocks
            .as_deref()
            .map(parse_clock_range)
            .transpose()
            .map_err(|e| invalid("gpu-lock-clocks", e))?;
        let confinement = Confinement::for_node(
            settings.exec_user.as_deref(),
            settings.allow_paths.as_deref().unwrap_or_default(),
            settings.vm_devices.as_deref().unwrap_or_default(),
        )
        .map_err(|e| match e {
            ConfineError::Setting {
                setting: "vm_devices",
                ..
            } => invalid("vm-devices", e.to_string()),
            ConfineError::Setting { .. } => invalid("allow-paths", e.to_string()),
            _ => invalid("exec-user", e.to_string()),
        })?;
        let reschedule_policy = reschedule_policy(
            settings.reschedule_reserve,
            settings.reschedule_min_tokens_left,
        )?;
        let labels = settings.labels.unwrap_or_default();
        for (key, value) in &labels {
            if key.is_empty() || key.len() > 64 || value.len() > 256 {
                return Err(invalid(
                    "labels",
                    format!("label {key:?}: keys are 1 to 64 bytes, values at most 256"),
                ));
            }
        }
        Ok(Self {
            name,
            coordinators,
            listen,
            advertise,
            migration_host,
            data_dir,
            labels,
            sim_gpus,
            gpu_lock_clocks,
            reserved_cpu_millis: settings.reserved_cpu.unwrap_or(0),
            reserved_memory_bytes,
            heartbeat,
            stop_grace,
            http,
            metrics_listen,
            token: None,
            limits: herd_api::limits::Limits::resolve(settings.limits)?,
            confinement,
            balance_enabled: settings.balance.unwrap_or(true),
            reschedule_requests: settings.reschedule.unwrap_or(true),
            reschedule_policy,
            balance: herd_balance::Config::default(),
        })
    }
}

/// Largest KV reserve an instance may keep: above it an instance would
/// count as short of blocks while most of them are free, and requests
/// would be moved for ever.
const MAX_RESCHEDULE_RESERVE: f64 = 0.9;

/// The request rescheduler's settings from the node's, the defaults where
/// unset.
fn reschedule_policy(
    reserve: Option<f64>,
    min_tokens_left: Option<u32>,
) -> Result<crate::serve::resched_policy::Settings, ConfigError> {
    let defaults = crate::serve::resched_policy::Settings::default();
    let reserve_fraction = match reserve {
        None => defaults.reserve_fraction,
        Some(r) if r.is_finite() && (0.0..=MAX_RESCHEDULE_RESERVE).contains(&r) => r,
        Some(r) => {
            return Err(invalid(
                "reschedule-reserve",
                format!(
                    "{r} is not a fraction of the KV blocks from 0.0 to {MAX_RESCHEDULE_RESERVE}"
                ),
            ))
        }
    };
    let min_remaining_tokens = match min_tokens_left {
        None => defaults.min_remaining_tokens,
        Some(n) if (1..=herd_actors::inference::MAX_REQUEST_TOKENS).contains(&n) => n,
        Some(n) => {
            return Err(invalid(
                "reschedule-min-tokens-left",
                format!(
                    "{n} is not between 1 and {} tokens",
                    herd_actors::inference::MAX_REQUEST_TOKENS
                ),
            ))
        }
    };
    Ok(crate::serve::resched_policy::Settings {
        reserve_fraction,
        min_remaining_tokens,
    })
}

/// The host incoming live migrations listen on: `given`
/// (`migration_host`), or the host part of `advertise`. Only its form is
/// checked here; [`NodeConfig::check_on_this_host`] checks, when the agent
/// starts, that it is an address of the machine.
fn migration_host(given: Option<&str>, advertise: &str) -> Result<MigrationHost, ConfigError> {
    let field = "migration-host";
    match given {
        Some(text) => MigrationHost::parse(text).map_err(|e| invalid(field, e.to_string())),
        None => {
            let text = advertise
                .rsplit_once(':')
                .map_or(advertise, |(host, _)| host);
            MigrationHost::parse(text).map_err(|e| {
                invalid(
                    field,
                    format!(
                        "defaults to the host of advertise {advertise:?}, which does not do: {e}; \
                         set migration_host (--migration-host) to an address of this host"
                    ),
                )
            })
        }
    }
}

/// Parses `MIN:MAX` MHz (the `--gpu-lock-clocks` flag): 1 ≤ MIN ≤ MAX ≤
/// 10,000 (each device's own range is checked again before NVML is asked).
pub fn parse_clock_range(text: &str) -> Result<(u32, u32), String> {
    let (min, max) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not MIN:MAX (MHz)"))?;
    let mhz = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("{part:?} is not a whole number of MHz"))
    };
    let (min, max) = (mhz(min)?, mhz(max)?);
    if min == 0 || min > max || max > 10_000 {
        return Err(format!("{min}:{max} MHz: needs 1 <= MIN <= MAX <= 10000"));
    }
    Ok((min, max))
}

/// Parses `0.6,0.7,0.8` (the `--sim-gpu-activity` flag): 1 to
/// [`MAX_SIM_GPUS`] numbers, each 0.0 to 1.0.
pub fn parse_activities(text: &str) -> Result<Vec<f64>, String> {
    let mut activities = Vec::new();
    for part in text.split(',').map(str::trim) {
        let value: f64 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number (0.0 to 1.0)"))?;
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("{part:?} is outside 0.0 to 1.0"));
        }
        activities.push(value);
    }
    if activities.len() > MAX_SIM_GPUS as usize {
        return Err(format!(
            "at most {MAX_SIM_GPUS} activities, got {}",
            activities.len()
        ));
    }
    Ok(activities)
}

/// Parses `key=value,key=value` (the `--labels` flag).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NodeSettings {
        NodeSettings {
            name: Some("n1".into()),
            coordinators: Some("127.0.0.1:7100".into()),
            data_dir: Some("/tmp/n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn file_parses_and_flags_win() {
        let text = "name = \"gpu-7\"\ncoordinators = \"10.0.0.1:7100,10.0.0.2:7100\"\nlisten = \"127.0.0.1:7200\"\ndata_dir = \"/var/lib/herd-node\"\nsim_gpus = 8\nsim_gpu_model = \"H100\"\nreserved_memory = \"1GiB\"\n[labels]\nrack = \"r1\"\n";
        let file = NodeSettings::from_toml(text, "node.toml").expect("parse");
        let config = NodeConfig::resolve(file.clone()).expect("resolve");
        assert_eq!(config.name, "gpu-7");
        assert_eq!(config.coordinators.len(), 2);
        assert_eq!(
            config.sim_gpus,
            Some(SimGpus {
                count: 8,
                model: "h100".into(),
                pinned_activity: None,
            })
        );
        assert_eq!(config.reserved_memory_bytes, 1 << 30);
        assert_eq!(config.labels["rack"], "r1");
        assert_eq!(config.advertise, "127.0.0.1:7200");
        let merged = file.overridden_by(NodeSettings {
            name: Some("other".into()),
            ..Default::default()
        });
        assert_eq!(merged.name.as_deref(), Some("other"));
        assert_eq!(merged.sim_gpus, Some(8));
        let pinned = NodeConfig::resolve(NodeSettings {
            sim_gpus: Some(2),
            sim_gpu_activity: Some("0.6, 1".into()),
            ..base()
        })
        .expect("valid");
        assert_eq!(
            pinned.sim_gpus.and_then(|s| s.pinned_activity),
            Some(vec![0.6, 1.0])
        );
        let locked = NodeConfig::resolve(NodeSettings {
            gpu_lock_clocks: Some("1000:1980".into()),
            ..base()
        })
        .expect("valid");
        assert_eq!(locked.gpu_lock_clocks, Some((1000, 1980)));
    }

    #[test]
    fn errors_name_the_setting_or_the_place_in_the_file() {
        let err = NodeSettings::from_toml("name = \"a\"\nbogus = 1\n", "n.toml").unwrap_err();
        assert!(err.to_string().starts_with("n.toml:2:1:"), "{err}");
        for (settings, field) in [
            (
                NodeSettings {
                    name: None,
                    ..base()
                },
                "name",
            ),
            (
                NodeSettings {
                    name: Some("a b".into()),
                    ..base()
                },
                "name",
            ),
            (
                NodeSettings {
                    coordinators: Some("nohost".into()),
                    ..base()
                },
                "coordinators",
            ),
            (
                NodeSettings {
                    data_dir: None,
                    ..base()
                },
                "data-dir",
            ),
            (
                NodeSettings {
                    listen: Some("0.0.0.0:7200".into()),
                    ..base()
                },
                "advertise",
            ),
            (
                NodeSettings {
                    sim_gpus: Some(1000),
                    ..base()
                },
                "sim-gpus",
            ),
            (
                NodeSettings {
                    sim_gpu_model: Some("a100".into()),
                    ..base()
                },
                "sim-gpu-model",
            ),
            (
                NodeSettings {
                    sim_gpu_activity: Some("0.5".into()),
                    ..base()
                },
                "sim-gpu-activity",
            ),
            (
                NodeSettings {
                    sim_gpus: Some(2),
                    sim_gpu_activity: Some("0.5,0.5,0.5".into()),
                    ..base()
                },
                "sim-gpu-activity",
            ),
            (
                NodeSettings {
                    gpu_lock_clocks: Some("1980:1000".into()),
                    ..base()
                },
                "gpu-lock-clocks",
            ),
            (
                NodeSettings {
                    gpu_lock_clocks: Some("1000".into()),
                    ..base()
                },
                "gpu-lock-clocks",
            ),
            (
                NodeSettings {
                    sim_gpus: Some(2),
                    sim_gpu_activity: Some("0.5,1.5".into()),
                    ..base()
                },
                "sim-gpu-activity",
            ),
            (
                NodeSettings {
                    sim_gpus: Some(2),
                    sim_gpu_activity: Some("0.5,,".into()),
                    ..base()
                },
                "sim-gpu-activity",
            ),
            (
                NodeSettings {
                    reserved_memory: Some("lots".into()),
                    ..base()
                },
                "reserved-memory",
            ),
            (
                NodeSettings {
                    heartbeat_ms: Some(5),
                    ..base()
                },
                "heartbeat-ms",
            ),
            (
                NodeSettings {
                    http_listen: Some("localhost".into()),
                    ..base()
                },
                "http-listen",
            ),
            (
                NodeSettings {
                    http_listen: Some("0.0.0.0:8000".into()),
                    ..base()
                },
                "http-advertise",
            ),
            (
                NodeSettings {
                    http_advertise: Some("h:8000".into()),
                    ..base()
                },
                "http-advertise",
            ),
        ] {
            match NodeConfig::resolve(settings) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_http_endpoint_is_off_unless_asked_for() {
        assert_eq!(NodeConfig::resolve(base()).expect("resolve").http, None);
        let config = NodeConfig::resolve(NodeSettings {
            http_listen: Some("0.0.0.0:8000".into()),
            http_advertise: Some("gpu-7:8000".into()),
            ..base()
        })
        .expect("resolve");
        let http = config.http.expect("an endpoint");
        assert_eq!(http.listen.port(), 8000);
        assert_eq!(http.advertise, "gpu-7:8000");
    }

    #[test]
    fn metrics_are_off_unless_given_an_address() {
        assert_eq!(
            NodeConfig::resolve(base()).expect("resolve").metrics_listen,
            None
        );
        let on = NodeConfig::resolve(NodeSettings {
            metrics_listen: Some("127.0.0.1:9101".into()),
            ..base()
        })
        .expect("resolve");
        assert_eq!(
            on.metrics_listen,
            Some("127.0.0.1:9101".parse().expect("addr"))
        );
        match NodeConfig::resolve(NodeSettings {
            metrics_listen: Some("metrics.local:9101".into()),
            ..base()
        }) {
            Err(ConfigError::Invalid { field, message }) => {
                assert_eq!(field, "metrics-listen");
                assert!(message.contains("metrics.local:9101"), "{message}");
            }
            other => panic!("expected an error on metrics-listen, got {other:?}"),
        }
    }

    #[test]
    fn the_request_reschedulers_settings_are_checked_and_default() {
        let defaults = crate::serve::resched_policy::Settings::default();
        let config = NodeConfig::resolve(base()).expect("resolve");
        assert_eq!(config.reschedule_policy, defaults);
        let set = NodeConfig::resolve(NodeSettings {
            reschedule_reserve: Some(0.25),
            reschedule_min_tokens_left: Some(64),
            ..base()
        })
        .expect("resolve");
        assert_eq!(set.reschedule_policy.reserve_fraction, 0.25);
        assert_eq!(set.reschedule_policy.min_remaining_tokens, 64);
        for (settings, field) in [
            (
                NodeSettings {
                    reschedule_reserve: Some(0.95),
                    ..base()
                },
                "reschedule-reserve",
            ),
            (
                NodeSettings {
                    reschedule_reserve: Some(f64::NAN),
                    ..base()
                },
                "reschedule-reserve",
            ),
            (
                NodeSettings {
                    reschedule_reserve: Some(-0.1),
                    ..base()
                },
                "reschedule-reserve",
            ),
            (
                NodeSettings {
                    reschedule_min_tokens_left: Some(0),
                    ..base()
                },
                "reschedule-min-tokens-left",
            ),
        ] {
            match NodeConfig::resolve(settings) {
                Err(ConfigError::Invalid { field: f, message }) => {
                    assert_eq!(f, field, "{message}");
                }
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
        // From a file, as operators write it.
        let file = NodeSettings::from_toml(
            "name = \"n\"\ncoordinators = \"127.0.0.1:7000\"\ndata_dir = \"/var/lib/herd\"\nreschedule_reserve = 0.2\n",
            "node.toml",
        )
        .expect("parse");
        let config = NodeConfig::resolve(file).expect("resolve");
        assert_eq!(config.reschedule_policy.reserve_fraction, 0.2);
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/configuration.md");
        let section = &doc[doc
            .find("# Configuring a node agent")
            .expect("node section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let end = start + section[start..].find("```").expect("end of block");
        let settings =
            NodeSettings::from_toml(&section[start..end], "docs/configuration.md").expect("parse");
        let config = NodeConfig::resolve(settings).expect("resolve");
        assert_eq!(config.name, "gpu-7");
        assert_eq!(config.coordinators.len(), 3);
        assert_eq!(config.labels["rack"], "r7");
        assert_eq!(config.reserved_memory_bytes, 1 << 30);
        assert_eq!(
            config.heartbeat,
            Duration::from_secs(1),
            "documented default"
        );
        assert_eq!(
            config.stop_grace,
            Duration::from_secs(5),
            "documented default"
        );
    }

    #[test]
    fn drivers_are_confined_by_default_and_bad_confinement_settings_are_named() {
        use herd_actors::driver::confine::PathPolicy;
        let config = NodeConfig::resolve(base()).expect("resolve");
        assert_eq!(config.confinement.paths, PathPolicy::Within(Vec::new()));
        assert_eq!(config.confinement.exec_user, None);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig::resolve(NodeSettings {
            allow_paths: Some(vec![dir.path().to_path_buf()]),
            ..base()
        })
        .expect("resolve");
        let canonical = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            config.confinement.paths,
            PathPolicy::Within(vec![canonical])
        );
        for (settings, field, needle) in [
            (
                NodeSettings {
                    exec_user: Some("no-such-user-herd".into()),
                    ..base()
                },
                "exec-user",
                "does not exist",
            ),
            (
                NodeSettings {
                    exec_user: Some("root".into()),
                    ..base()
                },
                "exec-user",
                "uid 0",
            ),
            (
                NodeSettings {
                    allow_paths: Some(vec!["images".into()]),
                    ..base()
                },
                "allow-paths",
                "absolute",
            ),
            (
                NodeSettings {
                    vm_devices: Some(vec![dir.path().to_path_buf()]),
                    ..base()
                },
                "vm-devices",
                "not a block device",
            ),
        ] {
            match NodeConfig::resolve(settings) {
                Err(ConfigError::Invalid { field: f, message }) => {
                    assert_eq!(f, field);
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
        let file = NodeSettings::from_toml(
            "exec_user = \"nobody\"\nallow_paths = [\"/srv/images\"]\nvm_devices = [\"/dev/sdb\"]\n",
            "node.toml",
        )
        .expect("parse");
        assert_eq!(file.exec_user.as_deref(), Some("nobody"));
        assert_eq!(file.allow_paths, Some(vec![PathBuf::from("/srv/images")]));
        assert_eq!(file.vm_devices, Some(vec![PathBuf::from("/dev/sdb")]));
    }

    #[test]
    fn migrations_listen_on_the_advertised_host_unless_told_otherwise() {
        let config = NodeConfig::resolve(NodeSettings {
            listen: Some("127.0.0.2:0".into()),
            ..base()
        })
        .expect("resolve");
        assert_eq!(config.migration_host.host(), "127.0.0.2");
        let config = NodeConfig::resolve(NodeSettings {
            listen: Some("0.0.0.0:7200".into()),
            advertise: Some("127.0.0.5:7200".into()),
            ..base()
        })
        .expect("resolve");
        assert_eq!(
            config.migration_host.host(),
            "127.0.0.5",
            "advertise's host"
        );
        let config = NodeConfig::resolve(NodeSettings {
            listen: Some("[::1]:0".into()),
            ..base()
        })
        .expect("resolve");
        assert_eq!(config.migration_host.host(), "::1", "without brackets");
        assert_eq!(config.migration_host.with_port(7), "[::1]:7");
        let file = NodeSettings::from_toml("migration_host = \"127.0.0.4\"\n", "node.toml")
            .expect("parse");
        let config = NodeConfig::resolve(NodeSettings {
            listen: Some("127.0.0.2:0".into()),
            ..file.overridden_by(base())
        })
        .expect("resolve");
        assert_eq!(
            config.migration_host.host(),
            "127.0.0.4",
            "the setting wins"
        );
        for (settings, needle) in [
            (
                NodeSettings {
                    migration_host: Some("0.0.0.0".into()),
                    ..base()
                },
                "cannot be published",
            ),
            (
                NodeSettings {
                    migration_host: Some("127.0.0.1:7300".into()),
                    ..base()
                },
                "without a port",
            ),
            (
                NodeSettings {
                    migration_host: Some("no such host".into()),
                    ..base()
                },
                "neither",
            ),
            (
                NodeSettings {
                    listen: Some("0.0.0.0:7200".into()),
                    advertise: Some("[10.0.0.7:7200".into()),
                    ..base()
                },
                "defaults to the host of advertise \"[10.0.0.7:7200\"",
            ),
        ] {
            match NodeConfig::resolve(settings) {
                Err(ConfigError::Invalid { field, message }) => {
                    assert_eq!(field, "migration-host");
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("expected an error on migration-host, got {other:?}"),
            }
        }
        // Only this machine can tell whether it has the address: checked
        // when the agent starts. 192.0.2.0/24 is on no machine.
        let here = NodeConfig::resolve(NodeSettings {
            listen: Some("127.0.0.2:0".into()),
            ..base()
        })
        .expect("resolve");
        here.check_on_this_host().expect("loopback is here");
        for settings in [
            NodeSettings {
                migration_host: Some("192.0.2.1".into()),
                ..base()
            },
            NodeSettings {
                listen: Some("0.0.0.0:7200".into()),
                advertise: Some("192.0.2.1:7200".into()),
                ..base()
            },
        ] {
            let config = NodeConfig::resolve(settings).expect("well-formed");
            match config.check_on_this_host() {
                Err(ConfigError::Invalid { field, message }) => {
                    assert_eq!(field, "migration-host");
                    assert!(message.contains("cannot be listened on here"), "{message}");
                    assert!(message.contains("192.0.2.1"), "{message}");
                    assert!(message.contains("--migration-host"), "{message}");
                }
                other => panic!("expected an error on migration-host, got {other:?}"),
            }
        }
    }

    #[test]
    fn labels_parse_from_the_flag() {
        let labels = parse_labels("rack=r1, zone = z2").expect("parse");
        assert_eq!(labels["rack"], "r1");
        assert_eq!(labels["zone"], "z2");
        assert!(parse_labels("rack").is_err());
    }
}
