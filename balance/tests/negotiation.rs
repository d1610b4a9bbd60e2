//! The offer → accept/reject → move → confirm/cancel exchange between
//! agents driven by hand, packet by packet.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herd_balance::wire::{self, Body, Exchange, Offer, Packet, Verdict, WireEntry};
use herd_balance::{
    Agent, Config, Event, ItemKind, LoadSummary, MovableItem, Outgoing, PeerInfo, RejectReason,
};

fn info(i: usize) -> PeerInfo {
    PeerInfo::new(format!("n{i}"), format!("addr-{i}"))
}

fn item(id: &str, w: f64) -> MovableItem {
    MovableItem {
        id: id.into(),
        kind: ItemKind::InferenceRequest,
        weight: w,
        moves_so_far: 0,
        last_moved_ms: None,
        service: None,
    }
}

/// Delivers packets among `agents` (by address) until quiet, at `now`.
fn pump(agents: &mut [Agent], mut out: Vec<Outgoing>, now: u64) {
    let mut rounds = 0;
    while !out.is_empty() && rounds < 100 {
        rounds += 1;
        let mut next = Vec::new();
        for o in out {
            let to = agents
                .iter_mut()
                .find(|a| a.me().peer_addr == o.to.peer_addr)
                .expect("known address");
            next.extend(to.receive(&o.packet, now).expect("valid packet"));
        }
        out = next;
    }
}

#[test]
fn a_heavy_agent_moves_an_item_to_a_light_one_and_both_record_it() {
    let cfg = Config::default();
    let mut agents = vec![
        Agent::new(info(0), 1, cfg.clone(), 10).unwrap(),
        Agent::new(info(1), 1, cfg, 11).unwrap(),
    ];
    agents[0].set_local_load(LoadSummary::from_score(80.0, 100));
    agents[0].set_movable(vec![item("big", 30.0), item("r1", 10.0), item("r2", 5.0)]);
    agents[1].set_local_load(LoadSummary::from_score(20.0, 100));
    let out = agents[0].add_seeds([info(1)], 0);
    pump(&mut agents, out, 0);
    let mut approved = None;
    for t in (0..5_000).step_by(250) {
        for i in 0..2 {
            let out = agents[i].tick(t);
            pump(&mut agents, out, t);
        }
        for e in agents[0].take_events() {
            if let Event::MoveApproved { item, to } = e {
                approved.get_or_insert((item, to, t));
            }
        }
        if approved.is_some() {
            break;
        }
    }
    let (moved, to, t) = approved.expect("an approved move within 5 s");
    assert_eq!(to.id, "n1");
    // Excess 30 over the mean 50: damped target 15, and the pair must not
    // swap order (cap 30): r1 (10) is nearest the target from below.
    assert_eq!(moved.id, "r1");
    let reserved = agents[1]
        .take_events()
        .into_iter()
        .any(|e| matches!(e, Event::IncomingReserved { ref item, .. } if item == "r1"));
    assert!(reserved, "the recipient reserved room");
    let out = agents[0].move_done("r1", true, t + 100);
    pump(&mut agents, out, t + 100);
    let received: Vec<Event> = agents[1].take_events();
    let got = received.iter().find_map(|e| match e {
        Event::MoveReceived { item, from } => Some((item.clone(), from.id.clone())),
        _ => None,
    });
    let (item, from) = got.expect("MoveReceived on the recipient");
    assert_eq!((item.id.as_str(), from.as_str()), ("r1", "n0"));
    assert_eq!(item.moves_so_far, 1);
    assert_eq!(item.last_moved_ms, Some(t + 100));
    assert_eq!(agents[0].stats().moves_out, 1);
    assert_eq!(agents[1].stats().moves_in, 1);
    assert_eq!(agents[0].moves_per_minute(t + 200), 1);
    // Counted while not yet in the measured load.
    // In one tick the sender also offered r2 (5), deciding on its score
    // with r1 already counted out (80 − 10 = 70, excess 10, target 5).
    assert!((agents[0].effective_score() - 65.0).abs() < 1e-6);
    assert!((agents[1].effective_score() - 35.0).abs() < 1e-6);
}

