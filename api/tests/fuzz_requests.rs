//! Fuzzing every gRPC request message (issue 24; docs/fuzzing.md): bytes
//! from the network go through prost's decoder and then the conversions of
//! `herd_api::convert` that servers apply, and neither may panic.
//!
//! The list of targets is checked against the `.proto` files: a request
//! type without a target here, or a service without a handler-level target
//! in another crate ([`fuzz_support::SERVED_BY`]), fails
//! `every_request_type_and_service_has_a_target`, so a new RPC cannot be
//! forgotten. The handlers themselves are fuzzed over real servers in
//! coordinator/tests/fuzz_handlers.rs, node/tests/fuzz_peer.rs and
//! actors/tests/fuzz_inference.rs.
//!
//! Cases per target: `HERD_FUZZ_CASES` (short by default, for CI).

// Test harness code: a panic here is a test failure with its location
// (clippy.toml allows unwrap/expect in tests; helpers outside #[test] need this).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use std::collections::BTreeSet;

use herd_api::alloc::AllocUpdate;
use herd_api::convert::capabilities::drivers_from_proto;
use herd_api::job::JobSpec;
use herd_api::proto::{agent, inference, internal, v1};
use herd_api::resources::Resources;
use proptest::prelude::*;
use prost::Message;

/// What a server does with a decoded request before its own logic: the
/// conversions into domain types (which validate).
trait Convert {
    fn convert(self);
}

/// Requests whose fields the handlers read as they are (their checks are
/// fuzzed at the handler level).
macro_rules! plain {
    ($($t:ty),* $(,)?) => {
        $(impl Convert for $t {
            fn convert(self) {}
        })*
    };
}

plain!(
    v1::ClusterStatusRequest,
    v1::MemberStatusRequest,
    v1::AddMemberRequest,
    v1::RemoveMemberRequest,
    v1::ReplaceMemberRequest,
    v1::ListJobsRequest,
    v1::GetJobRequest,
    v1::StopJobRequest,
    v1::ListAllocsRequest,
    v1::GetAllocRequest,
    v1::StartMigrationRequest,
    v1::ListMigrationsRequest,
    v1::GetMigrationRequest,
    v1::StartGangMigrationRequest,
    v1::ListNodesRequest,
    v1::SetEligibilityRequest,
    v1::DrainNodeRequest,
    v1::PutVariableRequest,
    v1::GetVariableRequest,
    v1::PutVariableBatch,
    v1::SaveSnapshotRequest,
    v1::SetPowerBudgetRequest,
    v1::RemovePowerBudgetRequest,
    v1::ListPowerBudgetsRequest,
    v1::PowerStatusRequest,
    v1::ReschedulePlanRequest,
    v1::AclBootstrapRequest,
    v1::CreateAclTokenRequest,
    v1::ListAclTokensRequest,
    v1::RevokeAclTokenRequest,
    v1::RevokeCertificateRequest,
    v1::ListRevokedCertificatesRequest,
    v1::ScaleServiceRequest,
    v1::ServiceStatusRequest,
    agent::WatchAllocationsRequest,
    agent::MigrationReportRequest,
    agent::OfflineMoveReport,
    agent::AllocLogsRequest,
    agent::InferRequest,
    agent::EngineStatsRequest,
    agent::BalanceStatusRequest,
    agent::MigrateRequestRequest,
    agent::PrepareIncomingRequest,
    agent::TransferChunk,
    agent::AbortIncomingRequest,
    agent::ConfirmIncomingRequest,
    agent::GossipPacket,
    agent::RequestKvChunk,
    agent::AbortRequestKvRequest,
    agent::OfflineMoveRequest,
    agent::AclTableRequest,
    inference::GenerateRequest,
    inference::StatsRequest,
    inference::ExportKvRequest,
    inference::RequestRef,
    inference::ImportKvRequest,
    inference::ResumeImportedRequest,
    inference::AbortImportRequest,
    internal::RaftEnvelope,
    internal::ReadIndexRequest,
    internal::IdentityRequest,
);

impl Convert for v1::SubmitJobRequest {
    fn convert(self) {
        let Some(wire) = self.spec else { return };
        if let Ok(spec) = JobSpec::try_from(wire) {
            // Accepted: its settings parse, and it survives the wire again.
            let _ = herd_api::driver_settings::parse(&spec.task);
            let back = JobSpec::try_from(v1::JobSpec::from(&spec));
            assert_eq!(
                back.as_ref(),
                Ok(&spec),
                "a converted spec changed on the wire"
            );
        }
    }
}

impl Convert for agent::RegisterNodeRequest {
    fn convert(self) {
        if let Some(capacity) = self.capacity {
            let _ = Resources::try_from(capacity);
        }
        let _ = drivers_from_proto(self.drivers);
    }
}

