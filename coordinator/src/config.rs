//! A coordinator's configuration: command-line flags, a TOML file, or both
//! (flags win), resolved into one validated [`CoordinatorConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_consensus::network::DialMap;
use herd_consensus::raft_config::RaftTuning;
use serde::{Deserialize, Serialize};

pub use herd_api::config_file::{check_host_port, ConfigError};
use herd_api::config_file::{invalid, listen_and_advertise, required};

/// Every setting optional: what a config file or the command line provides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// This member's Raft id (1, 2, ...).
    pub id: Option<u64>,
    /// Address to listen on for every gRPC service.
    pub listen: Option<String>,
    /// Address other members and clients use to reach this one (default: `listen`).
    pub advertise: Option<String>,
    /// Where the Raft log and state live.
    pub data_dir: Option<PathBuf>,
    /// Form a new cluster from `peers` (ignored once the data dir holds state).
    pub bootstrap: Option<bool>,
    /// The initial members, `1=HOST:PORT,2=HOST:PORT,...`, the same on every member.
    pub peers: Option<String>,
    /// Join the cluster reachable at this address (ignored once the data dir holds state).
    pub join: Option<String>,
    /// Raft timing and compaction.
    pub raft: Option<RaftTuning>,
    /// A node that sends no heartbeat for this long is marked down (ms).
    pub node_ttl_ms: Option<u64>,
    /// Members to reach at another address than the one they advertise,
    /// `2=HOST:PORT,3=HOST:PORT` (address translation between sites, or the
    /// chaos harness's fault-injecting proxies).
    pub dial: Option<String>,
    /// Serve the read-only web dashboard on this `IP:PORT` (off when unset).
    pub http_listen: Option<String>,
    /// Serve Prometheus metrics at `/metrics` on this `IP:PORT` (off when unset).
    pub metrics_listen: Option<String>,
    /// The leader's defragmenting loop (`[reschedule]`; off unless `every` is set).
    pub reschedule: Option<crate::reschedule::config::RescheduleSettings>,
    /// The exact solver's window for pending high-priority jobs (`[placement_fallback]`).
    pub placement_fallback: Option<crate::reschedule::config::FallbackSettings>,
    /// Per-client request rate, streams and connections (`[limits]`).
    pub limits: Option<herd_api::limits::LimitSettings>,
}

herd_api::daemon_settings!(CoordinatorSettings {
    id,
    listen,
    advertise,
    data_dir,
    bootstrap,
    peers,
    join,
    raft,
    node_ttl_ms,
    dial,
    http_listen,
    metrics_listen,
    reschedule,
    placement_fallback,
    limits,
});

/// How a member starts when its data dir is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// Form a new cluster with these members.
    Bootstrap(BTreeMap<u64, String>),
    /// Ask the cluster at this address to add this member.
    Join(String),
    /// Wait to be added with `herd cluster add` or `replace`.
    Wait,
}

/// A validated coordinator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// Raft id, never 0.
    pub id: u64,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where others reach this member.
    pub advertise: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// What to do on an empty data dir.
    pub mode: StartMode,
    /// Raft tuning.
    pub raft: RaftTuning,
    /// How long a node may miss heartbeats before it is marked down.
    pub node_ttl: Duration,
    /// Addresses to dial instead of what members advertise.
    pub dial: DialMap,
    /// Where the web dashboard listens, when it is on.
    pub http_listen: Option<SocketAddr>,
    /// Where the Prometheus metrics endpoint listens, when it is on.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token a member started with `--join` sends to be added
    /// to a bootstrapped cluster (an operator's; `--token`/`HERD_TOKEN`,
    /// never read from the config file). None: it sends none.
    pub join_token: Option<String>,
    /// The defragmenting loop and the placement fallback.
    pub reschedule: crate::reschedule::config::Rescheduling,
    /// What one client may ask of this member (docs/security.md, "Limits").
    pub limits: herd_api::limits::Limits,
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {part:?} is not a member id"))?;
        if id == 0 {
            return Err("member id 0 is reserved".to_string());
        }
        check_host_port(addr.trim()).map_err(|e| format!("member {id}: {e}"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("member {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no members listed".to_string());
    }
    Ok(peers)
}

