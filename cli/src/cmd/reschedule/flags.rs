//! The coordinator's flags for its rescheduling loops (`herd coordinator
//! --reschedule-every 10m ...`): each overrides the same key of the config
//! file's `[reschedule]` or `[placement_fallback]` section.

use clap::Args;
use herd_coordinator::reschedule::config::{FallbackSettings, RescheduleSettings};

/// Flags of `herd coordinator` for the defragmenting loop and the placement
/// fallback.
#[derive(Args, Debug, Clone, Default)]
pub struct RescheduleFlags {
    /// Run the defragmenting loop on the leader this often (e.g. 10m; off
    /// when unset) [reschedule] every.
    #[arg(long)]
    pub reschedule_every: Option<String>,
    /// Move work only when the fragment rate is at least this (default
    /// 0.3) [reschedule] fr_threshold.
    #[arg(long)]
    pub reschedule_fr_threshold: Option<f64>,
    /// At most this many migrations per run (default 10).
    #[arg(long)]
    pub reschedule_max_migrations: Option<u64>,
    /// Planning time per run (default 1s).
    #[arg(long)]
    pub reschedule_deadline: Option<String>,
    /// At most this many migrations at once (default 2).
    #[arg(long)]
    pub reschedule_concurrency: Option<u64>,
    /// CPU of the shape to make room for: cores or millicores (default 16).
    #[arg(long)]
    pub reschedule_target_cpu: Option<String>,
    /// Memory of that shape, e.g. 4GiB (default: not counted).
    #[arg(long)]
    pub reschedule_target_memory: Option<String>,
    /// The exact solver's window for a pending high-priority job (default
    /// 1s; 0s turns the fallback off) [placement_fallback] window.
    #[arg(long)]
    pub placement_fallback_window: Option<String>,
    /// Let the placement fallback also move (never evict) movable work of
    /// the job's priority or higher.
    #[arg(long)]
    pub placement_fallback_move_any_priority: bool,
}

impl RescheduleFlags {
    /// `file`'s `[reschedule]` with these flags taking precedence.
    pub fn reschedule(&self, file: Option<RescheduleSettings>) -> Option<RescheduleSettings> {
        let flags = RescheduleSettings {
            every: self.reschedule_every.clone(),
            fr_threshold: self.reschedule_fr_threshold,
            max_migrations: self.reschedule_max_migrations,
            deadline: self.reschedule_deadline.clone(),
            concurrency: self.reschedule_concurrency,
            target_cpu: self.reschedule_target_cpu.clone(),
            target_memory: self.reschedule_target_memory.clone(),
            downtime_limit: None,
            bandwidth: None,
        };
        merged(file, flags, RescheduleSettings::overridden_by)
    }

    /// `file`'s `[placement_fallback]` with these flags taking precedence.
    pub fn fallback(&self, file: Option<FallbackSettings>) -> Option<FallbackSettings> {
        let flags = FallbackSettings {
            window: self.placement_fallback_window.clone(),
            move_any_priority: self.placement_fallback_move_any_priority.then_some(true),
            concurrency: None,
        };
        merged(file, flags, FallbackSettings::overridden_by)
    }
}

/// `file` overridden by `flags` key by key; None when neither sets a key.
fn merged<T: Default + PartialEq>(file: Option<T>, flags: T, merge: fn(T, T) -> T) -> Option<T> {
    match (file, flags == T::default()) {
        (file, true) => file,
        (file, false) => Some(merge(file.unwrap_or_default(), flags)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_key_by_key_and_nothing_stays_nothing() {
        let none = RescheduleFlags::default();
        assert_eq!(none.reschedule(None), None);
        assert_eq!(none.fallback(None), None);
        let file = RescheduleSettings {
            every: Some("10m".into()),
            fr_threshold: Some(0.5),
            ..Default::default()
        };
        let flags = RescheduleFlags {
            reschedule_fr_threshold: Some(0.1),
            placement_fallback_move_any_priority: true,
            ..Default::default()
        };
        let merged = flags.reschedule(Some(file)).expect("set");
        assert_eq!(merged.every.as_deref(), Some("10m"));
        assert_eq!(merged.fr_threshold, Some(0.1));
        assert_eq!(
            flags.fallback(None).and_then(|f| f.move_any_priority),
            Some(true)
        );
    }
}