impl Convert for agent::HeartbeatRequest {
    fn convert(self) {}
}

impl Convert for agent::ReportAllocationsRequest {
    fn convert(self) {
        for report in self.reports {
            let _ = AllocUpdate::try_from(report);
        }
    }
}

/// Decodes `bytes` as `T` and converts it; decode errors are the refusal.
fn run<T: Message + Default + Convert>(bytes: &[u8]) {
    if let Ok(message) = T::decode(bytes) {
        message.convert();
    }
}

/// A request type's target: (package, message name, decode-and-convert).
type Target = (&'static str, &'static str, fn(&[u8]));

/// Every request type's target.
fn targets() -> Vec<Target> {
    macro_rules! list {
        ($($pkg:literal, $module:ident :: $t:ident);* $(;)?) => {
            vec![$(($pkg, stringify!($t), run::<$module::$t> as fn(&[u8]))),*]
        };
    }
    list![
        "herd.v1", v1::ClusterStatusRequest;
        "herd.v1", v1::MemberStatusRequest;
        "herd.v1", v1::AddMemberRequest;
        "herd.v1", v1::RemoveMemberRequest;
        "herd.v1", v1::ReplaceMemberRequest;
        "herd.v1", v1::SubmitJobRequest;
        "herd.v1", v1::ListJobsRequest;
        "herd.v1", v1::GetJobRequest;
        "herd.v1", v1::StopJobRequest;
        "herd.v1", v1::ListAllocsRequest;
        "herd.v1", v1::GetAllocRequest;
        "herd.v1", v1::StartMigrationRequest;
        "herd.v1", v1::ListMigrationsRequest;
        "herd.v1", v1::GetMigrationRequest;
        "herd.v1", v1::StartGangMigrationRequest;
        "herd.v1", v1::ListNodesRequest;
        "herd.v1", v1::SetEligibilityRequest;
        "herd.v1", v1::DrainNodeRequest;
        "herd.v1", v1::PutVariableRequest;
        "herd.v1", v1::GetVariableRequest;
        "herd.v1", v1::PutVariableBatch;
        "herd.v1", v1::SaveSnapshotRequest;
        "herd.v1", v1::SetPowerBudgetRequest;
        "herd.v1", v1::RemovePowerBudgetRequest;
        "herd.v1", v1::ListPowerBudgetsRequest;
        "herd.v1", v1::PowerStatusRequest;
        "herd.v1", v1::ReschedulePlanRequest;
        "herd.v1", v1::AclBootstrapRequest;
        "herd.v1", v1::CreateAclTokenRequest;
        "herd.v1", v1::ListAclTokensRequest;
        "herd.v1", v1::RevokeAclTokenRequest;
        "herd.v1", v1::RevokeCertificateRequest;
        "herd.v1", v1::ListRevokedCertificatesRequest;
        "herd.v1", v1::ScaleServiceRequest;
        "herd.v1", v1::ServiceStatusRequest;
        "herd.agent.v1", agent::RegisterNodeRequest;
        "herd.agent.v1", agent::HeartbeatRequest;
        "herd.agent.v1", agent::WatchAllocationsRequest;
        "herd.agent.v1", agent::ReportAllocationsRequest;
        "herd.agent.v1", agent::MigrationReportRequest;
        "herd.agent.v1", agent::OfflineMoveReport;
        "herd.agent.v1", agent::AllocLogsRequest;
        "herd.agent.v1", agent::InferRequest;
        "herd.agent.v1", agent::EngineStatsRequest;
        "herd.agent.v1", agent::BalanceStatusRequest;
        "herd.agent.v1", agent::MigrateRequestRequest;
        "herd.agent.v1", agent::PrepareIncomingRequest;
        "herd.agent.v1", agent::TransferChunk;
        "herd.agent.v1", agent::AbortIncomingRequest;
        "herd.agent.v1", agent::ConfirmIncomingRequest;
        "herd.agent.v1", agent::GossipPacket;
        "herd.agent.v1", agent::RequestKvChunk;
        "herd.agent.v1", agent::AbortRequestKvRequest;
        "herd.agent.v1", agent::OfflineMoveRequest;
        "herd.agent.v1", agent::AclTableRequest;
        "herd.inference.v1", inference::GenerateRequest;
        "herd.inference.v1", inference::StatsRequest;
        "herd.inference.v1", inference::ExportKvRequest;
        "herd.inference.v1", inference::RequestRef;
        "herd.inference.v1", inference::ImportKvRequest;
        "herd.inference.v1", inference::ResumeImportedRequest;
        "herd.inference.v1", inference::AbortImportRequest;
        "herd.internal.v1", internal::RaftEnvelope;
        "herd.internal.v1", internal::ReadIndexRequest;
        "herd.internal.v1", internal::IdentityRequest;
    ]
}

