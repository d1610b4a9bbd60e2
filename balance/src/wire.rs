//! The packets agents exchange, and their bounded, never-panicking codec.
//!
//! A packet is one version byte ([`WIRE_VERSION`]) followed by a bincode
//! (v1, varint) encoded [`Packet`]. Packets come from the network, so
//! [`decode`] treats them as hostile: the size is checked before decoding,
//! bincode runs with a byte limit (so no length prefix can make it
//! allocate more than the packet's size), trailing bytes are refused, and
//! every count, string and number is checked against the limits below.

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::item::{ItemId, ItemKind};
use crate::load::LoadSummary;
use crate::peer::PeerInfo;

/// The wire format version this build writes and reads. Version 2 added
/// per-service KV-cache figures and instances to load summaries and the
/// service an offered item needs; a version-1 agent's packets are refused
/// as [`DecodeError::UnknownVersion`] (bincode is not self-describing, so
/// the two cannot share one encoding).
pub const WIRE_VERSION: u8 = 2;
/// Largest packet accepted, bytes (a gRPC message carries it whole).
pub const MAX_PACKET_BYTES: usize = 64 * 1024;
/// Most load entries in one exchange.
pub const MAX_ENTRIES: usize = 64;
/// Longest string (node id, address, service name, item id), bytes.
pub const MAX_STRING: usize = 256;
/// Most services in one load summary.
pub const MAX_SERVICES: usize = 64;
/// Largest weight, score or in-flight figure accepted. Real ones are about
/// 100 per saturated resource plus queue points; without a bound, a few
/// settles of weight `f64::MAX` add up to an infinite score (found by
/// fuzzing, docs/fuzzing.md), which no comparison of the policy survives.
pub const MAX_SCORE: f64 = 1e12;

/// One packet: who sent it and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender, so the receiver can answer without an address book.
    pub from: PeerInfo,
    /// The sender's generation (bumped on every restart).
    pub generation: u64,
    /// The message.
    pub body: Body,
}

/// The messages of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// A SWIM (foca) membership message, opaque here.
    Swim(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A push (and, when `reply`, a pull request) of load figures.
    Exchange(Exchange),
    /// "May I move this item to you?"
    Offer(Offer),
    /// The recipient's answer to an offer.
    Answer(Answer),
    /// The sender's word that the item moved (or not): ends a reservation.
    /// Repeated until acknowledged, since a lost one would leave the
    /// recipient's reservation standing until it lapses.
    Settle(Settle),
    /// The recipient's receipt of a settle (of the sender's offer id).
    SettleAck(u64),
}

/// Load figures: the sender's own first, then a sample of its view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// Whether the receiver should answer with its own figures (push-pull).
    pub reply: bool,
    /// The figures.
    pub entries: Vec<WireEntry>,
}

/// One agent's load figure as gossiped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Whose figure it is.
    pub info: PeerInfo,
    /// Its origin's generation.
    pub generation: u64,
    /// Its origin's counter within the generation: newer wins.
    pub version: u64,
    /// How old the figure was when sent, by the sender's clock: the
    /// receiver adds its own time since receipt, so no clock is compared.
    pub age_ms: u64,
    /// The load.
    pub load: LoadSummary,
    /// Score points in flight at the origin: incoming moves reserved or
    /// received (+), outgoing ones offered or sent (−), not yet in `load`.
    pub in_flight: f64,
    /// Moves the origin made in the last minute.
    pub moves_per_minute: u32,
}

/// An offer to move one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The sender's id for this offer (unique per sender generation).
    pub offer_id: u64,
    /// The item.
    pub item: ItemId,
    /// What kind of work it is.
    pub kind: ItemKind,
    /// Its weight in score points.
    pub weight: f64,
    /// Moves it made before this one.
    pub moves_so_far: u32,
    /// The sender's score now (its pending moves out deducted).
    pub sender_score: f64,
    /// The neighbourhood mean the sender sees.
    pub sender_mean: f64,
    /// The service whose instance must take the item (an inference
    /// request), if any: a recipient running none refuses.
    pub service: Option<String>,
}

/// Why a recipient refused an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// After the move the recipient would be heavier than the sender.
    WouldReverse,
    /// After the move the recipient would be above its own threshold, or
    /// (an item coarser than the band) the recipient is above the mean or
    /// knows a fresh peer lighter by more than half the item. One reason
    /// for both, so that agents of the previous release decode it.
    Overloaded,
    /// The recipient holds its most reservations already.
    TooManyReservations,
    /// The item has used its move budget.
    OverBudget,
    /// The item needs an instance of a service the recipient does not run.
    NoInstance,
}

/// Accept (with a reservation held until the settle or its expiry) or
/// reject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Reserved: go ahead and move it.
    Accepted,
    /// Refused, and why.
    Rejected(RejectReason),
}

/// The answer to an [`Offer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The offer answered.
    pub offer_id: u64,
    /// Its item.
    pub item: ItemId,
    /// The verdict.
    pub verdict: Verdict,
    /// The recipient's score with its reservations: a fresh figure for
    /// the sender's view.
    pub recipient_score: f64,
}

