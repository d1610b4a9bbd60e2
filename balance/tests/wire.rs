//! Hostile bytes: every malformed packet is refused with an error, never a
//! panic, and sizes are bounded.

use herd_balance::wire::{
    self, Body, Exchange, Offer, Packet, WireEntry, MAX_ENTRIES, MAX_PACKET_BYTES, MAX_STRING,
};
use herd_balance::{Agent, Config, DecodeError, ItemKind, LoadSummary, PeerInfo};

fn me() -> PeerInfo {
    PeerInfo::new("a", "127.0.0.1:1")
}

fn entry(id: &str) -> WireEntry {
    WireEntry {
        info: PeerInfo::new(id, "127.0.0.1:2"),
        generation: 1,
        version: 1,
        age_ms: 0,
        load: LoadSummary::from_score(10.0, 8),
        in_flight: 0.0,
        moves_per_minute: 0,
    }
}

fn exchange(n: usize) -> Packet {
    Packet {
        from: PeerInfo::new("b", "127.0.0.1:2"),
        generation: 1,
        body: Body::Exchange(Exchange {
            reply: true,
            entries: (0..n).map(|i| entry(&format!("n{i}"))).collect(),
        }),
    }
}

#[test]
fn a_valid_packet_round_trips() {
    let p = exchange(3);
    let bytes = wire::encode(&p).unwrap();
    assert_eq!(bytes[0], wire::WIRE_VERSION);
    assert_eq!(wire::decode(&bytes).unwrap(), p);
}

#[test]
fn every_truncation_of_a_valid_packet_is_an_error() {
    let bytes = wire::encode(&exchange(5)).unwrap();
    for len in 0..bytes.len() {
        assert!(
            wire::decode(&bytes[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(
        matches!(wire::decode(&long), Err(DecodeError::Malformed(_))),
        "trailing byte"
    );
}

#[test]
fn garbage_is_refused_without_panicking() {
    let mut rng = fastrand::Rng::with_seed(23);
    let mut agent = Agent::new(me(), 1, Config::default(), 1).unwrap();
    for round in 0..5_000 {
        let len = rng.usize(0..512);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if round % 2 == 0 && !bytes.is_empty() {
            bytes[0] = wire::WIRE_VERSION;
        }
        // Must return (Ok or Err), never panic; garbage is never Ok here
        // except by astronomically unlikely chance, so just exercise it.
        let _ = wire::decode(&bytes);
        let _ = agent.receive(&bytes, round);
    }
    assert!(agent.stats().packets_refused > 4_000, "{:?}", agent.stats());
}

#[test]
fn flipped_bytes_of_valid_packets_never_panic() {
    let bytes = wire::encode(&exchange(4)).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..5_000 {
        let mut b = bytes.clone();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        let _ = wire::decode(&b);
    }
}

#[test]
fn sizes_are_bounded() {
    assert_eq!(wire::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(wire::decode(&[9, 0]), Err(DecodeError::UnknownVersion(9)));
    let big = vec![wire::WIRE_VERSION; MAX_PACKET_BYTES + 1];
    assert!(matches!(
        wire::decode(&big),
        Err(DecodeError::TooBig { .. })
    ));

    let too_many = wire::encode(&exchange(MAX_ENTRIES + 1)).unwrap();
    assert!(matches!(
        wire::decode(&too_many),
        Err(DecodeError::Limit {
            what: "entries",
            ..
        })
    ));

    let mut p = exchange(1);
    p.from.id = "x".repeat(MAX_STRING + 1);
    let bytes = wire::encode(&p).unwrap();
    assert!(matches!(
        wire::decode(&bytes),
        Err(DecodeError::Limit {
            what: "node id",
            ..
        })
    ));

    // A length prefix claiming a huge vector in a tiny packet.
    let mut bytes = wire::encode(&exchange(0)).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 1);
    bytes.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
    assert!(wire::decode(&bytes).is_err());
}

#[test]
fn impossible_numbers_are_refused() {
    for weight in [f64::NAN, -1.0, f64::INFINITY] {
        let p = Packet {
            from: PeerInfo::new("b", "x"),
            generation: 1,
            body: Body::Offer(Offer {
                offer_id: 1,
                item: "i".into(),
                kind: ItemKind::Allocation,
                weight,
                moves_so_far: 0,
                sender_score: 10.0,
                sender_mean: 5.0,
                service: None,
            }),
        };
        let bytes = wire::encode(&p).unwrap();
        assert_eq!(wire::decode(&bytes), Err(DecodeError::Invalid("weight")));
    }
}

#[test]
fn garbage_inside_a_valid_envelope_is_refused_by_membership() {
    let mut agent = Agent::new(me(), 1, Config::default(), 1).unwrap();
    let p = Packet {
        from: PeerInfo::new("b", "x"),
        generation: 1,
        body: Body::Swim(vec![0xff; 40]),
    };
    let bytes = wire::encode(&p).unwrap();
    assert!(matches!(
        agent.receive(&bytes, 0),
        Err(DecodeError::Membership(_))
    ));
    // And a packet claiming to come from the agent itself.
    let mut p = exchange(0);
    p.from = me();
    assert_eq!(
        agent.receive(&wire::encode(&p).unwrap(), 0),
        Err(DecodeError::FromSelf)
    );
}
