//! The `[limits]` of coordinators and node agents: how fast one client may
//! send requests, how many streams one connection may open, how many
//! connections one address may hold. As written in a config file or given
//! as flags ([`LimitSettings`]), and resolved with defaults ([`Limits`]).
//!
//! The defaults never throttle a test suite or `herd bench raft`, whose
//! clients all come from one address; they are a backstop against a
//! runaway client, and meant to be tightened per deployment
//! (docs/security.md, "Limits").

use serde::{Deserialize, Serialize};

use crate::config_file::{invalid, ConfigError};

/// Requests per second one client (a token, else an IP address) may send to
/// one server by default. Above the rate the whole `herd bench raft` run
/// reaches against one member from one address on the reference machine.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 50_000.0;
/// How many requests above the rate one client may send at once, by
/// default: two seconds' worth.
pub const DEFAULT_BURST_SECONDS: f64 = 2.0;
/// HTTP/2 streams one connection may have open at once (gRPC calls,
/// watches included), by default; more wait for a free one.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Connections one IP address may hold open to one server at once, by
/// default (every CLI run, agent and test client on a host counts).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 1024;
/// The most any rate or count setting may be.
const MAX_SETTING: f64 = 1e9;

/// `[limits]` as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per second one client may send (0 turns the limit off).
    pub requests_per_second: Option<f64>,
    /// Requests one client may send at once after a quiet spell
    /// (default: two seconds' worth).
    pub burst: Option<u64>,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: Option<u32>,
    /// Connections one IP address may hold open at once (0 turns it off).
    pub max_connections_per_ip: Option<u32>,
}

impl LimitSettings {
    /// These settings with every key `overrides` sets taking precedence.
    pub fn overridden_by(self, overrides: Self) -> Self {
        Self {
            requests_per_second: overrides.requests_per_second.or(self.requests_per_second),
            burst: overrides.burst.or(self.burst),
            max_concurrent_streams: overrides
                .max_concurrent_streams
                .or(self.max_concurrent_streams),
            max_connections_per_ip: overrides
                .max_connections_per_ip
                .or(self.max_connections_per_ip),
        }
    }

    /// Whether no key is set (flags that add nothing).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The per-client request rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    /// Requests per second, on average (> 0).
    pub per_second: f64,
    /// Requests at once (>= 1).
    pub burst: f64,
}

/// Resolved limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Each client's request rate; None: not limited.
    pub rate: Option<RequestRate>,
    /// HTTP/2 streams per connection (>= 1).
    pub max_concurrent_streams: u32,
    /// Connections per IP address; None: not limited.
    pub max_connections_per_ip: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: Some(RequestRate {
                per_second: DEFAULT_REQUESTS_PER_SECOND,
                burst: DEFAULT_REQUESTS_PER_SECOND * DEFAULT_BURST_SECONDS,
            }),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections_per_ip: Some(DEFAULT_MAX_CONNECTIONS_PER_IP),
        }
    }
}

