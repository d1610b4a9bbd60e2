//! The coordinator's settings for its rescheduling loops: `[reschedule]`
//! (the defragmenting loop, off unless `every` is set) and
//! `[placement_fallback]` (the exact solver's window for high-priority jobs
//! left pending), as the config file and flags give them, and resolved.

use std::time::Duration;

use herd_api::config_file::{invalid, ConfigError};
use herd_api::duration::parse_duration;
use herd_api::resources::parse_memory;
use serde::{Deserialize, Serialize};

use super::plan::{LiveSolver, MAX_DEADLINE, MAX_MIGRATIONS};

/// Shortest period of the defragmenting loop: each run plans for up to its
/// deadline and follows its migrations, so a shorter one only queues.
pub const MIN_EVERY: Duration = Duration::from_millis(500);
/// Most migrations the loop runs at once.
pub const MAX_CONCURRENCY: usize = 64;
/// Each move's longest pause unless configured: `Migrations.Start`'s own
/// default for a request that sets none.
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// Smallest transfer cap per move: below it a moving VM that dirties memory
/// at an ordinary rate would never converge.
pub const MIN_BANDWIDTH_BYTES_PER_SEC: u64 = 1 << 20;
/// Longest window the placement fallback may be given.
pub const MAX_FALLBACK_WINDOW: Duration = Duration::from_secs(60);

/// `[reschedule]` as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescheduleSettings {
    /// How often the leader looks (`"10m"`); unset: the loop is off.
    pub every: Option<String>,
    /// Runs move work only when the fragment rate is at least this (0 to 1).
    pub fr_threshold: Option<f64>,
    /// At most this many migrations per run.
    pub max_migrations: Option<u64>,
    /// Planning time per run (`"1s"`).
    pub deadline: Option<String>,
    /// At most this many migrations at once.
    pub concurrency: Option<u64>,
    /// CPU of the shape to make room for: cores (`"16"`, `"0.5"`) or
    /// millicores (`"500m"`).
    pub target_cpu: Option<String>,
    /// Memory of that shape (`"4GiB"`); unset: not counted.
    pub target_memory: Option<String>,
    /// The longest pause of each moved workload (`"300ms"`).
    pub downtime_limit: Option<String>,
    /// A cap on each move's transfer rate, per second (`"64MiB"`), so that
    /// defragmenting in the background does not crowd out the workloads'
    /// own traffic; unset: no cap.
    pub bandwidth: Option<String>,
}

impl RescheduleSettings {
    /// These settings with every key `overrides` sets taking precedence.
    pub fn overridden_by(self, overrides: Self) -> Self {
        Self {
            every: overrides.every.or(self.every),
            fr_threshold: overrides.fr_threshold.or(self.fr_threshold),
            max_migrations: overrides.max_migrations.or(self.max_migrations),
            deadline: overrides.deadline.or(self.deadline),
            concurrency: overrides.concurrency.or(self.concurrency),
            target_cpu: overrides.target_cpu.or(self.target_cpu),
            target_memory: overrides.target_memory.or(self.target_memory),
            downtime_limit: overrides.downtime_limit.or(self.downtime_limit),
            bandwidth: overrides.bandwidth.or(self.bandwidth),
        }
    }
}

/// `[placement_fallback]` as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSettings {
    /// The exact solver's time per pending job (`"1s"`); `"0s"` turns the
    /// fallback off.
    pub window: Option<String>,
    /// Also move (live, never evict) movable work of the job's priority or
    /// higher; by default only lower-priority work is touched.
    pub move_any_priority: Option<bool>,
    /// At most this many migrations at once while making room.
    pub concurrency: Option<u64>,
}

impl FallbackSettings {
    /// These settings with every key `overrides` sets taking precedence.
    pub fn overridden_by(self, overrides: Self) -> Self {
        Self {
            window: overrides.window.or(self.window),
            move_any_priority: overrides.move_any_priority.or(self.move_any_priority),
            concurrency: overrides.concurrency.or(self.concurrency),
        }
    }
}

