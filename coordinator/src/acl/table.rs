//! The one table that says which role each RPC needs.
//!
//! Every RPC a coordinator serves to clients and node agents is listed by
//! its full gRPC path. An RPC missing here is refused to every token once
//! the cluster is bootstrapped (fail closed), and the tests compare this
//! table with the `.proto` files, so a new RPC cannot ship without a line.
//! The coordinator-to-coordinator service (`herd.internal.v1.Internal`) is
//! not in the table: it is never token-checked (see docs/security.md).

use super::Role;

/// `(full gRPC path, role needed)` for every client and agent RPC.
pub const RPC_ROLES: &[(&str, Role)] = &[
    // Cluster: reading its state; changing membership is an operator's.
    ("/herd.v1.Cluster/Status", Role::Read),
    ("/herd.v1.Cluster/MemberStatus", Role::Read),
    ("/herd.v1.Cluster/AddMember", Role::Operator),
    ("/herd.v1.Cluster/RemoveMember", Role::Operator),
    ("/herd.v1.Cluster/ReplaceMember", Role::Operator),
    // Jobs.
    ("/herd.v1.Jobs/Submit", Role::Submit),
    ("/herd.v1.Jobs/List", Role::Read),
    ("/herd.v1.Jobs/Get", Role::Read),
    ("/herd.v1.Jobs/Stop", Role::Submit),
    // Allocations.
    ("/herd.v1.Allocs/List", Role::Read),
    ("/herd.v1.Allocs/Get", Role::Read),
    // Moving running work between nodes is an operator's decision.
    ("/herd.v1.Migrations/Start", Role::Operator),
    ("/herd.v1.Migrations/StartGang", Role::Operator),
    ("/herd.v1.Migrations/List", Role::Read),
    ("/herd.v1.Migrations/Get", Role::Read),
    // Nodes.
    ("/herd.v1.Nodes/List", Role::Read),
    ("/herd.v1.Nodes/SetEligibility", Role::Operator),
    ("/herd.v1.Nodes/Drain", Role::Operator),
    // Variables: configuration for jobs, written by who submits them.
    ("/herd.v1.Variables/Put", Role::Submit),
    ("/herd.v1.Variables/Get", Role::Read),
    ("/herd.v1.Variables/PutStream", Role::Submit),
    // Power budgets.
    ("/herd.v1.Power/SetBudget", Role::Operator),
    ("/herd.v1.Power/RemoveBudget", Role::Operator),
    ("/herd.v1.Power/ListBudgets", Role::Read),
    ("/herd.v1.Power/Status", Role::Read),
    // A plan moves nothing, but it runs the solvers on the serving member
    // for up to its deadline (60 s at most): CPU a read token must not be
    // able to spend at will. Operators plan; `herd reschedule apply` goes
    // through Migrations/Start, an operator's too.
    ("/herd.v1.Reschedule/Plan", Role::Operator),
    // Inference services: reading their status; scaling one is like
    // changing its job's count, which whoever submits jobs may do.
    ("/herd.v1.Services/Status", Role::Read),
    ("/herd.v1.Services/Scale", Role::Submit),
    // A backup holds every record, token hashes included.
    ("/herd.v1.Operator/SaveSnapshot", Role::Operator),
    // Tokens. Bootstrap needs no token while the cluster is open, which is
    // the only time it succeeds.
    ("/herd.v1.Acl/Bootstrap", Role::Operator),
    ("/herd.v1.Acl/CreateToken", Role::Operator),
    ("/herd.v1.Acl/ListTokens", Role::Operator),
    ("/herd.v1.Acl/RevokeToken", Role::Operator),
    ("/herd.v1.Acl/RevokeCertificate", Role::Operator),
    // Fingerprints and notes only; every client reads them anyway (the
    // variables under `herd/tls/revoked/`).
    ("/herd.v1.Acl/ListRevokedCertificates", Role::Read),
    // Node agents.
    ("/herd.agent.v1.Agent/Register", Role::Node),
    ("/herd.agent.v1.Agent/Heartbeat", Role::Node),
    ("/herd.agent.v1.Agent/WatchAllocations", Role::Node),
    ("/herd.agent.v1.Agent/ReportAllocations", Role::Node),
    ("/herd.agent.v1.Agent/ReportMigration", Role::Node),
    ("/herd.agent.v1.Agent/ReportOfflineMove", Role::Node),
    // Digests, roles and expiry of every token (never a secret), for the
    // agents to check their own services' callers.
    ("/herd.agent.v1.Agent/AclTable", Role::Node),
];

/// The role `path` needs; None when the table has no line for it.
pub fn required_role(path: &str) -> Option<Role> {
    RPC_ROLES
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .map(|(_, role)| *role)
}

/// Services whose RPCs a coordinator serves but never token-checks.
pub const UNCHECKED_SERVICES: &[&str] = &["herd.internal.v1.Internal"];

/// Every RPC of a `.proto` file's text as a full gRPC path (moved to
/// `herd_api::acl::proto_rpcs`, which the agents' table test reads too).
pub use herd_api::acl::proto_rpcs::rpcs_in_proto;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const CLIENT: &str = include_str!("../../../api/proto/herd/client.proto");
    const AGENT: &str = include_str!("../../../api/proto/herd/agent.proto");
    const INTERNAL: &str = include_str!("../../../api/proto/herd/internal.proto");

    #[test]
    fn every_served_rpc_has_exactly_one_line() {
        let mut served: BTreeSet<String> = rpcs_in_proto(CLIENT, None).into_iter().collect();
        served.extend(rpcs_in_proto(AGENT, Some(&["herd.agent.v1.Agent"])));
        let listed: Vec<&str> = RPC_ROLES.iter().map(|(rpc, _)| *rpc).collect();
        let unique: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
        assert_eq!(unique.len(), listed.len(), "an RPC is listed twice");
        assert_eq!(
            served, unique,
            "RPC_ROLES must list every client and agent RPC, and only those"
        );
        // The internal service is the one left out, on purpose.
        let internal = rpcs_in_proto(INTERNAL, None);
        assert!(internal.iter().all(|rpc| required_role(rpc).is_none()));
        assert!(internal.iter().all(|rpc| UNCHECKED_SERVICES
            .iter()
            .any(|s| rpc.starts_with(&format!("/{s}/")))));
    }

    #[test]
    fn agent_rpcs_need_the_node_role_and_only_they_do() {
        for (rpc, role) in RPC_ROLES {
            assert_eq!(
                rpc.starts_with("/herd.agent.v1.Agent/"),
                *role == Role::Node,
                "{rpc}"
            );
        }
        assert_eq!(required_role("/herd.v1.Jobs/Submit"), Some(Role::Submit));
        assert_eq!(required_role("/herd.v1.Jobs/Nope"), None);
    }
}
