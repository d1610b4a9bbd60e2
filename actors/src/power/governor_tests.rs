//! The PowerGovernor actor on SIMULATED GPUs: spikes capped within a
//! sampling round, low priority first, the last share kept, nothing done
//! without a share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herd_api::power::Thresholds;
use ractor::{Actor, ActorRef};

use super::governor::{GovernorArgs, GovernorStatus, NodeShare, PowerGovernor, PowerMsg};
use super::policy::{PolicyConfig, PriorityClass};
use crate::resources::{GpuBackend, SimGpus, SimulatedGpuBackend};

/// Four simulated H100s: inference on 0 and 1, training on 2, batch on 3,
/// each 30 % busy (266 W, 1064 W together).
fn fleet() -> Arc<SimulatedGpuBackend> {
    let sim = SimulatedGpuBackend::new(SimGpus::new(4, "h100")).expect("sim");
    sim.set_all_activity(0.3).expect("valid");
    Arc::new(sim)
}

async fn spawn(gpu: Arc<SimulatedGpuBackend>) -> ActorRef<PowerMsg> {
    spawn_keeping(gpu, None).await
}

/// A governor that keeps its share in `share_file`.
async fn spawn_keeping(
    gpu: Arc<SimulatedGpuBackend>,
    share_file: Option<std::path::PathBuf>,
) -> ActorRef<PowerMsg> {
    let args = GovernorArgs {
        node: "n1".into(),
        gpu,
        sample_every: Duration::from_millis(20),
        config: PolicyConfig::default(),
        share_file,
    };
    let (actor, _) = Actor::spawn(None, PowerGovernor, args)
        .await
        .expect("governor starts");
    let classes: BTreeMap<u32, PriorityClass> = [
        (0, PriorityClass::Inference),
        (1, PriorityClass::Inference),
        (2, PriorityClass::Training),
        (3, PriorityClass::Batch),
    ]
    .into();
    actor.cast(PowerMsg::SetClasses(classes)).expect("classes");
    actor
}

fn share(watts: f64) -> Option<NodeShare> {
    Some(NodeShare {
        watts,
        thresholds: Thresholds::default(),
        group: "rack=r1".into(),
    })
}

async fn status(actor: &ActorRef<PowerMsg>) -> GovernorStatus {
    ractor::call!(actor, PowerMsg::Status).expect("status")
}

