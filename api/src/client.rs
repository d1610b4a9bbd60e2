//! A client for the coordinators' API that tries each given address in turn.
//!
//! Used by the CLI, the chaos harness and benchmarks. A coordinator that is
//! down, not a member yet, or without a leader is skipped for the next one;
//! any other answer (a rejection, a not-found) is final, so a write is never
//! sent twice when its first attempt may have been applied.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Why a call failed everywhere it was tried.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No address was given.
    #[error("no coordinator address given: pass --addr HOST:PORT[,HOST:PORT...] or set HERD_ADDR")]
    NoAddress,
    /// An address could not be parsed.
    #[error("invalid coordinator address {addr:?}: {message}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// Every coordinator was unreachable or unable to serve.
    #[error("no coordinator could serve the request: {}", .tried.iter().map(|(a, m)| format!("{a}: {m}")).collect::<Vec<_>>().join("; "))]
    Unavailable {
        /// Each address with what it answered.
        tried: Vec<(String, String)>,
    },
    /// A coordinator answered with an error.
    #[error("{}", .status.message())]
    Status {
        /// Who answered.
        addr: String,
        /// The answer.
        status: Status,
    },
}

impl ClientError {
    /// The gRPC code of a final answer, if there was one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// Connections to one or more coordinators of a cluster.
#[derive(Clone)]
pub struct HerdClient {
    endpoints: Vec<(String, Channel)>,
}

/// Whether another coordinator might serve a request this one could not.
fn try_next(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::FailedPrecondition)
}

impl HerdClient {
    /// Connects lazily to `addrs` (`HOST:PORT` each).
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Self, ClientError> {
        let mut endpoints = Vec::new();
        for addr in addrs
            .iter()
            .map(|a| a.as_ref().trim())
            .filter(|a| !a.is_empty())
        {
            let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
                ClientError::BadAddress {
                    addr: addr.to_string(),
                    message: e.to_string(),
                }
            })?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(150))
                .tcp_nodelay(true)
                .connect_lazy();
            endpoints.push((addr.to_string(), channel));
        }
        if endpoints.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(Self { endpoints })
    }

    /// Parses a comma-separated address list, as `--addr` and `HERD_ADDR` take it.
    pub fn from_list(list: &str) -> Result<Self, ClientError> {
        Self::new(&list.split(',').collect::<Vec<_>>())
    }

    /// The addresses, in the order they are tried.
    pub fn addrs(&self) -> Vec<String> {
        self.endpoints.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` against each coordinator in turn until one serves it.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried = Vec::new();
        for (addr, channel) in &self.endpoints {
            match call(channel.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) if try_next(&status) => {
                    tried.push((addr.clone(), status.message().to_string()))
                }
                Err(status) => {
                    return Err(ClientError::Status {
                        addr: addr.clone(),
                        status,
                    })
                }
            }
        }
        Err(ClientError::Unavailable { tried })
    }

    /// Runs `call` against one coordinator only (by position), for member-local questions.
    pub async fn call_one<T, F, Fut>(&self, index: usize, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some((addr, channel)) = self.endpoints.get(index) else {
            return Err(ClientError::NoAddress);
        };
        call(channel.clone())
            .await
            .map_err(|status| ClientError::Status {
                addr: addr.clone(),
                status,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn address_lists_parse() {
        let client = HerdClient::from_list("127.0.0.1:1, 127.0.0.1:2,").expect("parse");
        assert_eq!(client.addrs(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(matches!(
            HerdClient::from_list(" , "),
            Err(ClientError::NoAddress)
        ));
    }
}
