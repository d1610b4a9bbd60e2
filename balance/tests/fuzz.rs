//! Fuzzing the balance gossip packets, wire format v2 (issue 24;
//! docs/fuzzing.md). Three sources of hostile input, each fed to a live
//! [`Agent`] between ticks, whose every answer must be `Ok` or a
//! [`DecodeError`], never a panic, and which must keep sane figures:
//!
//! - well-formed packets of any content (random peers, loads, offers,
//!   answers, settles; NaN and infinite numbers; oversized lists);
//! - real traffic of a small fleet (SWIM membership messages included),
//!   captured and then mutated: bytes changed, cut, spliced;
//! - raw bytes behind the version byte.
//!
//! Cases per target: `HERD_FUZZ_CASES` (short by default, for CI).

// Test harness code: a panic here is a test failure with its location
// (clippy.toml allows unwrap/expect in tests; helpers outside #[test] need this).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../api/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use herd_balance::wire::{self, Answer, Body, Exchange, Offer, Packet, Settle, Verdict, WireEntry};
use herd_balance::{
    Agent, Config, ItemKind, LoadSummary, MovableItem, PeerInfo, RejectReason, ServiceLoad,
};
use proptest::prelude::*;

fn me() -> PeerInfo {
    PeerInfo::new("a", "127.0.0.1:1")
}

fn small_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "n1", "", "127.0.0.1:2"]).prop_map(str::to_string),
        2 => "[a-z0-9:.]{0,8}",
        1 => (250usize..270).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -10.0f64..500.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MAX),
        1 => Just(-0.0),
        1 => any::<f64>(),
    ]
}

fn peer() -> impl Strategy<Value = PeerInfo> {
    (
        small_text(),
        small_text(),
        proptest::option::of(small_text()),
    )
        .prop_map(|(id, addr, http)| PeerInfo {
            id,
            peer_addr: addr,
            http_addr: http,
        })
}

fn kind() -> impl Strategy<Value = ItemKind> {
    prop::sample::select(vec![
        ItemKind::InferenceRequest,
        ItemKind::BatchInstance,
        ItemKind::Allocation,
    ])
}

fn load() -> impl Strategy<Value = LoadSummary> {
    let service = (
        small_text(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        small_text(),
    )
        .prop_map(
            |(service, queued, running, used, total, instance)| ServiceLoad {
                service,
                queued,
                running,
                kv_blocks_used: used,
                kv_blocks_total: total,
                instance,
            },
        );
    (
        fuzz_support::interesting_u64(),
        fuzz_support::interesting_u64(),
        fuzz_support::interesting_u64(),
        fuzz_support::interesting_u64(),
        any::<u32>(),
        prop_oneof![0u32..=1000, any::<u32>()],
        proptest::collection::vec(service, 0..4),
        any::<u32>(),
    )
        .prop_map(
            |(cpu_used, cpu_total, mem_used, mem_total, gpus, util, services, queued)| {
                LoadSummary {
                    cpu_used_milli: cpu_used,
                    cpu_total_milli: cpu_total,
                    memory_used_bytes: mem_used,
                    memory_total_bytes: mem_total,
                    gpus,
                    gpu_util_permille: util,
                    services,
                    queued_batch: queued,
                }
            },
        )
}

fn entry() -> impl Strategy<Value = WireEntry> {
    (
        peer(),
        fuzz_support::interesting_u64(),
        fuzz_support::interesting_u64(),
        fuzz_support::interesting_u64(),
        load(),
        number(),
        any::<u32>(),
    )
        .prop_map(
            |(info, generation, version, age_ms, load, in_flight, moves)| WireEntry {
                info,
                generation,
                version,
                age_ms,
                load,
                in_flight,
                moves_per_minute: moves,
            },
        )
}

fn body() -> impl Strategy<Value = Body> {
    let reason = prop::sample::select(vec![
        RejectReason::WouldReverse,
        RejectReason::Overloaded,
        RejectReason::TooManyReservations,
        RejectReason::OverBudget,
        RejectReason::NoInstance,
    ]);
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Body::Swim),
        3 => (any::<bool>(), proptest::collection::vec(entry(), 0..6))
            .prop_map(|(reply, entries)| Body::Exchange(Exchange { reply, entries })),
        2 => (0u64..4, small_text(), kind(), number(), any::<u32>(), number(), number(),
              proptest::option::of(small_text()))
            .prop_map(|(offer_id, item, kind, weight, moves_so_far, sender_score, sender_mean, service)| {
                Body::Offer(Offer { offer_id, item, kind, weight, moves_so_far, sender_score, sender_mean, service })
            }),
        2 => (0u64..4, small_text(), proptest::option::of(reason), number())
            .prop_map(|(offer_id, item, reason, recipient_score)| Body::Answer(Answer {
                offer_id,
                item,
                verdict: reason.map_or(Verdict::Accepted, Verdict::Rejected),
                recipient_score,
            })),
        2 => (0u64..4, small_text(), kind(), number(), any::<u32>(), any::<bool>())
            .prop_map(|(offer_id, item, kind, weight, moves_so_far, moved)| Body::Settle(Settle {
                offer_id, item, kind, weight, moves_so_far, moved,
            })),
        1 => (0u64..4).prop_map(Body::SettleAck),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        prop_oneof![4 => peer(), 1 => Just(me())],
        fuzz_support::interesting_u64(),
        body(),
    )
        .prop_map(|(from, generation, body)| Packet {
            from,
            generation,
            body,
        })
}