/// Waits until the governor has run `more` rounds after now: the round in
/// flight may have sampled before the change the caller just made, the next
/// one cannot have.
async fn rounds_later(actor: &ActorRef<PowerMsg>, more: u64) -> GovernorStatus {
    let start = status(actor).await.rounds;
    for _ in 0..1000 {
        let now = status(actor).await;
        if now.rounds >= start + more {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the governor ran no round in 5 s");
}

fn limits(gpu: &SimulatedGpuBackend) -> Vec<u32> {
    gpu.gpus()
        .expect("gpus")
        .iter()
        .map(|g| g.power_limit_watts)
        .collect()
}

fn draw(gpu: &SimulatedGpuBackend) -> f64 {
    gpu.gpus()
        .expect("gpus")
        .iter()
        .map(|g| g.power_draw_watts)
        .sum()
}

#[tokio::test]
async fn a_spike_is_capped_in_the_next_round_low_priority_first() {
    let gpu = fleet();
    let actor = spawn(gpu.clone()).await;
    actor
        .cast(PowerMsg::SetShare(share(2000.0)))
        .expect("share");
    rounds_later(&actor, 2).await;
    assert_eq!(limits(&gpu), [700; 4], "1064 W of 2000 W: nothing to cap");

    // Every GPU at full tilt: 2800 W against a 2000 W share.
    gpu.set_all_activity(1.0).expect("spike");
    let after = rounds_later(&actor, 2).await;
    // Batch and training at their floor; inference untouched, since
    // 1800 W is under the second threshold (97 % of 2000 W).
    assert_eq!(limits(&gpu), [700, 700, 200, 200]);
    assert!(draw(&gpu) <= 2000.0, "{}", draw(&gpu));
    let capped: Vec<u32> = after
        .gpus
        .iter()
        .filter(|g| g.capped)
        .map(|g| g.info.index)
        .collect();
    assert_eq!(capped, [2, 3]);
    assert!(
        after.events.iter().any(|e| e.kind == "cap"),
        "{:?}",
        after.events
    );
    actor.stop(None);
}

#[tokio::test]
async fn past_the_second_threshold_inference_is_capped_too() {
    let gpu = fleet();
    let actor = spawn(gpu.clone()).await;
    actor
        .cast(PowerMsg::SetShare(share(1500.0)))
        .expect("share");
    gpu.set_all_activity(1.0).expect("spike");
    rounds_later(&actor, 2).await;
    let l = limits(&gpu);
    assert_eq!(&l[2..], [200, 200]);
    assert!(l[0] < 700 && l[1] < 700, "{l:?}");
    let total = draw(&gpu);
    assert!(total <= 0.97 * 1500.0, "{total}");
    actor.stop(None);
}

#[tokio::test]
async fn the_last_share_is_kept_and_caps_are_released_as_the_load_falls() {
    let gpu = fleet();
    let actor = spawn(gpu.clone()).await;
    actor
        .cast(PowerMsg::SetShare(share(2000.0)))
        .expect("share");
    gpu.set_all_activity(1.0).expect("spike");
    rounds_later(&actor, 2).await;
    assert_eq!(limits(&gpu), [700, 700, 200, 200]);

    // A bad share (as from a broken coordinator) is ignored.
    let bad = NodeShare {
        watts: f64::NAN,
        thresholds: Thresholds::default(),
        group: "x".into(),
    };
    actor
        .cast(PowerMsg::SetShare(Some(bad)))
        .expect("bad share");

    // The load falls: limits come back, a step at a time.
    gpu.set_all_activity(0.2).expect("lull");
    let mut rounds = 0;
    while limits(&gpu) != [700; 4] {
        rounds_later(&actor, 1).await;
        rounds += 1;
        assert!(rounds < 200, "caps never released: {:?}", limits(&gpu));
    }
    assert!(rounds > 1, "released in steps, not at once");

    // No coordinator says anything more: the next spike is capped under
    // the share the governor kept.
    gpu.set_all_activity(1.0).expect("second spike");
    let after = rounds_later(&actor, 2).await;
    assert_eq!(limits(&gpu), [700, 700, 200, 200]);
    assert_eq!(after.share.map(|s| s.watts), Some(2000.0));
    actor.stop(None);
}

#[tokio::test]
async fn without_a_share_nothing_is_done_and_a_withdrawn_share_puts_limits_back() {
    let gpu = fleet();
    let actor = spawn(gpu.clone()).await;
    gpu.set_all_activity(1.0).expect("spike");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = status(&actor).await;
    assert_eq!(idle.rounds, 0, "no share: not even a sample");
    assert_eq!(limits(&gpu), [700; 4]);

    actor
        .cast(PowerMsg::SetShare(share(1000.0)))
        .expect("share");
    rounds_later(&actor, 2).await;
    assert!(limits(&gpu).iter().all(|l| *l < 700), "{:?}", limits(&gpu));

    actor.cast(PowerMsg::SetShare(None)).expect("withdrawn");
    for _ in 0..1000 {
        if limits(&gpu) == [700; 4] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(limits(&gpu), [700; 4], "limits put back");
    // The round that put them back reports to the actor just after.
    let mut after = status(&actor).await;
    for _ in 0..1000 {
        if after.gpus.iter().all(|g| !g.capped) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        after = status(&actor).await;
    }
    assert!(after.gpus.iter().all(|g| !g.capped), "{after:?}");
    // Nothing is left to put back: the governor goes quiet again.
    let rounds = after.rounds;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&actor).await.rounds, rounds);
    actor.stop(None);
}

/// A governor restarted (a new actor on the same data directory) holds the
/// share it had before and caps a spike with no coordinator saying
/// anything; a withdrawn share is forgotten on disk too.
#[tokio::test]
async fn a_restarted_governor_caps_to_the_share_it_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = crate::power::share_file::path_in(dir.path());
    let gpu = fleet();
    let first = spawn_keeping(gpu.clone(), Some(file.clone())).await;
    first
        .cast(PowerMsg::SetShare(share(2000.0)))
        .expect("share");
    rounds_later(&first, 2).await;
    first.stop(None);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let second = spawn_keeping(gpu.clone(), Some(file.clone())).await;
    gpu.set_all_activity(1.0).expect("spike");
    let after = rounds_later(&second, 2).await;
    assert_eq!(after.share, share(2000.0));
    assert_eq!(limits(&gpu), [700, 700, 200, 200]);
    assert!(draw(&gpu) <= 2000.0, "{}", draw(&gpu));
    assert!(
        after
            .events
            .iter()
            .any(|e| e.detail.contains("kept from before")),
        "{:?}",
        after.events
    );

    second.cast(PowerMsg::SetShare(None)).expect("withdrawn");
    // Handled in order: once the status answers, the share is gone.
    assert_eq!(status(&second).await.share, None);
    assert!(!file.exists(), "a withdrawn share is not kept");
    second.stop(None);
}
