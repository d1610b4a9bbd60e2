//! A rolling upgrade on real processes: the coordinators are replaced one
//! at a time (SIGTERM, then started again on the same data dir) by a
//! "newer binary" that writes a newer command format, while clients write
//! through every member. No acknowledged write is lost, the members agree
//! on their state at every step (so entries of the new format apply on the
//! members that do not write it exactly as on those that do), and writes
//! never stop for longer than a failover.
//!
//! The newer binary is this one with `HERD_TEST_COMMAND_FORMAT=next`: it
//! writes variables as `Command::PutVariableJson`, which this release reads
//! but does not write (`coordinator/src/machine/next_format.rs`: a format
//! ships in two releases, one that reads it and a later one that writes
//! it). A real older release is not built here: what this proves is the
//! upgrade path of the second step, and that entries written in the format
//! are applied identically by members that do not write it.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::members::{logs_of, member_report, must_agree, must_see_voters, Member};
use common::*;
use herd_api::client::HerdClient;
use herd_chaos::process_cluster::ProcessCluster;

/// Longest acceptable stretch without an acknowledged write: one failover,
/// as `raft_failover.rs` bounds it (0.4-0.65 s elections with the default
/// timings, docs/configuration.md, plus room for a loaded test machine).
const FAILOVER: Duration = Duration::from_secs(3);

/// What the writers saw: every acknowledged write, and the longest gap
/// between two consecutive acknowledgements (of any writer).
#[derive(Default)]
struct Acks {
    writes: Vec<(String, String)>,
    last: Option<Instant>,
    longest_gap: Duration,
}

/// Writes `w{writer}/{n}` until `stop`, each key retried until it is
/// acknowledged (rewriting the same value is harmless if a try whose
/// outcome was unknown had landed); starts no new key while `pause` is set.
async fn writer(
    client: HerdClient,
    writer: usize,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if pause.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let key = format!("w{writer}/{n}");
        let value = format!("v{n}");
        loop {
            if put(&client, &key, &value).await.is_ok() {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = Instant::now();
        let mut acks = acks.lock().expect("acks");
        if let Some(last) = acks.last {
            acks.longest_gap = acks.longest_gap.max(now - last);
        }
        acks.last = Some(now);
        acks.writes.push((key, value));
        n += 1;
    }
}

fn acked(acks: &Mutex<Acks>) -> usize {
    acks.lock().expect("acks").writes.len()
}

/// Waits until the writers have had `more` writes acknowledged.
async fn must_progress(acks: &Mutex<Acks>, more: usize, members: &[&Member]) {
    let target = acked(acks) + more;
    let reached = until_or_none(Duration::from_secs(30), || {
        (acked(acks) >= target).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "writes stalled at {}\n{}",
        acked(acks),
        logs_of(members)
    );
}

/// Which member leads, as the member at `addr` knows it.
fn leader_of(addr: &str) -> Option<u64> {
    member_report(addr)?["leader"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinators_replaced_one_at_a_time_by_a_newer_format_lose_no_acknowledged_write() {
    let addrs = ProcessCluster::pick_addrs(3).expect("addresses");
    let peers = addrs
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let root = tempfile::tempdir().expect("tempdir");
    let mut members: Vec<Member> = addrs
        .iter()
        .map(|(id, addr)| {
            Member::start(root.path(), *id, addr, &["--bootstrap", "--peers", &peers])
        })
        .collect();
    let all: Vec<String> = addrs.values().cloned().collect();
    must_see_voters(&all[0], 3, &members.iter().collect::<Vec<_>>()).await;

    // Six writers, two starting at each member (each falls back to the
    // others), so writes keep arriving through old and new members alike.
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let mut order = all.clone();
        order.rotate_left(w % all.len());
        let client = HerdClient::from_list(&order.join(",")).expect("client");
        writers.push(tokio::spawn(writer(
            client,
            w,
            acks.clone(),
            stop.clone(),
            pause.clone(),
        )));
    }
    must_progress(&acks, 50, &members.iter().collect::<Vec<_>>()).await;

    // Followers first and the leader last, as an operator would: one
    // failover in all.
    let leader = leader_of(&all[0]).expect("a leader");
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| members[i].id == leader);
    for (step, &i) in order.iter().enumerate() {
        let led_by = leader_of(&all[0]);
        let started = Instant::now();
        members[i].stop().await;
        members[i].set_env("HERD_TEST_COMMAND_FORMAT", "next");
        members[i].spawn();
        let everyone: Vec<&Member> = members.iter().collect();
        must_see_voters(&members[i].addr, 3, &everyone).await;
        // A write through the upgraded member only: an entry of the new
        // format, which members still on the old one must apply too.
        let upgraded = HerdClient::from_list(&members[i].addr).expect("client");
        let probe = format!("probe/{step}");
        must_put(&upgraded, &probe, "next format").await;
        for other in &members {
            let one = HerdClient::from_list(&other.addr).expect("client");
            assert_eq!(
                get(&one, &probe, false).await.expect("read").as_deref(),
                Some("next format"),
                "member {} did not apply the new-format write",
                other.id
            );
        }
        must_progress(&acks, 50, &everyone).await;
        eprintln!(
            "step {step}: member {} replaced in {:?} (leader before: {led_by:?}, after: {:?}); longest gap so far {:?}",
            members[i].id,
            started.elapsed(),
            leader_of(&members[i].addr),
            acks.lock().expect("acks").longest_gap
        );
        // Old and new members reached the same state from the same log.
        // (The writers pause meanwhile, so that the members can be caught
        // at one index; the pause is not a gap in service.)
        pause.store(true, Ordering::Relaxed);
        must_agree(&everyone).await;
        acks.lock().expect("acks").last = None;
        pause.store(false, Ordering::Relaxed);
    }
    let everyone: Vec<&Member> = members.iter().collect();
    for member in &members {
        assert!(
            member
                .log_text()
                .contains("writes variables in the next command format"),
            "member {} never ran as the newer binary",
            member.id
        );
    }

    stop.store(true, Ordering::Relaxed);
    for task in writers {
        task.await.expect("writer");
    }
    let (writes, longest_gap) = {
        let acks = acks.lock().expect("acks");
        (acks.writes.clone(), acks.longest_gap)
    };
    eprintln!(
        "{} writes acknowledged; longest stretch without one: {longest_gap:?}",
        writes.len()
    );
    for member in &members {
        let one = HerdClient::from_list(&member.addr).expect("client");
        must_read_all(&one, &writes, false).await;
    }
    must_agree(&everyone).await;
    assert!(
        longest_gap <= FAILOVER,
        "writes stopped for {longest_gap:?}, longer than a failover ({FAILOVER:?})\n{}",
        logs_of(&everyone)
    );
}
