//! What an agent runs on besides its configuration: the drivers it offers
//! and the transport to its coordinators.
//!
//! A real host gets [`Wiring::host`]: every driver, over the operating
//! system's TCP. The deterministic simulation (`chaos/sim`) passes its
//! own SIMULATED drivers and network instead, so that the agent's actors,
//! link and supervision run there as the same code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use herd_actors::driver::dljob::DljobDriver;
use herd_actors::driver::exec::standby::Standby;
use herd_actors::driver::exec::ExecDriver;
use herd_actors::driver::inference::InferenceDriver;
use herd_actors::driver::live::MigrationHost;
use herd_actors::driver::simvm::SimVmDriver;
use herd_actors::driver::vm::tls::MigrationTls;
use herd_actors::driver::vm::VmDriver;
use herd_actors::driver::{Confinement, Driver};
use herd_api::client::Connector;

/// The drivers and transport of one agent; cloned into every restart of
/// its actors.
#[derive(Clone)]
pub struct Wiring {
    /// The drivers, keyed by the name job specs use.
    pub drivers: HashMap<String, Arc<dyn Driver>>,
    /// How to reach the coordinators, and other agents for migrations;
    /// `None`: TCP.
    pub connector: Option<Connector>,
}

impl Wiring {
    /// Every driver herd has, over TCP. `executor` is the herd binary: the
    /// exec driver's supervisor and the other drivers' helper.
    pub fn host(executor: &Path) -> Self {
        Self::host_confined(
            executor,
            None,
            &Confinement::default(),
            &MigrationHost::default(),
        )
    }

    /// Every driver herd has, over TCP, confined by the node's policy
    /// (`exec_user`, `allow_paths`, `vm_devices`; see
    /// `herd_actors::driver::confine`), the VMs' incoming migrations
    /// listening on `migration_host` (the node's `migration_host`), their
    /// streams (QEMU's and the simulated VMs') under TLS with the node's
    /// certificate when the process runs
    /// with TLS (`herd_api::tls::transport`, installed from `--tls-*`
    /// before the agent starts): what [`crate::start`] uses. With `allocs`
    /// (the agent's allocation root) the drivers share one executor kept
    /// waiting (`herd_actors::driver::exec::standby`), so that a workload's
    /// start, a move's target above all, does not wait for the binary to
    /// start.
    pub fn host_confined(
        executor: &Path,
        allocs: Option<&Path>,
        confinement: &Confinement,
        migration_host: &MigrationHost,
    ) -> Self {
        herd_actors::driver::vm::qemu::probe_sandbox_in_background();
        let standby = allocs.map(|allocs| Standby::new(executor, allocs));
        if let Some(standby) = &standby {
            standby.replenish();
        }
        Self::with_drivers(vec![
            Arc::new(
                ExecDriver::new(executor)
                    .with_confinement(confinement.clone())
                    .with_standby(standby.clone()),
            ),
            Arc::new(
                VmDriver::new(executor)
                    .with_confinement(confinement)
                    .with_standby(standby.clone())
                    .with_migration_host(migration_host.clone())
                    .with_migration_tls(MigrationTls::from_transport(herd_api::tls::transport())),
            ),
            Arc::new(
                SimVmDriver::new(executor)
                    .with_confinement(confinement)
                    .with_standby(standby.clone())
                    .with_migration_host(migration_host.clone())
                    .with_migration_tls(MigrationTls::from_transport(herd_api::tls::transport())),
            ),
            Arc::new(
                DljobDriver::new(executor)
                    .with_confinement(confinement)
                    .with_standby(standby.clone()),
            ),
            Arc::new(
                InferenceDriver::new(executor)
                    .with_confinement(confinement)
                    .with_standby(standby),
            ),
        ])
    }

    /// These drivers only, over TCP until [`Wiring::connector`] is set.
    pub fn with_drivers(drivers: Vec<Arc<dyn Driver>>) -> Self {
        Self {
            drivers: drivers
                .into_iter()
                .map(|d| (d.name().to_string(), d))
                .collect(),
            connector: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_offers_every_driver_a_job_spec_may_name() {
        let wiring = Wiring::host(Path::new("/usr/bin/herd"));
        for name in herd_api::job::KNOWN_DRIVERS {
            assert!(wiring.drivers.contains_key(*name), "no {name} driver");
        }
        assert_eq!(wiring.drivers.len(), herd_api::job::KNOWN_DRIVERS.len());
    }
}
