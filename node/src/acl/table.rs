//! The role each of the agent's own entry points needs: every `NodeAgent`
//! RPC by its full gRPC path, and every route of the OpenAI-compatible
//! endpoint. An RPC missing here is refused to every token once the
//! cluster is bootstrapped (fail closed); a test holds the table against
//! `agent.proto`. `AgentPeer` (agent to agent) is not token-checked: under
//! mutual TLS it serves node certificates only (docs/security.md).

use herd_api::acl::Role;
use herd_api::tls::PeerRole;

/// `(full gRPC path, role needed)` for every `NodeAgent` RPC.
pub const RPC_ROLES: &[(&str, Role)] = &[
    // An allocation's output: like `herd alloc status`, a read.
    ("/herd.agent.v1.NodeAgent/AllocLogs", Role::Read),
    // Running a request spends GPU time: like submitting work.
    ("/herd.agent.v1.NodeAgent/Infer", Role::Submit),
    // The load of this agent's engines.
    ("/herd.agent.v1.NodeAgent/EngineStats", Role::Read),
    ("/herd.agent.v1.NodeAgent/BalanceStatus", Role::Read),
    // Moving a running request between nodes, like a migration, is an
    // operator's decision.
    ("/herd.agent.v1.NodeAgent/MigrateRequest", Role::Operator),
];

/// RPCs a `node` token may call whatever the role above: other agents
/// call them on their callers' behalf (an agent forwards an inference
/// request it already checked to the agent whose engine serves it, or the
/// rest of a request that moved). `EngineStats`, which agents poll too,
/// needs `read`, which `node` includes.
pub const FORWARDED_BY_AGENTS: &[&str] = &["/herd.agent.v1.NodeAgent/Infer"];

/// RPCs a caller holding a certificate of the given role may call without
/// a token, under mutual TLS: coordinators read engine stats for the
/// autoscaler (`herd service status`) and hold no token of their own. In
/// plaintext no caller has a certificate, so this never applies.
pub const BY_CERTIFICATE: &[(&str, PeerRole)] = &[(
    "/herd.agent.v1.NodeAgent/EngineStats",
    PeerRole::Coordinator,
)];

/// Whether a caller whose certificate is of `role` may call `path`
/// without a token.
pub fn certified(path: &str, role: PeerRole) -> bool {
    BY_CERTIFICATE.iter().any(|(p, r)| *p == path && *r == role)
}

/// `(method, path, role needed)` for the OpenAI-compatible endpoint. Any
/// other route (a 404) needs `read`, so that nothing is answered to a
/// caller without a token.
pub const HTTP_ROLES: &[(&str, &str, Role)] = &[
    ("POST", "/v1/completions", Role::Submit),
    ("POST", "/v1/chat/completions", Role::Submit),
    ("GET", "/v1/models", Role::Read),
];

/// The role `path` needs; None when the table has no line for it.
pub fn required_role(path: &str) -> Option<Role> {
    RPC_ROLES
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .map(|(_, role)| *role)
}

/// Whether a token of role `have` may call `path`, which needs `need`.
pub fn allows(have: Role, need: Role, path: &str) -> bool {
    have.allows(need) || (have == Role::Node && FORWARDED_BY_AGENTS.contains(&path))
}

/// The role an HTTP request for `method` `path` needs.
pub fn http_role(method: &str, path: &str) -> Role {
    HTTP_ROLES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, role)| *role)
        .unwrap_or(Role::Read)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use herd_api::acl::proto_rpcs::rpcs_in_proto;

    use super::*;

    const AGENT: &str = include_str!("../../../api/proto/herd/agent.proto");

    #[test]
    fn every_node_agent_rpc_has_exactly_one_line() {
        let served: BTreeSet<String> = rpcs_in_proto(AGENT, Some(&["herd.agent.v1.NodeAgent"]))
            .into_iter()
            .collect();
        assert!(served.len() >= 5, "the reader found the service");
        let listed: Vec<&str> = RPC_ROLES.iter().map(|(rpc, _)| *rpc).collect();
        let unique: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
        assert_eq!(unique.len(), listed.len(), "an RPC is listed twice");
        assert_eq!(
            served, unique,
            "RPC_ROLES must list every NodeAgent RPC, and only those"
        );
        for rpc in FORWARDED_BY_AGENTS {
            assert!(required_role(rpc).is_some(), "{rpc}");
        }
    }

    #[test]
    fn roles_decide_and_only_forwarded_rpcs_take_a_node_token() {
        let infer = "/herd.agent.v1.NodeAgent/Infer";
        let migrate = "/herd.agent.v1.NodeAgent/MigrateRequest";
        let logs = "/herd.agent.v1.NodeAgent/AllocLogs";
        assert!(allows(Role::Submit, Role::Submit, infer));
        assert!(!allows(Role::Read, Role::Submit, infer));
        assert!(allows(Role::Node, Role::Submit, infer));
        assert!(!allows(Role::Node, Role::Operator, migrate));
        assert!(!allows(Role::Submit, Role::Operator, migrate));
        assert!(allows(Role::Node, Role::Read, logs));
        assert_eq!(required_role("/herd.agent.v1.NodeAgent/Nope"), None);
        assert_eq!(http_role("POST", "/v1/completions"), Role::Submit);
        assert_eq!(http_role("GET", "/v1/models"), Role::Read);
        assert_eq!(http_role("GET", "/v1/completions"), Role::Read);
        assert_eq!(http_role("DELETE", "/anything"), Role::Read);
        let stats = "/herd.agent.v1.NodeAgent/EngineStats";
        assert!(certified(stats, PeerRole::Coordinator));
        assert!(!certified(stats, PeerRole::Client));
        assert!(!certified(infer, PeerRole::Coordinator));
    }
}
