//! Roles: what a token may do. Three nested roles for people and programs
//! (`read` < `submit` < `operator`) and one apart for node agents (`node`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a token may do; every RPC needs one (the coordinators' table,
/// `herd_coordinator::acl::table`, and the agents', `herd_node::acl::table`).
///
/// Stored in tokens and carried in commands: new roles go at the end (the
/// log encodes a variant by its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the cluster: status, jobs, allocations, nodes, variables.
    Read,
    /// Reads, and submits and stops jobs and writes variables.
    Submit,
    /// Everything a client can do: membership, nodes, migrations, power
    /// budgets, tokens.
    Operator,
    /// A node agent: registers, heartbeats and reports for nodes, and reads
    /// (its inference fleet view lists jobs, nodes and allocations). Apart
    /// from the others: an operator token is no agent credential, and a
    /// node token writes nothing a client would.
    Node,
}

impl Role {
    /// Every role, in the order `herd acl` lists them.
    pub const ALL: [Role; 4] = [Role::Read, Role::Submit, Role::Operator, Role::Node];

    /// The name the CLI and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }

    /// Parses a role name, saying which are valid when it is not one.
    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role {text:?}: expected read, submit, operator or node")
            })
    }

    /// Whether a token of this role may call an RPC that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Read => true,
            Role::Submit => matches!(self, Role::Submit | Role::Operator),
            Role::Operator => self == Role::Operator,
            Role::Node => self == Role::Node,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_node_stands_apart() {
        use Role::*;
        let allowed = |have: Role| -> Vec<Role> {
            Role::ALL
                .into_iter()
                .filter(|need| have.allows(*need))
                .collect()
        };
        assert_eq!(allowed(Read), vec![Read]);
        assert_eq!(allowed(Submit), vec![Read, Submit]);
        assert_eq!(allowed(Operator), vec![Read, Submit, Operator]);
        assert_eq!(allowed(Node), vec![Read, Node]);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert!(Role::parse("admin").unwrap_err().contains("admin"));
    }
}