impl Limits {
    /// Validates `[limits]`; errors name the key (`limits.burst`, ...).
    pub fn resolve(settings: Option<LimitSettings>) -> Result<Self, ConfigError> {
        let settings = settings.unwrap_or_default();
        let per_second = settings
            .requests_per_second
            .unwrap_or(DEFAULT_REQUESTS_PER_SECOND);
        if !per_second.is_finite() || !(0.0..=MAX_SETTING).contains(&per_second) {
            return Err(invalid(
                "limits.requests_per_second",
                format!("must be 0 (off) to {MAX_SETTING}, got {per_second}"),
            ));
        }
        let rate = if per_second == 0.0 {
            if settings.burst.is_some() {
                return Err(invalid(
                    "limits.burst",
                    "has no effect with requests_per_second = 0 (no rate limit); leave it out",
                ));
            }
            None
        } else {
            let burst = match settings.burst {
                None => (per_second * DEFAULT_BURST_SECONDS).max(1.0),
                Some(0) => {
                    return Err(invalid(
                        "limits.burst",
                        "must be at least 1 (every request takes one token)",
                    ))
                }
                Some(b) if b as f64 > MAX_SETTING => {
                    return Err(invalid(
                        "limits.burst",
                        format!("must be at most {MAX_SETTING}, got {b}"),
                    ))
                }
                Some(b) => b as f64,
            };
            Some(RequestRate { per_second, burst })
        };
        let max_concurrent_streams = match settings.max_concurrent_streams {
            None => DEFAULT_MAX_CONCURRENT_STREAMS,
            Some(0) => {
                return Err(invalid(
                    "limits.max_concurrent_streams",
                    "must be at least 1, or no call could be made",
                ))
            }
            Some(n) => n,
        };
        let max_connections_per_ip = match settings.max_connections_per_ip {
            None => Some(DEFAULT_MAX_CONNECTIONS_PER_IP),
            Some(0) => None,
            Some(n) => Some(n),
        };
        Ok(Self {
            rate,
            max_concurrent_streams,
            max_connections_per_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;
    use crate::client::{may_try_elsewhere, Repeat};
    use crate::retry::{ErrorMarks, Reason};

    #[test]
    fn defaults_apply_and_keys_resolve() {
        assert_eq!(Limits::resolve(None).expect("defaults"), Limits::default());
        let limits = Limits::resolve(Some(LimitSettings {
            requests_per_second: Some(10.0),
            max_concurrent_streams: Some(4),
            max_connections_per_ip: Some(0),
            ..Default::default()
        }))
        .expect("valid");
        assert_eq!(
            limits.rate,
            Some(RequestRate {
                per_second: 10.0,
                burst: 20.0
            })
        );
        assert_eq!(limits.max_concurrent_streams, 4);
        assert_eq!(limits.max_connections_per_ip, None);
        let off = Limits::resolve(Some(LimitSettings {
            requests_per_second: Some(0.0),
            ..Default::default()
        }))
        .expect("off");
        assert_eq!(off.rate, None);
        let slow = Limits::resolve(Some(LimitSettings {
            requests_per_second: Some(0.1),
            ..Default::default()
        }))
        .expect("slow");
        assert_eq!(
            slow.rate.map(|r| r.burst),
            Some(1.0),
            "at least one request"
        );
    }

    #[test]
    fn bad_limits_name_the_key() {
        let cases = [
            (
                LimitSettings {
                    requests_per_second: Some(-1.0),
                    ..Default::default()
                },
                "limits.requests_per_second",
            ),
            (
                LimitSettings {
                    requests_per_second: Some(f64::NAN),
                    ..Default::default()
                },
                "limits.requests_per_second",
            ),
            (
                LimitSettings {
                    burst: Some(0),
                    ..Default::default()
                },
                "limits.burst",
            ),
            (
                LimitSettings {
                    requests_per_second: Some(0.0),
                    burst: Some(5),
                    ..Default::default()
                },
                "limits.burst",
            ),
            (
                LimitSettings {
                    max_concurrent_streams: Some(0),
                    ..Default::default()
                },
                "limits.max_concurrent_streams",
            ),
        ];
        for (settings, key) in cases {
            let err = Limits::resolve(Some(settings.clone())).expect_err("invalid");
            assert!(err.to_string().contains(key), "{settings:?}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = LimitSettings {
            requests_per_second: Some(5.0),
            burst: Some(7),
            ..Default::default()
        };
        let merged = file.overridden_by(LimitSettings {
            burst: Some(9),
            ..Default::default()
        });
        assert_eq!(merged.requests_per_second, Some(5.0));
        assert_eq!(merged.burst, Some(9));
        assert!(LimitSettings::default().is_empty());
    }

    #[test]
    fn the_table_parses_from_toml_and_unknown_keys_are_refused() {
        let parsed: LimitSettings =
            toml::from_str("requests_per_second = 5\nburst = 3\nmax_connections_per_ip = 0\n")
                .expect("parse");
        assert_eq!(parsed.requests_per_second, Some(5.0));
        assert_eq!(parsed.burst, Some(3));
        let err = toml::from_str::<LimitSettings>("request_per_second = 5\n").expect_err("typo");
        assert!(err.to_string().contains("request_per_second"), "{err}");
    }

    /// A client told to slow down must not send the same request to
    /// another member as if this one were unavailable: that would multiply
    /// the load it was asked to shed.
    #[test]
    fn resource_exhausted_is_never_tried_elsewhere() {
        let plain = Status::resource_exhausted("rate limit");
        let marked = ErrorMarks {
            reason: Some(Reason::Rejected),
            not_applied: true,
            leader: None,
        }
        .on(Status::resource_exhausted("rate limit"));
        for status in [plain, marked] {
            assert_eq!(status.code(), Code::ResourceExhausted);
            for repeat in [Repeat::Safe, Repeat::Unsafe] {
                assert!(!may_try_elsewhere(&status, repeat), "{status:?} {repeat:?}");
            }
        }
    }
}