/// The defragmenting loop, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// Period between runs (the first comes one period after a member
    /// starts leading).
    pub every: Duration,
    /// Moves are made only when the fragment rate is at least this.
    pub fr_threshold: f64,
    /// At most this many migrations per run.
    pub max_migrations: usize,
    /// Planning time per run.
    pub deadline: Duration,
    /// At most this many migrations at once.
    pub concurrency: usize,
    /// The target shape's CPU, millicores.
    pub target_cpu_millis: u64,
    /// The target shape's memory, bytes (0: not counted).
    pub target_memory_bytes: u64,
    /// Each move's longest pause, ms.
    pub downtime_limit_ms: u64,
    /// Each move's transfer cap, bytes per second; None: uncapped.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// The planner.
    pub solver: LiveSolver,
}

/// The placement fallback, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackConfig {
    /// The exact solver's time per pending job; zero: off.
    pub window: Duration,
    /// Whether movable work of the job's priority or higher may be moved
    /// too.
    pub move_any_priority: bool,
    /// At most this many migrations at once.
    pub concurrency: usize,
}

impl Default for FallbackConfig {
    /// On, with a one-second window, touching lower-priority work only.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            move_any_priority: false,
            concurrency: 2,
        }
    }
}

impl FallbackConfig {
    /// Whether the fallback runs at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Off (the deterministic simulation: a solver's time limit is
    /// wall-clock).
    pub fn off() -> Self {
        Self {
            window: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// Both loops' configuration, as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rescheduling {
    /// The defragmenting loop; None: off (the default).
    pub auto: Option<LoopConfig>,
    /// The placement fallback.
    pub fallback: FallbackConfig,
}

impl Rescheduling {
    /// Both loops off.
    pub fn off() -> Self {
        Self {
            auto: None,
            fallback: FallbackConfig::off(),
        }
    }
}

/// Parses a CPU amount as cores (`2`, `0.5`) or millicores (`500m`), more
/// than 0.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>()
            .map_err(|_| format!("invalid CPU {text:?}: expected e.g. 16, 0.5 or 500m"))?
    } else {
        let cores: f64 = t
            .parse()
            .map_err(|_| format!("invalid CPU {text:?}: expected e.g. 16, 0.5 or 500m"))?;
        if !cores.is_finite() || !(0.0..=1_000_000.0).contains(&cores) {
            return Err(format!("invalid CPU {text:?}: 0 to 1000000 cores"));
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(format!("invalid CPU {text:?}: more than 0 needed"));
    }
    Ok(millis)
}

fn duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|e| invalid(field, e))
}

fn in_range(field: &'static str, value: u64, low: u64, high: u64) -> Result<u64, ConfigError> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be {low} to {high}, got {value}"),
        ))
    }
}

