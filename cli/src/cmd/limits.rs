//! Flags of `[limits]`, shared by `herd coordinator` and the node agent:
//! each overrides the same key of the config file.

use clap::Args;
use herd_api::limits::LimitSettings;

/// What one client may ask of this server (docs/security.md, "Limits").
#[derive(Args, Debug, Clone, Default)]
pub struct LimitFlags {
    /// Requests per second one client (a token, else an IP address) may
    /// send; 0: no limit ([limits] requests_per_second; default 50000).
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<f64>,
    /// Requests one client may send at once after a quiet spell
    /// ([limits] burst; default two seconds' worth).
    #[arg(long, value_name = "N")]
    pub request_burst: Option<u64>,
    /// HTTP/2 streams one connection may have open at once; more wait
    /// ([limits] max_concurrent_streams; default 1024).
    #[arg(long, value_name = "N")]
    pub max_concurrent_streams: Option<u32>,
    /// Connections one IP address may hold open at once; 0: no cap
    /// ([limits] max_connections_per_ip; default 1024).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
}

impl LimitFlags {
    /// `file`'s `[limits]` with these flags taking precedence; None when
    /// neither sets anything.
    pub fn merge(&self, file: Option<LimitSettings>) -> Option<LimitSettings> {
        let flags = LimitSettings {
            requests_per_second: self.requests_per_second,
            burst: self.request_burst,
            max_concurrent_streams: self.max_concurrent_streams,
            max_connections_per_ip: self.max_connections_per_ip,
        };
        let merged = file.unwrap_or_default().overridden_by(flags);
        (!merged.is_empty()).then_some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = LimitSettings {
            requests_per_second: Some(5.0),
            max_concurrent_streams: Some(8),
            ..Default::default()
        };
        let flags = LimitFlags {
            requests_per_second: Some(7.0),
            request_burst: Some(3),
            ..Default::default()
        };
        let merged = flags.merge(Some(file)).expect("set");
        assert_eq!(merged.requests_per_second, Some(7.0));
        assert_eq!(merged.burst, Some(3));
        assert_eq!(merged.max_concurrent_streams, Some(8));
        assert_eq!(LimitFlags::default().merge(None), None);
    }
}