#[test]
fn a_cancelled_move_releases_the_reservation() {
    let cfg = Config::default();
    let mut agents = vec![
        Agent::new(info(0), 1, cfg.clone(), 1).unwrap(),
        Agent::new(info(1), 1, cfg, 2).unwrap(),
    ];
    agents[0].set_local_load(LoadSummary::from_score(80.0, 100));
    agents[0].set_movable(vec![item("r", 10.0)]);
    agents[1].set_local_load(LoadSummary::from_score(20.0, 100));
    let out = agents[0].add_seeds([info(1)], 0);
    pump(&mut agents, out, 0);
    let mut t = 0;
    while !agents[0]
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::MoveApproved { .. }))
    {
        t += 250;
        assert!(t < 5_000, "no approval");
        for i in 0..2 {
            let out = agents[i].tick(t);
            pump(&mut agents, out, t);
        }
    }
    assert!(agents[1].effective_score() > 29.9, "reserved");
    let out = agents[0].move_done("r", false, t);
    pump(&mut agents, out, t);
    assert!((agents[1].effective_score() - 20.0).abs() < 1e-6);
    assert!(agents[1]
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::IncomingCancelled { .. })));
    assert_eq!(agents[0].stats().moves_out, 0);
}

/// Five heavy senders offer to one light agent at once: its reservations
/// count, so it accepts only what keeps it no heavier than a sender.
#[test]
fn reservations_prevent_pile_on() {
    let mut light = Agent::new(info(9), 1, Config::default(), 3).unwrap();
    light.set_local_load(LoadSummary::from_score(0.0, 100));
    // Its neighbourhood: the five heavy senders at 80.
    for s in 0..5 {
        let p = Packet {
            from: info(s),
            generation: 1,
            body: Body::Exchange(Exchange {
                reply: false,
                entries: vec![WireEntry {
                    info: info(s),
                    generation: 1,
                    version: 1,
                    age_ms: 0,
                    load: LoadSummary::from_score(80.0, 100),
                    in_flight: 0.0,
                    moves_per_minute: 0,
                }],
            }),
        };
        light.receive(&wire::encode(&p).unwrap(), 0).unwrap();
    }
    let mut accepted = 0;
    let mut rejected = Vec::new();
    for s in 0..5 {
        let offer = Packet {
            from: info(s),
            generation: 1,
            body: Body::Offer(Offer {
                offer_id: 1,
                item: format!("item-{s}"),
                kind: ItemKind::BatchInstance,
                weight: 20.0,
                moves_so_far: 0,
                sender_score: 80.0,
                sender_mean: 66.7,
                service: None,
            }),
        };
        let out = light.receive(&wire::encode(&offer).unwrap(), 10).unwrap();
        assert_eq!(out.len(), 1);
        let answer = wire::decode(&out[0].packet).unwrap();
        match answer.body {
            Body::Answer(a) => match a.verdict {
                Verdict::Accepted => accepted += 1,
                Verdict::Rejected(r) => rejected.push(r),
            },
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    // 0 + 3 × 20 = 60 = 80 − 20: a fourth would put it above its senders.
    assert_eq!(accepted, 3, "rejected: {rejected:?}");
    assert!(rejected.iter().all(|r| *r == RejectReason::WouldReverse));
    assert!((light.effective_score() - 60.0).abs() < 1e-6);
    // The same offer repeated (its answer lost) is not reserved twice.
    let again = Packet {
        from: info(0),
        generation: 1,
        body: Body::Offer(Offer {
            offer_id: 1,
            item: "item-0".into(),
            kind: ItemKind::BatchInstance,
            weight: 20.0,
            moves_so_far: 0,
            sender_score: 80.0,
            sender_mean: 66.7,
            service: None,
        }),
    };
    light.receive(&wire::encode(&again).unwrap(), 20).unwrap();
    assert!((light.effective_score() - 60.0).abs() < 1e-6);
    // Reservations lapse if never settled.
    let ttl = light.config().reservation_ttl_ms;
    let _ = light.tick(10 + ttl);
    assert!(light.effective_score().abs() < 1e-6);
}

#[test]
fn an_item_over_its_budget_is_never_offered_or_accepted() {
    let cfg = Config::default();
    let mut agents = vec![
        Agent::new(info(0), 1, cfg.clone(), 4).unwrap(),
        Agent::new(info(1), 1, cfg.clone(), 5).unwrap(),
    ];
    let mut worn = item("worn", 10.0);
    worn.moves_so_far = cfg.move_budget;
    agents[0].set_local_load(LoadSummary::from_score(80.0, 100));
    agents[0].set_movable(vec![worn]);
    agents[1].set_local_load(LoadSummary::from_score(20.0, 100));
    let out = agents[0].add_seeds([info(1)], 0);
    pump(&mut agents, out, 0);
    for t in (0..5_000).step_by(250) {
        for i in 0..2 {
            let out = agents[i].tick(t);
            pump(&mut agents, out, t);
        }
    }
    assert_eq!(agents[0].stats().offers_sent, 0);
}

/// A load of `score` on a node running an instance (`instance`) of
/// `service` whose KV cache is empty (so the score is the CPU's alone).
fn running(score: f64, service: &str, instance: &str) -> LoadSummary {
    let mut load = LoadSummary::from_score(score, 100);
    load.services.push(herd_balance::ServiceLoad {
        service: service.into(),
        kv_blocks_total: 64,
        instance: instance.into(),
        ..Default::default()
    });
    load
}

fn request(id: &str, w: f64, moves: u32) -> MovableItem {
    MovableItem {
        moves_so_far: moves,
        service: Some("llm".into()),
        ..item(id, w)
    }
}

/// A heavy agent holds requests of `llm`; the lightest peer runs only
/// `chat`, a heavier one runs `llm`. Every request goes to the `llm` peer,
/// none is even offered to the `chat` one, which refuses one if offered
/// anyway; a request at its move budget never moves, and one moved its
/// last allowed time arrives with its count spent.
#[test]
fn requests_go_only_to_peers_running_their_service_and_within_budget() {
    let cfg = Config::default();
    let mut agents = vec![
        Agent::new(info(0), 1, cfg.clone(), 21).unwrap(),
        Agent::new(info(1), 1, cfg.clone(), 22).unwrap(),
        Agent::new(info(2), 1, cfg.clone(), 23).unwrap(),
    ];
    agents[0].set_local_load(running(90.0, "llm", "a0"));
    agents[1].set_local_load(running(0.0, "chat", "a1"));
    agents[2].set_local_load(running(30.0, "llm", "a2"));
    let spent = request("spent", 5.0, cfg.move_budget);
    let last = request("last", 5.0, cfg.move_budget - 1);
    let items = vec![
        request("r1", 5.0, 0),
        request("r2", 4.0, 0),
        request("r3", 6.0, 1),
        spent.clone(),
        last.clone(),
    ];
    agents[0].set_movable(items.clone());
    let out = agents[0].add_seeds([info(1), info(2)], 0);
    pump(&mut agents, out, 0);
    let mut moved = Vec::new();
    for t in (0..20_000).step_by(250) {
        for i in 0..3 {
            let out = agents[i].tick(t);
            pump(&mut agents, out, t);
        }
        let approved: Vec<(MovableItem, PeerInfo)> = agents[0]
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::MoveApproved { item, to } => Some((item, to)),
                _ => None,
            })
            .collect();
        for (item, to) in approved {
            assert_eq!(to.id, "n2", "{} offered to a peer without llm", item.id);
            assert_ne!(item.id, "spent", "an item past its budget moved");
            let out = agents[0].move_done(&item.id, true, t);
            pump(&mut agents, out, t);
            moved.push(item.id.clone());
        }
        // The sender lists what is still here, as a caller would.
        let left: Vec<MovableItem> = items
            .iter()
            .filter(|i| !moved.contains(&i.id))
            .cloned()
            .collect();
        agents[0].set_movable(left);
    }
    assert!(!moved.is_empty(), "no request moved to the llm peer");
    assert!(
        !agents[1]
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::IncomingReserved { .. })),
        "the chat-only peer reserved room for a request"
    );
    let arrived: Vec<MovableItem> = agents[2]
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::MoveReceived { item, .. } => Some(item),
            _ => None,
        })
        .collect();
    assert_eq!(arrived.len(), moved.len());
    for item in &arrived {
        assert_eq!(item.service.as_deref(), Some("llm"), "{item:?}");
        assert!(item.moves_so_far <= cfg.move_budget, "{item:?}");
        if item.id == "last" {
            assert_eq!(item.moves_so_far, cfg.move_budget, "{item:?}");
        }
    }

    // Offered anyway (a stale or hostile sender): refused, nothing held.
    let forged = Packet {
        from: info(0),
        generation: 1,
        body: Body::Offer(Offer {
            offer_id: 99,
            item: "r9".into(),
            kind: ItemKind::InferenceRequest,
            weight: 1.0,
            moves_so_far: 0,
            sender_score: 90.0,
            sender_mean: 40.0,
            service: Some("llm".into()),
        }),
    };
    let out = agents[1]
        .receive(&wire::encode(&forged).unwrap(), 30_000)
        .unwrap();
    let verdict = out
        .iter()
        .find_map(|o| match wire::decode(&o.packet).ok()?.body {
            Body::Answer(a) => Some(a.verdict),
            _ => None,
        })
        .expect("an answer");
    assert_eq!(verdict, Verdict::Rejected(RejectReason::NoInstance));
    assert!((agents[1].effective_score() - 0.0).abs() < 1e-9);
}
