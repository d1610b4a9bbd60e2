//! `herd service status SERVICE` and `herd service scale SERVICE N`:
//! inference services (jobs whose driver is `inference`), their instances'
//! load and latency percentiles, and their instance count (see
//! docs/inference.md, *Autoscaling*).

use clap::Subcommand;
use herd_api::client::Repeat;
use herd_api::proto::v1::services_client::ServicesClient;
use herd_api::proto::v1::{ScaleServiceRequest, ServiceStatusRequest};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd service`.
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Instances, load, p50/p99 TTFT and time between tokens (over the
    /// engines' last 10 s), and recent scaling events.
    Status {
        /// The service (job name).
        service: String,
    },
    /// Set the number of instances (within `[autoscale]` min..=max when
    /// the service has one; the autoscaler may change it again later).
    Scale {
        /// The service (job name).
        service: String,
        /// Instances wanted.
        count: u32,
    },
}

/// A failure from the coordinators, with an unknown service as bad input
/// (exit 2) like a malformed request.
fn input_if_not_found(e: herd_api::client::ClientError) -> CliError {
    match e.code() {
        Some(tonic::Code::NotFound) => CliError::input(e),
        _ => CliError::from(e),
    }
}

fn ms(value: f64) -> String {
    if value > 0.0 {
        format!("{value:.0}")
    } else {
        "-".to_string()
    }
}

/// Runs a `herd service` subcommand.
pub async fn run(ctx: &Context, command: ServiceCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        ServiceCommand::Status { service } => {
            let request = ServiceStatusRequest { name: service };
            let status = client
                .call_as(Repeat::Safe, |ch| {
                    let request = request.clone();
                    async move {
                        ServicesClient::new(ch)
                            .status(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await
                .map_err(input_if_not_found)?;
            if ctx.json() {
                let instances: Vec<_> = status
                    .instances
                    .iter()
                    .map(|i| {
                        json!({"alloc_id": i.alloc_id, "node": i.node, "status": i.status,
                               "has_stats": i.has_stats, "load": i.load,
                               "batch_size": i.batch_size, "queue_len": i.queue_len,
                               "draining": i.draining, "ttft_p50_ms": i.ttft_p50_ms,
                               "ttft_p99_ms": i.ttft_p99_ms, "tbt_p50_ms": i.tbt_p50_ms,
                               "tbt_p99_ms": i.tbt_p99_ms, "completed_total": i.completed_total})
                    })
                    .collect();
                let events: Vec<_> = status
                    .events
                    .iter()
                    .map(|e| {
                        json!({"at_ms": e.at_ms, "from": e.from, "to": e.to,
                               "source": e.source, "reason": e.reason})
                    })
                    .collect();
                let autoscale = (status.max > 0).then(|| {
                    json!({"min": status.min, "max": status.max,
                           "target_load": status.target_load,
                           "ttft_p99_ms": (status.slo_ttft_p99_ms > 0).then_some(status.slo_ttft_p99_ms),
                           "tbt_p99_ms": (status.slo_tbt_p99_ms > 0).then_some(status.slo_tbt_p99_ms)})
                });
                print_json(&json!({
                    "name": status.name,
                    "count": status.count,
                    "autoscale": autoscale,
                    "instances": instances,
                    "load": status.load,
                    "ttft_p50_ms": status.ttft_p50_ms,
                    "ttft_p99_ms": status.ttft_p99_ms,
                    "tbt_p50_ms": status.tbt_p50_ms,
                    "tbt_p99_ms": status.tbt_p99_ms,
                    "events": events,
                }));
                return Ok(());
            }
            let range = if status.max > 0 {
                format!(" (autoscaled {}..={})", status.min, status.max)
            } else {
                String::new()
            };
            println!(
                "service {}: {} instances wanted{range}, {} listed; load {:.2}",
                status.name,
                status.count,
                status.instances.len(),
                status.load
            );
            println!(
                "TTFT p50 {} ms, p99 {} ms; time between tokens p50 {} ms, p99 {} ms (last 10 s)",
                ms(status.ttft_p50_ms),
                ms(status.ttft_p99_ms),
                ms(status.tbt_p50_ms),
                ms(status.tbt_p99_ms)
            );
            let rows: Vec<Vec<String>> = status
                .instances
                .iter()
                .map(|i| {
                    let state = if i.draining {
                        "draining".to_string()
                    } else {
                        i.status.clone()
                    };
                    vec![
                        i.alloc_id.clone(),
                        i.node.clone(),
                        state,
                        if i.has_stats {
                            format!("{:.2}", i.load)
                        } else {
                            "-".into()
                        },
                        format!("{}/{}", i.batch_size, i.queue_len),
                        ms(i.ttft_p50_ms),
                        ms(i.ttft_p99_ms),
                        ms(i.tbt_p99_ms),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ALLOC",
                    "NODE",
                    "STATUS",
                    "LOAD",
                    "BATCH/QUEUE",
                    "TTFT_P50",
                    "TTFT_P99",
                    "TBT_P99",
                ],
                &rows,
            );
            if !status.events.is_empty() {
                println!("scaling events (newest last):");
                let rows: Vec<Vec<String>> = status
                    .events
                    .iter()
                    .map(|e| {
                        vec![
                            format_time(e.at_ms),
                            format!("{} -> {}", e.from, e.to),
                            e.source.clone(),
                            e.reason.clone(),
                        ]
                    })
                    .collect();
                print_table(&["AT", "CHANGE", "BY", "WHY"], &rows);
            }
        }
        ServiceCommand::Scale { service, count } => {
            if count == 0 {
                return Err(CliError::input(
                    "COUNT: must be at least 1 (`herd job stop` stops a service)",
                ));
            }
            let request = ScaleServiceRequest {
                name: service.clone(),
                count,
            };
            // Setting the same count twice is one change.
            let reply = client
                .call_as(Repeat::Safe, |ch| {
                    let request = request.clone();
                    async move {
                        ServicesClient::new(ch)
                            .scale(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await
                .map_err(input_if_not_found)?;
            if ctx.json() {
                print_json(
                    &json!({"service": service, "from": reply.from, "to": reply.to,
                                   "log_index": reply.log_index}),
                );
            } else if reply.from == reply.to {
                println!("service {service}: already {} instances", reply.to);
            } else {
                println!(
                    "service {service}: {} -> {} instances",
                    reply.from, reply.to
                );
            }
        }
    }
    Ok(())
}