/// The end of a negotiation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settle {
    /// The offer settled.
    pub offer_id: u64,
    /// Its item.
    pub item: ItemId,
    /// Its kind (so a recipient whose reservation expired still knows).
    pub kind: ItemKind,
    /// Its weight.
    pub weight: f64,
    /// Moves it made, this one included when `moved`.
    pub moves_so_far: u32,
    /// Whether the item now runs on the recipient (confirm) or stays
    /// (cancel).
    pub moved: bool,
}

/// Why a packet was refused. Never a panic: every malformed input lands
/// here.
#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty balance packet")]
    Empty,
    /// Written by a release speaking another wire version.
    #[error("balance packet has wire version {0}, this agent speaks {WIRE_VERSION}")]
    UnknownVersion(u8),
    /// Larger than [`MAX_PACKET_BYTES`].
    #[error("balance packet of {len} bytes exceeds the limit of {max}")]
    TooBig {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a bincode `Packet` (truncated, garbage, trailing bytes).
    #[error("malformed balance packet: {0}")]
    Malformed(String),
    /// A count or string is over its limit.
    #[error("balance packet field {what} has {len}, the limit is {max}")]
    Limit {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field has an impossible value (negative, NaN or over
    /// [`MAX_SCORE`] weight, empty id).
    #[error("balance packet field {0} is invalid")]
    Invalid(&'static str),
    /// The packet names this agent as its sender.
    #[error("balance packet claims to come from this agent")]
    FromSelf,
    /// The membership layer refused the SWIM message inside.
    #[error("membership message refused: {0}")]
    Membership(String),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_PACKET_BYTES as u64)
        .reject_trailing_bytes()
}

/// Encodes a packet: version byte then bincode.
///
/// Fails only if the packet exceeds [`MAX_PACKET_BYTES`] (the agent never
/// builds one that does).
pub fn encode(packet: &Packet) -> Result<Vec<u8>, DecodeError> {
    let body = options()
        .serialize(packet)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&body);
    if out.len() > MAX_PACKET_BYTES {
        return Err(DecodeError::TooBig {
            len: out.len(),
            max: MAX_PACKET_BYTES,
        });
    }
    Ok(out)
}

/// Decodes and checks a packet from untrusted bytes.
pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_PACKET_BYTES {
        return Err(DecodeError::TooBig {
            len: bytes.len(),
            max: MAX_PACKET_BYTES,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let packet: Packet = options()
        .deserialize(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    check_packet(&packet)?;
    Ok(packet)
}

fn check_str(what: &'static str, s: &str) -> Result<(), DecodeError> {
    if s.len() > MAX_STRING {
        return Err(DecodeError::Limit {
            what,
            len: s.len(),
            max: MAX_STRING,
        });
    }
    Ok(())
}

fn check_peer(p: &PeerInfo) -> Result<(), DecodeError> {
    if p.id.is_empty() {
        return Err(DecodeError::Invalid("node id"));
    }
    check_str("node id", &p.id)?;
    check_str("peer address", &p.peer_addr)?;
    if let Some(h) = &p.http_addr {
        check_str("http address", h)?;
    }
    Ok(())
}

fn check_number(what: &'static str, x: f64) -> Result<(), DecodeError> {
    if x.is_finite() && (0.0..=MAX_SCORE).contains(&x) {
        Ok(())
    } else {
        Err(DecodeError::Invalid(what))
    }
}

fn check_load(l: &LoadSummary) -> Result<(), DecodeError> {
    if l.services.len() > MAX_SERVICES {
        return Err(DecodeError::Limit {
            what: "services",
            len: l.services.len(),
            max: MAX_SERVICES,
        });
    }
    for s in &l.services {
        check_str("service name", &s.service)?;
        check_str("service instance", &s.instance)?;
        if s.kv_blocks_used > s.kv_blocks_total {
            return Err(DecodeError::Invalid("kv_blocks_used"));
        }
    }
    Ok(())
}

fn check_packet(p: &Packet) -> Result<(), DecodeError> {
    check_peer(&p.from)?;
    match &p.body {
        Body::Swim(_) => Ok(()),
        Body::Exchange(x) => {
            if x.entries.len() > MAX_ENTRIES {
                return Err(DecodeError::Limit {
                    what: "entries",
                    len: x.entries.len(),
                    max: MAX_ENTRIES,
                });
            }
            for e in &x.entries {
                check_peer(&e.info)?;
                check_load(&e.load)?;
                if !(e.in_flight.is_finite() && e.in_flight.abs() <= MAX_SCORE) {
                    return Err(DecodeError::Invalid("in_flight"));
                }
            }
            Ok(())
        }
        Body::Offer(o) => {
            check_str("item id", &o.item)?;
            if let Some(service) = &o.service {
                check_str("offer service", service)?;
            }
            check_number("weight", o.weight)?;
            check_number("sender_score", o.sender_score)?;
            check_number("sender_mean", o.sender_mean)
        }
        Body::Answer(a) => {
            check_str("item id", &a.item)?;
            check_number("recipient_score", a.recipient_score)
        }
        Body::SettleAck(_) => Ok(()),
        Body::Settle(s) => {
            check_str("item id", &s.item)?;
            check_number("weight", s.weight)
        }
    }
}