#[test]
fn every_request_type_and_service_has_a_target() {
    let rpcs = fuzz_support::rpcs();
    assert!(rpcs.len() > 50, "too few RPCs read: {}", rpcs.len());
    let have: BTreeSet<(String, String)> = targets()
        .iter()
        .map(|(p, t, _)| (p.to_string(), t.to_string()))
        .collect();
    let mut missing = BTreeSet::new();
    let mut unserved = BTreeSet::new();
    for rpc in &rpcs {
        // A request type of another package is written qualified.
        let (package, name) = match rpc.request.rsplit_once('.') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (rpc.package.clone(), rpc.request.clone()),
        };
        if !have.contains(&(package.clone(), name.clone())) {
            missing.insert(format!("{package}.{name} (of {})", rpc.path()));
        }
        let service = rpc.full_service();
        if !fuzz_support::SERVED_BY.iter().any(|(s, _)| *s == service) {
            unserved.insert(service);
        }
    }
    assert!(
        missing.is_empty(),
        "request types with no fuzz target in api/tests/fuzz_requests.rs: {missing:?}"
    );
    assert!(
        unserved.is_empty(),
        "services with no handler fuzz target in fuzz_support::SERVED_BY: {unserved:?}"
    );
    // And nothing listed that the protos no longer declare.
    let declared: BTreeSet<String> = rpcs.iter().map(|r| r.full_service()).collect();
    for (service, _) in fuzz_support::SERVED_BY {
        assert!(
            declared.contains(*service),
            "{service} is no longer declared"
        );
    }
}

#[test]
fn the_proto_reader_sees_streams() {
    let rpcs = fuzz_support::parse_rpcs(
        "package p.v1;\nservice S {\n  rpc A(stream X) returns (Y); // note\n  rpc B(Z) returns (stream W);\n}\n",
        "test.proto",
    );
    assert_eq!(rpcs.len(), 2);
    assert!(rpcs[0].client_streaming && !rpcs[0].server_streaming);
    assert!(!rpcs[1].client_streaming && rpcs[1].server_streaming);
    assert_eq!(rpcs[1].path(), "/p.v1.S/B");
    assert_eq!(rpcs[0].request, "X");
}

proptest! {
    #![proptest_config(fuzz_support::config(500))]

    /// Every request type decodes and converts the same bytes without
    /// panicking (one case feeds all of them).
    #[test]
    fn every_request_type_survives_any_bytes(bytes in fuzz_support::request_bytes()) {
        for (_, _, target) in targets() {
            target(&bytes);
        }
    }

    /// Job specs shaped like real ones, with random fields: deeper into
    /// the conversion than random bytes get.
    #[test]
    fn submitted_specs_never_panic(spec in spec_fields()) {
        let bytes = fuzz_support::encode_fields(&spec);
        run::<v1::SubmitJobRequest>(&bytes);
    }
}

/// A `SubmitJobRequest` whose `spec` (field 1) is a JobSpec-shaped message
/// (numbers as in client.proto): name, type, count, priority, and a task
/// (5) with driver, command, args, resources (6) and config entries (7);
/// then random fields, which may repeat or contradict those.
fn spec_fields() -> impl Strategy<Value = Vec<fuzz_support::WireField>> {
    use fuzz_support::{interesting_u64, text, wire_fields, WireField as F};
    let resources = (
        interesting_u64(),
        interesting_u64(),
        interesting_u64(),
        text(),
    )
        .prop_map(|(cpu, mem, gpus, model)| {
            vec![
                F::Varint(1, cpu),
                F::Varint(2, mem),
                F::Varint(3, gpus),
                F::Text(4, model),
            ]
        });
    let config_entry =
        (text(), text()).prop_map(|(k, v)| F::Message(7, vec![F::Text(1, k), F::Text(2, v)]));
    let task = (
        text(),
        text(),
        proptest::collection::vec(text(), 0..3),
        resources,
        proptest::collection::vec(config_entry, 0..4),
        wire_fields(),
    )
        .prop_map(|(driver, command, args, res, config, extra)| {
            let mut t = vec![F::Text(1, driver), F::Text(2, command)];
            t.extend(args.into_iter().map(|a| F::Text(3, a)));
            t.push(F::Message(6, res));
            t.extend(config);
            t.extend(extra);
            t
        });
    (
        text(),
        text(),
        interesting_u64(),
        interesting_u64(),
        task,
        wire_fields(),
    )
        .prop_map(|(name, ty, count, priority, task, extra)| {
            let mut spec = vec![
                F::Text(1, name),
                F::Text(2, ty),
                F::Varint(3, count),
                F::Varint(4, priority),
                F::Message(5, task),
            ];
            spec.extend(extra);
            vec![F::Message(1, spec)]
        })
}