/// An agent with work to offer and a load, so offers and answers reach
/// the negotiation rather than stopping at "nothing to move".
fn busy_agent() -> Agent {
    let mut agent = Agent::new(me(), 1, Config::default(), 7).expect("default config is valid");
    agent.set_local_load(LoadSummary {
        cpu_used_milli: 3_500,
        cpu_total_milli: 4_000,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 8 << 30,
        gpus: 0,
        gpu_util_permille: 0,
        services: Vec::new(),
        queued_batch: 2,
    });
    agent.set_movable(vec![MovableItem {
        id: "a".into(),
        kind: ItemKind::BatchInstance,
        weight: 20.0,
        moves_so_far: 0,
        last_moved_ms: None,
        service: None,
    }]);
    let _ = agent.add_seeds([PeerInfo::new("b", "127.0.0.1:2")], 0);
    agent
}

/// Feeds `packets` to `agent` one by one, time moving on, and checks the
/// agent's figures after each.
fn feed(agent: &mut Agent, packets: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut now = 1_000;
    for bytes in packets {
        now += 137;
        let _ = agent.receive(bytes, now);
        let _ = agent.tick(now);
        let _ = agent.take_events();
        let score = agent.effective_score();
        prop_assert!(score.is_finite() && score >= 0.0, "score {score}");
        for v in agent.view(now) {
            prop_assert!(
                v.score.is_finite() && v.in_flight.is_finite(),
                "view of {:?}: score {}, in flight {}",
                v.info.id,
                v.score,
                v.in_flight
            );
        }
        let spread = agent.spread(now);
        prop_assert!(
            spread.mean.is_finite() && !spread.cv.is_nan() && !spread.max_over_mean.is_nan(),
            "{spread:?}"
        );
        let _ = agent.members();
    }
    let _ = agent.move_done("a", true, now + 1);
    let _ = agent.leave(now + 2);
    Ok(())
}

/// The packets a fleet of three agents sends each other over a few
/// seconds of ticks: real SWIM messages, exchanges, offers and answers.
fn real_traffic() -> Vec<Vec<u8>> {
    let peers: Vec<PeerInfo> = (0..3)
        .map(|i| PeerInfo::new(format!("n{i}"), format!("127.0.0.1:{}", 10 + i)))
        .collect();
    let mut agents: Vec<Agent> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut a = Agent::new(p.clone(), 1, Config::default(), i as u64 + 1)
                .expect("default config is valid");
            a.set_local_load(LoadSummary {
                cpu_used_milli: if i == 0 { 3_900 } else { 100 },
                cpu_total_milli: 4_000,
                memory_used_bytes: 0,
                memory_total_bytes: 8 << 30,
                gpus: 0,
                gpu_util_permille: 0,
                services: Vec::new(),
                queued_batch: 0,
            });
            if i == 0 {
                a.set_movable(
                    (0..4)
                        .map(|k| MovableItem {
                            id: format!("item-{k}"),
                            kind: ItemKind::Allocation,
                            weight: 20.0,
                            moves_so_far: 0,
                            last_moved_ms: None,
                            service: None,
                        })
                        .collect(),
                );
            }
            a
        })
        .collect();
    let mut queue = Vec::new();
    for (i, a) in agents.iter_mut().enumerate() {
        let seeds: Vec<PeerInfo> = peers
            .iter()
            .filter(|p| p.id != peers[i].id)
            .cloned()
            .collect();
        queue.extend(a.add_seeds(seeds, 0));
    }
    let mut captured = Vec::new();
    for step in 1..=60u64 {
        let now = step * 100;
        for a in agents.iter_mut() {
            queue.extend(a.tick(now));
        }
        for out in std::mem::take(&mut queue) {
            captured.push(out.packet.clone());
            if let Some(a) = agents.iter_mut().find(|a| a.me().id == out.to.id) {
                if let Ok(more) = a.receive(&out.packet, now) {
                    queue.extend(more);
                }
            }
        }
    }
    captured
}

/// A change to a captured packet.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Cut(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    /// The head of this packet and the tail of another.
    Splice(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    ),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Cut),
        2 => (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation, corpus: &[Vec<u8>]) {
    let at = |i: &prop::sample::Index, len: usize| i.index(len + 1).min(len);
    match m {
        Mutation::Set(i, b) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Set(..) => {}
        Mutation::Cut(i) => {
            let n = at(i, bytes.len());
            bytes.truncate(n);
        }
        Mutation::Insert(i, b) => {
            let n = at(i, bytes.len());
            bytes.splice(n..n, b.iter().copied());
        }
        Mutation::Splice(mine, other, theirs) => {
            let other = &corpus[other.index(corpus.len())];
            let keep = at(mine, bytes.len());
            let from = at(theirs, other.len());
            bytes.truncate(keep);
            bytes.extend_from_slice(&other[from..]);
        }
    }
}