/// Resolves `[reschedule]` and `[placement_fallback]`; the errors name the
/// key (`reschedule.every`, ...).
pub fn resolve(
    reschedule: Option<RescheduleSettings>,
    fallback: Option<FallbackSettings>,
) -> Result<Rescheduling, ConfigError> {
    let r = reschedule.unwrap_or_default();
    let auto = match &r.every {
        None => {
            // Settings without a period would silently do nothing.
            if r != RescheduleSettings::default() {
                return Err(invalid(
                    "reschedule.every",
                    "required to turn the loop on when other [reschedule] keys are set (e.g. \"10m\")",
                ));
            }
            None
        }
        Some(text) => {
            let every = duration("reschedule.every", text)?;
            if every < MIN_EVERY {
                return Err(invalid(
                    "reschedule.every",
                    format!(
                        "at least {} ms, got {} ms",
                        MIN_EVERY.as_millis(),
                        every.as_millis()
                    ),
                ));
            }
            let fr_threshold = r.fr_threshold.unwrap_or(0.3);
            if !(0.0..=1.0).contains(&fr_threshold) {
                return Err(invalid(
                    "reschedule.fr_threshold",
                    format!("a fragment rate, 0 to 1, got {fr_threshold}"),
                ));
            }
            let max_migrations = in_range(
                "reschedule.max_migrations",
                r.max_migrations.unwrap_or(10),
                1,
                MAX_MIGRATIONS as u64,
            )?;
            let deadline = match &r.deadline {
                None => Duration::from_secs(1),
                Some(text) => duration("reschedule.deadline", text)?,
            };
            if deadline.is_zero() || deadline > MAX_DEADLINE {
                return Err(invalid(
                    "reschedule.deadline",
                    format!(
                        "1 ms to {} s, got {} ms",
                        MAX_DEADLINE.as_secs(),
                        deadline.as_millis()
                    ),
                ));
            }
            let concurrency = in_range(
                "reschedule.concurrency",
                r.concurrency.unwrap_or(2),
                1,
                MAX_CONCURRENCY as u64,
            )?;
            let target_cpu_millis = match &r.target_cpu {
                None => 16_000,
                Some(text) => parse_cpu(text).map_err(|e| invalid("reschedule.target_cpu", e))?,
            };
            let target_memory_bytes = match &r.target_memory {
                None => 0,
                Some(text) => {
                    parse_memory(text).map_err(|e| invalid("reschedule.target_memory", e))?
                }
            };
            let downtime_limit_ms = match &r.downtime_limit {
                None => DEFAULT_DOWNTIME_LIMIT_MS,
                Some(text) => {
                    let d = duration("reschedule.downtime_limit", text)?;
                    in_range(
                        "reschedule.downtime_limit",
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                        1,
                        crate::machine::apply::migration::MAX_DOWNTIME_LIMIT_MS,
                    )?
                }
            };
            let bandwidth_bytes_per_sec = match &r.bandwidth {
                None => None,
                Some(text) => {
                    let bytes =
                        parse_memory(text).map_err(|e| invalid("reschedule.bandwidth", e))?;
                    if bytes < MIN_BANDWIDTH_BYTES_PER_SEC {
                        return Err(invalid(
                            "reschedule.bandwidth",
                            format!("at least 1MiB (per second), got {bytes} bytes"),
                        ));
                    }
                    Some(bytes)
                }
            };
            Some(LoopConfig {
                every,
                fr_threshold,
                max_migrations: max_migrations as usize,
                deadline,
                concurrency: concurrency as usize,
                target_cpu_millis,
                target_memory_bytes,
                downtime_limit_ms,
                bandwidth_bytes_per_sec,
                solver: LiveSolver::Herd,
            })
        }
    };
    let f = fallback.unwrap_or_default();
    let defaults = FallbackConfig::default();
    let window = match &f.window {
        None => defaults.window,
        Some(text) => duration("placement_fallback.window", text)?,
    };
    if window > MAX_FALLBACK_WINDOW {
        return Err(invalid(
            "placement_fallback.window",
            format!(
                "at most {} s (0s turns the fallback off), got {} ms",
                MAX_FALLBACK_WINDOW.as_secs(),
                window.as_millis()
            ),
        ));
    }
    let concurrency = in_range(
        "placement_fallback.concurrency",
        f.concurrency.unwrap_or(defaults.concurrency as u64),
        1,
        MAX_CONCURRENCY as u64,
    )?;
    Ok(Rescheduling {
        auto,
        fallback: FallbackConfig {
            window,
            move_any_priority: f.move_any_priority.unwrap_or(false),
            concurrency: concurrency as usize,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("not a setting error: {other}"),
        }
    }

    #[test]
    fn the_loop_is_off_by_default_and_the_fallback_on() {
        let resolved = resolve(None, None).expect("defaults");
        assert_eq!(resolved.auto, None);
        assert_eq!(resolved.fallback, FallbackConfig::default());
        assert!(resolved.fallback.enabled());
        assert!(!Rescheduling::off().fallback.enabled());
    }

    #[test]
    fn a_period_turns_the_loop_on_with_defaults_for_the_rest() {
        let resolved = resolve(
            Some(RescheduleSettings {
                every: Some("10m".into()),
                target_cpu: Some("500m".into()),
                ..Default::default()
            }),
            Some(FallbackSettings {
                window: Some("0s".into()),
                ..Default::default()
            }),
        )
        .expect("valid");
        let auto = resolved.auto.expect("on");
        assert_eq!(auto.every, Duration::from_secs(600));
        assert_eq!(auto.fr_threshold, 0.3);
        assert_eq!(auto.target_cpu_millis, 500);
        assert_eq!(auto.max_migrations, 10);
        assert_eq!(auto.concurrency, 2);
        assert_eq!(auto.bandwidth_bytes_per_sec, None);
        assert!(!resolved.fallback.enabled());
        let capped = resolve(
            Some(RescheduleSettings {
                every: Some("10m".into()),
                bandwidth: Some("64MiB".into()),
                ..Default::default()
            }),
            None,
        )
        .expect("valid");
        assert_eq!(
            capped.auto.expect("on").bandwidth_bytes_per_sec,
            Some(64 << 20)
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let on = |r: RescheduleSettings| RescheduleSettings {
            every: r.every.or(Some("1m".into())),
            ..r
        };
        let cases = [
            (
                RescheduleSettings {
                    fr_threshold: Some(0.2),
                    ..Default::default()
                },
                "reschedule.every",
            ),
            (
                on(RescheduleSettings {
                    every: Some("10ms".into()),
                    ..Default::default()
                }),
                "reschedule.every",
            ),
            (
                on(RescheduleSettings {
                    every: Some("soon".into()),
                    ..Default::default()
                }),
                "reschedule.every",
            ),
            (
                on(RescheduleSettings {
                    fr_threshold: Some(1.5),
                    ..Default::default()
                }),
                "reschedule.fr_threshold",
            ),
            (
                on(RescheduleSettings {
                    max_migrations: Some(0),
                    ..Default::default()
                }),
                "reschedule.max_migrations",
            ),
            (
                on(RescheduleSettings {
                    deadline: Some("2m".into()),
                    ..Default::default()
                }),
                "reschedule.deadline",
            ),
            (
                on(RescheduleSettings {
                    concurrency: Some(0),
                    ..Default::default()
                }),
                "reschedule.concurrency",
            ),
            (
                on(RescheduleSettings {
                    target_cpu: Some("0".into()),
                    ..Default::default()
                }),
                "reschedule.target_cpu",
            ),
            (
                on(RescheduleSettings {
                    target_memory: Some("lots".into()),
                    ..Default::default()
                }),
                "reschedule.target_memory",
            ),
            (
                on(RescheduleSettings {
                    bandwidth: Some("fast".into()),
                    ..Default::default()
                }),
                "reschedule.bandwidth",
            ),
            (
                on(RescheduleSettings {
                    bandwidth: Some("10KiB".into()),
                    ..Default::default()
                }),
                "reschedule.bandwidth",
            ),
        ];
        for (settings, field) in cases {
            let got = resolve(Some(settings.clone()), None).expect_err(field);
            assert_eq!(field_of(got), field, "{settings:?}");
        }
        let long = FallbackSettings {
            window: Some("5m".into()),
            ..Default::default()
        };
        assert_eq!(
            field_of(resolve(None, Some(long)).expect_err("too long")),
            "placement_fallback.window"
        );
    }

    #[test]
    fn cpu_amounts_parse_as_cores_or_millicores() {
        assert_eq!(parse_cpu("16"), Ok(16_000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("250m"), Ok(250));
        for bad in ["", "0", "0m", "x", "-1", "1e9"] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = RescheduleSettings {
            every: Some("10m".into()),
            fr_threshold: Some(0.4),
            ..Default::default()
        };
        let flags = RescheduleSettings {
            fr_threshold: Some(0.1),
            ..Default::default()
        };
        let merged = file.overridden_by(flags);
        assert_eq!(merged.every.as_deref(), Some("10m"));
        assert_eq!(merged.fr_threshold, Some(0.1));
    }
}