impl CoordinatorConfig {
    /// Validates settings into a configuration.
    pub fn resolve(settings: CoordinatorSettings) -> Result<Self, ConfigError> {
        let id = required(settings.id, "id", "a positive member id")?;
        if id == 0 {
            return Err(invalid("id", "member id 0 is reserved; use 1, 2, ..."));
        }
        let listen = required(settings.listen, "listen", "HOST:PORT")?;
        let (listen, advertise) =
            listen_and_advertise(&listen, settings.advertise, "other members")?;
        let data_dir = required(
            settings.data_dir,
            "data-dir",
            "a directory for the Raft log and state",
        )?;
        let bootstrap = settings.bootstrap.unwrap_or(false);
        let mode = match (bootstrap, settings.peers, settings.join) {
            (true, _, Some(_)) => return Err(invalid("join", "cannot be combined with bootstrap")),
            (true, None, None) => {
                return Err(invalid("peers", "bootstrap needs the initial members"))
            }
            (true, Some(peers), None) => {
                let peers = parse_peers(&peers).map_err(|e| invalid("peers", e))?;
                match peers.get(&id) {
                    None => {
                        return Err(invalid(
                            "peers",
                            format!(
                                "member {id} (this one) is not listed; list every initial member"
                            ),
                        ))
                    }
                    Some(addr) if *addr != advertise => {
                        return Err(invalid(
                            "peers",
                            format!("lists member {id} at {addr}, but it advertises {advertise}"),
                        ))
                    }
                    Some(_) => {}
                }
                StartMode::Bootstrap(peers)
            }
            (false, Some(_), _) => return Err(invalid("peers", "only used with bootstrap")),
            (false, None, Some(join)) => {
                check_host_port(&join).map_err(|e| invalid("join", e))?;
                StartMode::Join(join)
            }
            (false, None, None) => StartMode::Wait,
        };
        let raft = settings.raft.unwrap_or_default();
        raft.to_openraft()
            .map_err(|e| invalid("raft", e.to_string()))?;
        let node_ttl = match settings.node_ttl_ms {
            None => crate::leader::liveness::DEFAULT_NODE_TTL,
            Some(ms) if (500..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(invalid(
                    "node_ttl_ms",
                    format!("must be 500 to 3600000 (ms), got {ms}"),
                ))
            }
        };
        let dial = match settings.dial {
            None => DialMap::default(),
            Some(text) => {
                let map = parse_peers(&text).map_err(|e| invalid("dial", e))?;
                if map.contains_key(&id) {
                    return Err(invalid(
                        "dial",
                        format!("names member {id}, this one; list only other members"),
                    ));
                }
                DialMap::new(map)
            }
        };
        let http_listen = match settings.http_listen {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| invalid("http_listen", format!("{text:?} is not IP:PORT: {e}")))?,
            ),
        };
        let metrics_listen =
            match settings.metrics_listen {
                None => None,
                Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                    invalid("metrics-listen", format!("{text:?} is not IP:PORT: {e}"))
                })?),
            };
        Ok(Self {
            id,
            listen,
            advertise,
            data_dir,
            mode,
            raft,
            node_ttl,
            dial,
            http_listen,
            metrics_listen,
            join_token: None,
            limits: herd_api::limits::Limits::resolve(settings.limits)?,
            reschedule: crate::reschedule::config::resolve(
                settings.reschedule,
                settings.placement_fallback,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> CoordinatorSettings {
        CoordinatorSettings {
            id: Some(1),
            listen: Some("127.0.0.1:7001".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn file_parses_and_flags_override() {
        let text = "id = 2\nlisten = \"127.0.0.1:7002\"\ndata_dir = \"/var/lib/herd\"\nbootstrap = true\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002\"\n[raft]\nheartbeat_ms = 50\n";
        let file = CoordinatorSettings::from_toml(text, "c.toml").expect("parse");
        let config = CoordinatorConfig::resolve(file.clone()).expect("resolve");
        assert_eq!(config.id, 2);
        assert_eq!(config.raft.heartbeat_ms, 50);
        assert_eq!(
            config.raft.election_min_ms,
            RaftTuning::default().election_min_ms
        );
        assert!(matches!(config.mode, StartMode::Bootstrap(ref p) if p.len() == 2));
        let merged = file.overridden_by(CoordinatorSettings {
            data_dir: Some("/elsewhere".into()),
            ..Default::default()
        });
        assert_eq!(merged.data_dir, Some(PathBuf::from("/elsewhere")));
        assert_eq!(merged.id, Some(2));
    }

    #[test]
    fn file_errors_name_line_and_field() {
        let err = CoordinatorSettings::from_toml("id = 1\nlisen = \"x\"\n", "c.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("c.toml:2:"), "{text}");
        assert!(text.contains("lisen"), "{text}");
    }

    #[test]
    fn invalid_settings_are_refused_with_the_setting_named() {
        let cases = [
            (
                CoordinatorSettings {
                    id: Some(0),
                    ..base()
                },
                "id",
            ),
            (
                CoordinatorSettings {
                    listen: Some("nope".into()),
                    ..base()
                },
                "listen",
            ),
            (
                CoordinatorSettings {
                    listen: Some("0.0.0.0:7001".into()),
                    ..base()
                },
                "advertise",
            ),
            (
                CoordinatorSettings {
                    bootstrap: Some(true),
                    ..base()
                },
                "peers",
            ),
            (
                CoordinatorSettings {
                    bootstrap: Some(true),
                    peers: Some("2=127.0.0.1:7002".into()),
                    ..base()
                },
                "peers",
            ),
            (
                CoordinatorSettings {
                    bootstrap: Some(true),
                    peers: Some("1=127.0.0.1:9999".into()),
                    ..base()
                },
                "peers",
            ),
            (
                CoordinatorSettings {
                    bootstrap: Some(true),
                    peers: Some("1=127.0.0.1:7001".into()),
                    join: Some("a:1".into()),
                    ..base()
                },
                "join",
            ),
            (
                CoordinatorSettings {
                    data_dir: None,
                    ..base()
                },
                "data-dir",
            ),
        ];
        for (settings, field) in cases {
            match CoordinatorConfig::resolve(settings.clone()) {
                Err(ConfigError::Invalid { field: got, .. }) => {
                    assert_eq!(got, field, "{settings:?}")
                }
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        assert_eq!(
            CoordinatorConfig::resolve(base()).expect("plain").mode,
            StartMode::Wait
        );
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of block");
        let settings = CoordinatorSettings::from_toml(&doc[start..end], "docs/configuration.md")
            .expect("parse");
        let config = CoordinatorConfig::resolve(settings).expect("resolve");
        assert_eq!(config.id, 1);
        assert_eq!(
            config.raft,
            RaftTuning::default(),
            "the documented values are the defaults"
        );
    }

    #[test]
    fn dial_overrides_resolve_other_members_only() {
        let config = CoordinatorConfig::resolve(CoordinatorSettings {
            dial: Some("2=127.0.0.1:9002,3=10.0.0.3:7000".into()),
            ..base()
        })
        .expect("valid");
        assert_eq!(config.dial.resolve(2, "127.0.0.1:7002"), "127.0.0.1:9002");
        assert_eq!(config.dial.resolve(4, "127.0.0.1:7004"), "127.0.0.1:7004");
        for (bad, needle) in [("1=127.0.0.1:9001", "this one"), ("2=nope", "member 2")] {
            let err = CoordinatorConfig::resolve(CoordinatorSettings {
                dial: Some(bad.into()),
                ..base()
            })
            .expect_err(bad)
            .to_string();
            assert!(err.contains("dial") && err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn the_dashboard_is_off_unless_given_an_address() {
        assert_eq!(
            CoordinatorConfig::resolve(base())
                .expect("plain")
                .http_listen,
            None
        );
        let on = CoordinatorConfig::resolve(CoordinatorSettings {
            http_listen: Some("127.0.0.1:7180".into()),
            ..base()
        })
        .expect("valid");
        assert_eq!(
            on.http_listen,
            Some("127.0.0.1:7180".parse().expect("addr"))
        );
        let file = CoordinatorSettings::from_toml("http_listen = \"0.0.0.0:7180\"\n", "c.toml")
            .expect("parse");
        assert_eq!(file.http_listen.as_deref(), Some("0.0.0.0:7180"));
        for bad in ["localhost", "nope:80", "127.0.0.1"] {
            let err = CoordinatorConfig::resolve(CoordinatorSettings {
                http_listen: Some(bad.into()),
                ..base()
            })
            .expect_err(bad)
            .to_string();
            assert!(
                err.contains("http_listen") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn metrics_are_off_unless_given_an_address() {
        let plain = CoordinatorConfig::resolve(base()).expect("plain");
        assert_eq!(plain.metrics_listen, None);
        let file =
            CoordinatorSettings::from_toml("metrics_listen = \"127.0.0.1:9100\"\n", "c.toml")
                .expect("parse");
        let on = CoordinatorConfig::resolve(file.overridden_by(base())).expect("valid");
        assert_eq!(
            on.metrics_listen,
            Some("127.0.0.1:9100".parse().expect("addr"))
        );
        let err = CoordinatorConfig::resolve(CoordinatorSettings {
            metrics_listen: Some("localhost:9100".into()),
            ..base()
        })
        .expect_err("a host name")
        .to_string();
        assert!(
            err.contains("metrics-listen") && err.contains("localhost:9100"),
            "{err}"
        );
    }

    #[test]
    fn peers_parse_and_reject_garbage() {
        let peers = parse_peers("1=127.0.0.1:1, 2=host:2").expect("parse");
        assert_eq!(peers[&2], "host:2");
        for bad in ["", "1", "x=a:1", "1=a", "1=a:1,1=b:2", "0=a:1", "1=a:0"] {
            assert!(parse_peers(bad).is_err(), "{bad:?} accepted");
        }
    }
}
