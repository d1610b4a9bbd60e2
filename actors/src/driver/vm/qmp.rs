//! A minimal QMP (QEMU Machine Protocol) client over the VM's unix socket.
//!
//! QMP is line-delimited JSON: QEMU greets, the client negotiates with
//! `qmp_capabilities`, then each `{"execute": ...}` gets one `{"return": ...}`
//! or `{"error": ...}`, with asynchronous `{"event": ...}` lines interleaved
//! (skipped here). One connection per operation keeps the client stateless:
//! any agent process, after a restart too, can drive any VM.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest a QMP exchange may take (a busy TCG guest answers slowly).
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line accepted from QEMU.
const MAX_LINE: usize = 1 << 20;
/// Most events skipped while waiting for a new session's greeting.
const MAX_EVENTS_BEFORE_GREETING: usize = 64;

/// Why a QMP exchange failed.
#[derive(Debug, Error)]
pub enum QmpError {
    /// The socket could not be reached or broke.
    #[error("QMP socket {path}: {message}")]
    Io {
        /// The socket.
        path: String,
        /// The OS error or what was cut short.
        message: String,
    },
    /// QEMU answered with an error.
    #[error("QMP command {command}: {class}: {desc}")]
    Command {
        /// The command sent.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP socket {path}: unexpected reply {reply}")]
    Protocol {
        /// The socket.
        path: String,
        /// What arrived.
        reply: String,
    },
}

/// One negotiated QMP connection.
pub struct Qmp {
    path: String,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects to `socket` and negotiates capabilities.
    pub async fn connect(socket: &Path) -> Result<Self, QmpError> {
        let path = socket.display().to_string();
        let io = |message: String| QmpError::Io {
            path: path.clone(),
            message,
        };
        let stream = tokio::time::timeout(QMP_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| io("connect timed out".into()))?
            .map_err(|e| io(e.to_string()))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            path,
            reader: BufReader::new(read),
            writer,
        };
        // The greeting comes first, but an event QEMU emits while the
        // session opens (a block job changing state during a disk mirror)
        // can come before it: events are skipped, a bounded number.
        let mut skipped = 0;
        loop {
            let greeting = qmp.read_message().await?;
            if greeting.get("QMP").is_some() {
                break;
            }
            if greeting.get("event").is_none() || skipped >= MAX_EVENTS_BEFORE_GREETING {
                return Err(QmpError::Protocol {
                    path: qmp.path.clone(),
                    reply: greeting.to_string(),
                });
            }
            skipped += 1;
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = tokio::time::timeout(QMP_TIMEOUT, async {
            // Bounded: QEMU's replies are small; a runaway line is an error.
            let mut total = 0;
            loop {
                let n = self.reader.read_line(&mut line).await?;
                total += n;
                if n == 0 || line.ends_with('\n') || total > MAX_LINE {
                    return Ok::<usize, std::io::Error>(total);
                }
            }
        })
        .await
        .map_err(|_| QmpError::Io {
            path: self.path.clone(),
            message: "no reply in time".into(),
        })?
        .map_err(|e| QmpError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if read == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                message: "QEMU closed the connection".into(),
            });
        }
        serde_json::from_str(line.trim()).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            reply: line.chars().take(200).collect(),
        })
    }

    /// Runs `command` with `arguments` and returns QEMU's `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|e| QmpError::Io {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let text = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Protocol {
                path: self.path.clone(),
                reply: reply.to_string(),
            });
        }
    }

    /// The VM's run state (`"running"`, `"paused"`, `"shutdown"`...).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let reply = self.execute("query-status", None).await?;
        reply
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol {
                path: self.path.clone(),
                reply: reply.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, acknowledges capabilities, answers query-status
    /// after an event, and refuses anything else.
    async fn fake_qemu(listener: UnixListener) {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .expect("greet");
        let mut buf = vec![0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let reply = if text.contains("qmp_capabilities") {
                "{\"return\": {}}\n".to_string()
            } else if text.contains("query-status") {
                "{\"event\": \"RESUME\", \"data\": {}}\n{\"return\": {\"status\": \"paused\", \"running\": false}}\n".to_string()
            } else {
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no such command\"}}\n"
                    .to_string()
            };
            stream.write_all(reply.as_bytes()).await.expect("reply");
        }
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(fake_qemu(listener));
        let mut qmp = Qmp::connect(&path).await.expect("connect");
        assert_eq!(qmp.status().await.expect("status"), "paused");
        match qmp.execute("bogus", None).await {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
            other => panic!("expected a command error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sock");
        let err = Qmp::connect(&path).await.err().expect("error");
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
