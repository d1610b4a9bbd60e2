//! How the agent's gRPC services reach the [`Balancer`](super::Balancer):
//! a slot the agent fills when it spawns the actor (and again when it
//! restarts it), cheap to clone into the services built before it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use herd_api::proto::agent::{BalanceStatusReply, GossipPacket};
use ractor::ActorRef;
use tonic::Status;

use super::actor::BalanceMsg;

/// Longest the services wait for the balancer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest gossip packet accepted from the network (the balance crate's
/// own codec bounds what it decodes further).
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Longest node name or address accepted in a packet's envelope.
const MAX_NAME_BYTES: usize = 256;

/// The balancer, once running; cheap to clone.
#[derive(Clone, Default)]
pub struct BalanceHandle {
    slot: Arc<RwLock<Option<ActorRef<BalanceMsg>>>>,
    node: Arc<RwLock<String>>,
    /// What runs requests here: the balancer moves requests through it.
    inference: Option<crate::infer::Inference>,
}

impl BalanceHandle {
    /// An empty slot for node `node`: balancing answers "not running" until
    /// the agent sets the actor.
    pub fn new(node: &str) -> Self {
        Self {
            slot: Arc::default(),
            node: Arc::new(RwLock::new(node.to_string())),
            inference: None,
        }
    }

    /// The same handle, letting the balancer move inference requests
    /// through `inference` (the agent's own, which relays the streams).
    pub fn with_inference(mut self, inference: crate::infer::Inference) -> Self {
        self.inference = Some(inference);
        self
    }

    /// What the balancer moves requests through, if the agent serves any.
    pub fn inference(&self) -> Option<crate::infer::Inference> {
        self.inference.clone()
    }

    /// Points the services at `actor` (a new one after a restart).
    pub fn set(&self, actor: ActorRef<BalanceMsg>) {
        if let Ok(mut slot) = self.slot.write() {
            *slot = Some(actor);
        }
    }

    fn actor(&self) -> Option<ActorRef<BalanceMsg>> {
        self.slot.read().ok().and_then(|slot| slot.clone())
    }

    /// Hands one packet from the network to the balancer; the answer holds
    /// the packets that go straight back to the sender.
    pub async fn gossip(&self, packet: GossipPacket) -> Result<Vec<Vec<u8>>, Status> {
        if packet.payload.len() > MAX_GOSSIP_BYTES {
            return Err(Status::invalid_argument(format!(
                "gossip payload of {} bytes is over the limit of {MAX_GOSSIP_BYTES}",
                packet.payload.len()
            )));
        }
        if packet.from_node.len() > MAX_NAME_BYTES || packet.from_addr.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "from_node or from_addr is over {MAX_NAME_BYTES} bytes"
            )));
        }
        let Some(actor) = self.actor() else {
            return Err(Status::unavailable(
                "balancing is not running on this agent",
            ));
        };
        let answer = ractor::call_t!(
            actor,
            BalanceMsg::Gossip,
            CALL_TIMEOUT.as_millis() as u64,
            packet.from_node,
            packet.payload
        )
        .map_err(|e| Status::unavailable(format!("the balancer did not answer: {e}")))?;
        answer.map_err(Status::invalid_argument)
    }

    /// This agent's view of the fleet's load (`herd balance status`).
    pub async fn status(&self) -> Result<BalanceStatusReply, Status> {
        let Some(actor) = self.actor() else {
            let node = self.node.read().map(|n| n.clone()).unwrap_or_default();
            return Ok(BalanceStatusReply {
                node,
                enabled: false,
                ..Default::default()
            });
        };
        ractor::call_t!(actor, BalanceMsg::Status, CALL_TIMEOUT.as_millis() as u64)
            .map_err(|e| Status::unavailable(format!("the balancer did not answer: {e}")))
    }
}