proptest! {
    #![proptest_config(fuzz_support::config(1_000))]

    /// Well-formed packets of any content: the decoder's checks and the
    /// agent's handling.
    #[test]
    fn any_wellformed_packet_is_handled(packets in proptest::collection::vec(packet(), 1..8)) {
        let mut agent = busy_agent();
        let bytes: Vec<Vec<u8>> = packets
            .iter()
            .filter_map(|p| wire::encode(p).ok())
            .collect();
        feed(&mut agent, &bytes)?;
    }

    /// Captured real traffic, mutated.
    #[test]
    fn mutated_real_traffic_is_refused_or_handled(
        picks in proptest::collection::vec(
            (any::<prop::sample::Index>(), proptest::collection::vec(mutation(), 0..4)),
            1..8,
        ),
    ) {
        let corpus = corpus();
        let mut agent = busy_agent();
        let mut packets = Vec::new();
        for (pick, mutations) in &picks {
            let mut bytes = corpus[pick.index(corpus.len())].clone();
            for m in mutations {
                mutate(&mut bytes, m, corpus);
            }
            packets.push(bytes);
        }
        feed(&mut agent, &packets)?;
    }

    /// Raw bytes, behind the right version byte or not.
    #[test]
    fn raw_bytes_are_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        versioned in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if versioned {
            bytes.insert(0, wire::WIRE_VERSION);
        }
        let _ = wire::decode(&bytes);
        feed(&mut busy_agent(), &[bytes])?;
    }
}

/// The captured traffic, computed once per test binary.
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(real_traffic)
}

/// The captured corpus holds every kind of message worth mutating: SWIM,
/// exchanges, and a negotiation.
#[test]
fn the_captured_traffic_covers_the_protocol() {
    let mut swim = 0;
    let mut exchange = 0;
    let mut offer = 0;
    for bytes in corpus() {
        match wire::decode(bytes).map(|p| p.body) {
            Ok(Body::Swim(_)) => swim += 1,
            Ok(Body::Exchange(_)) => exchange += 1,
            Ok(Body::Offer(_) | Body::Answer(_) | Body::Settle(_) | Body::SettleAck(_)) => {
                offer += 1
            }
            Err(e) => panic!("captured traffic does not decode: {e}"),
        }
    }
    assert!(
        swim > 0 && exchange > 0 && offer > 0,
        "captured: {swim} SWIM, {exchange} exchanges, {offer} negotiation messages"
    );
}

/// Regression (found by `any_wellformed_packet_is_handled`): two settles of
/// weight `f64::MAX`, each finite, made the recipient's score infinite.
/// Weights, scores and in-flight figures over `MAX_SCORE` are refused.
#[test]
fn settles_of_huge_weight_cannot_make_a_score_infinite() {
    let settle = |offer_id, weight| Packet {
        from: PeerInfo::new("b", "a"),
        generation: 0,
        body: Body::Settle(Settle {
            offer_id,
            item: "a".into(),
            kind: ItemKind::InferenceRequest,
            weight,
            moves_so_far: 0,
            moved: true,
        }),
    };
    let mut agent = busy_agent();
    for offer_id in 0..2 {
        let bytes = wire::encode(&settle(offer_id, f64::MAX)).unwrap();
        assert_eq!(
            wire::decode(&bytes),
            Err(herd_balance::DecodeError::Invalid("weight"))
        );
        let _ = agent.receive(&bytes, 1_000 + offer_id);
    }
    assert!(agent.effective_score().is_finite());
    // The bound itself is accepted, and sums of it stay finite.
    let mut agent = busy_agent();
    for offer_id in 0..100 {
        let bytes = wire::encode(&settle(offer_id, wire::MAX_SCORE)).unwrap();
        assert!(wire::decode(&bytes).is_ok());
        let _ = agent.receive(&bytes, 1_000 + offer_id);
    }
    assert!(agent.effective_score().is_finite());

    let mut huge = Packet {
        from: PeerInfo::new("b", "a"),
        generation: 0,
        body: Body::Exchange(Exchange {
            reply: false,
            entries: Vec::new(),
        }),
    };
    if let Body::Exchange(x) = &mut huge.body {
        x.entries.push(WireEntry {
            info: PeerInfo::new("c", "a"),
            generation: 1,
            version: 1,
            age_ms: 0,
            load: LoadSummary::from_score(10.0, 8),
            in_flight: -f64::MAX,
            moves_per_minute: 0,
        });
    }
    let bytes = wire::encode(&huge).unwrap();
    assert_eq!(
        wire::decode(&bytes),
        Err(herd_balance::DecodeError::Invalid("in_flight"))
    );
}
