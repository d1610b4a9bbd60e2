//! Reads an agent's GPU power figures from its Prometheus endpoint
//! (`herd node --metrics-listen`): one plain `GET /metrics` over HTTP/1.0
//! (so the answer is neither chunked nor kept alive) and the few gauges the
//! power checker needs. The endpoint is the agent's own, ordinary one; the
//! harness adds nothing to the agent to read it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::record::GpuSample;

/// Largest answer read: an agent's whole metrics page is a few tens of KiB.
const MAX_BYTES: u64 = 4 << 20;

/// Why a scrape gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connecting, sending or reading failed.
    #[error("{addr}: {source}")]
    Io {
        /// The endpoint.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No answer within the deadline.
    #[error("{addr}: no answer within {limit:?}")]
    Timeout {
        /// The endpoint.
        addr: String,
        /// The deadline.
        limit: Duration,
    },
    /// The answer was not `200 OK`.
    #[error("{addr}: answered {status:?}")]
    Status {
        /// The endpoint.
        addr: String,
        /// Its status line.
        status: String,
    },
}

/// An agent's power figures from one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Scraped {
    /// Each GPU's figures, by index.
    pub gpus: Vec<GpuSample>,
    /// Its share while it holds one.
    pub share_watts: Option<f64>,
}

/// The power figures of `GET /metrics` from `addr` within `limit`.
pub async fn scrape(addr: &str, limit: Duration) -> Result<Scraped, ScrapeError> {
    Ok(parse(&page(addr, limit).await?))
}

/// The whole metrics page of `addr` (its body), within `limit`.
pub async fn page(addr: &str, limit: Duration) -> Result<String, ScrapeError> {
    tokio::time::timeout(limit, fetch(addr))
        .await
        .map_err(|_| ScrapeError::Timeout {
            addr: addr.to_string(),
            limit,
        })?
}

/// The value of the unlabelled series `name` in a metrics page, if there.
pub fn value_of(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter_map(sample_line)
        .find(|(n, gpu, _)| *n == name && gpu.is_none())
        .map(|(_, _, v)| v)
}

async fn fetch(addr: &str) -> Result<String, ScrapeError> {
    let io = |source| ScrapeError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: herd-agent\r\n\r\n")
        .await
        .map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_BYTES)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ScrapeError::Status {
            addr: addr.to_string(),
            status: status.to_string(),
        });
    }
    Ok(body.to_string())
}

/// One sample line: `name{gpu="0"} 452.5` (labels other than `gpu` are
/// ignored; a line that does not parse is skipped).
fn sample_line(line: &str) -> Option<(&str, Option<u32>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, gpu) = match series.split_once('{') {
        Some((name, labels)) => {
            let gpu = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == "gpu")
                .and_then(|(_, v)| v.trim().trim_matches('"').parse().ok());
            (name, gpu)
        }
        None => (series, None),
    };
    Some((name.trim(), gpu, value))
}

/// The power figures in a metrics page (see docs/metrics.md for the names).
pub fn parse(body: &str) -> Scraped {
    let mut gpus: BTreeMap<u32, GpuSample> = BTreeMap::new();
    let mut share_watts = None;
    for (name, gpu, value) in body.lines().filter_map(sample_line) {
        if name == "herd_agent_power_share_watts" {
            share_watts = Some(value);
            continue;
        }
        let Some(index) = gpu else {
            continue;
        };
        let entry = gpus.entry(index).or_insert(GpuSample {
            index,
            draw_watts: 0.0,
            limit_watts: 0.0,
            min_watts: 0.0,
            max_watts: 0.0,
            capped: false,
        });
        match name {
            "herd_agent_gpu_power_draw_watts" => entry.draw_watts = value,
            "herd_agent_gpu_power_limit_watts" => entry.limit_watts = value,
            "herd_agent_gpu_power_limit_min_watts" => entry.min_watts = value,
            "herd_agent_gpu_power_limit_max_watts" => entry.max_watts = value,
            "herd_agent_gpu_power_capped" => entry.capped = value != 0.0,
            _ => {}
        }
    }
    Scraped {
        gpus: gpus.into_values().collect(),
        share_watts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_gauges_are_read_per_gpu() {
        let page = "# HELP herd_agent_gpu_power_draw_watts Power each GPU draws.\n\
            # TYPE herd_agent_gpu_power_draw_watts gauge\n\
            herd_agent_gpu_power_draw_watts{gpu=\"0\"} 452.5\n\
            herd_agent_gpu_power_draw_watts{gpu=\"1\"} 700\n\
            herd_agent_gpu_power_limit_watts{gpu=\"0\"} 500\n\
            herd_agent_gpu_power_limit_watts{gpu=\"1\"} 700\n\
            herd_agent_gpu_power_limit_min_watts{gpu=\"0\"} 200\n\
            herd_agent_gpu_power_limit_min_watts{gpu=\"1\"} 200\n\
            herd_agent_gpu_power_limit_max_watts{gpu=\"0\"} 700\n\
            herd_agent_gpu_power_limit_max_watts{gpu=\"1\"} 700\n\
            herd_agent_gpu_power_capped{gpu=\"0\"} 1\n\
            herd_agent_gpu_power_capped{gpu=\"1\"} 0\n\
            herd_agent_power_share_watts 2153.8\n\
            herd_agent_allocations_running{driver=\"exec\"} 2\n\
            garbage line\n";
        let scraped = parse(page);
        assert_eq!(scraped.share_watts, Some(2153.8));
        assert_eq!(scraped.gpus.len(), 2);
        let g0 = &scraped.gpus[0];
        assert_eq!(
            (
                g0.index,
                g0.draw_watts,
                g0.limit_watts,
                g0.min_watts,
                g0.max_watts,
                g0.capped
            ),
            (0, 452.5, 500.0, 200.0, 700.0, true)
        );
        assert!(!scraped.gpus[1].capped);
        assert_eq!(value_of(page, "herd_agent_power_share_watts"), Some(2153.8));
        assert_eq!(value_of(page, "herd_agent_gpu_power_draw_watts"), None);
        let empty = parse("herd_agent_coordinator_connected 1\n");
        assert!(empty.gpus.is_empty() && empty.share_watts.is_none());
    }
}
