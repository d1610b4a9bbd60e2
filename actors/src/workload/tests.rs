//! The supervisor against real short processes run by the test driver.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herd_api::alloc::AllocStatus;
use herd_api::job::{JobType, TaskSpec};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::store::{AllocStore, HANDLE};
use super::test_driver::{TestDriver, NAME, PANIC};
use super::*;
use crate::driver::Driver;

const WAIT: Duration = Duration::from_secs(10);

fn policy() -> RestartPolicy {
    RestartPolicy {
        attempts: 2,
        interval: Duration::from_secs(60),
        delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    }
}

fn desired(id: &str, generation: u64, job_type: JobType, script: &str) -> DesiredAlloc {
    DesiredAlloc {
        alloc_id: id.into(),
        generation,
        job: "job".into(),
        job_type,
        task: TaskSpec {
            driver: NAME.into(),
            command: Some("/bin/sh".into()),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
            workdir: None,
            resources: Default::default(),
            config: Default::default(),
        },
        env: Default::default(),
        stop_after_disconnect: None,
        moving_out: None,
    }
}

struct Harness {
    sup: ActorRef<SupervisorMsg>,
    reports: UnboundedReceiver<AllocReport>,
    seen: Vec<AllocReport>,
}

impl Harness {
    async fn start(data_dir: &Path, driver: &Arc<TestDriver>) -> Self {
        let (tx, reports) = unbounded_channel();
        let as_dyn: Arc<dyn Driver> = driver.clone();
        let args = SupervisorArgs {
            data_dir: data_dir.to_path_buf(),
            drivers: HashMap::from([(NAME.to_string(), as_dyn)]),
            reports: tx,
            restart: policy(),
            stop_grace: Duration::from_millis(500),
        };
        let (sup, _) = Actor::spawn(None, WorkloadSupervisor, args)
            .await
            .expect("supervisor starts");
        Self {
            sup,
            reports,
            seen: Vec::new(),
        }
    }

    fn reconcile(&self, desired: Vec<DesiredAlloc>) {
        self.sup
            .cast(SupervisorMsg::Reconcile(desired))
            .expect("reconcile sent");
    }

    /// Waits for the next report of `alloc` with `event`, skipping others.
    async fn expect(&mut self, alloc: &str, event: &str) -> AllocReport {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let report = self.reports.recv().await.expect("channel open");
                self.seen.push(report.clone());
                if report.alloc_id == alloc && report.event == event {
                    return report;
                }
            }
        })
        .await;
        match found {
            Ok(report) => report,
            Err(_) => panic!("no {event:?} for {alloc}; seen {:#?}", self.seen),
        }
    }

    /// Every report arriving within `quiet` (none expected, usually).
    async fn drain(&mut self, quiet: Duration) -> Vec<AllocReport> {
        let mut got = Vec::new();
        while let Ok(Some(report)) = tokio::time::timeout(quiet, self.reports.recv()).await {
            got.push(report);
        }
        got
    }

    async fn snapshot(&self) -> Vec<AllocReport> {
        ractor::call!(self.sup, SupervisorMsg::Snapshot).expect("snapshot")
    }

    async fn stop(self) {
        self.sup
            .stop_and_wait(None, Some(WAIT))
            .await
            .expect("supervisor stops");
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn persisted_pid(data_dir: &Path, alloc: &str) -> u32 {
    let persisted = AllocStore::new(data_dir)
        .load(alloc)
        .expect("readable")
        .expect("handle persisted");
    persisted.handle.pid.expect("pid")
}

#[tokio::test]
async fn a_started_workload_is_running_in_the_snapshot_with_its_handle_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    h.reconcile(vec![desired(
        "a1",
        1,
        JobType::Service,
        "echo hi; sleep 30",
    )]);
    let started = h.expect("a1", event::STARTED).await;
    assert_eq!(
        (started.status, started.generation),
        (AllocStatus::Running, 1)
    );

    let snapshot = h.snapshot().await;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0].status, AllocStatus::Running);
    let alloc_dir = dir.path().join("allocs/a1");
    assert!(alloc_dir.join(HANDLE).is_file());
    assert!(alloc_dir.join(store::DESIRED).is_file());
    assert!(alive(persisted_pid(dir.path(), "a1")));

    let paths = ractor::call!(h.sup, SupervisorMsg::LogPaths, "a1".to_string()).expect("call");
    let (stdout, _) = paths.expect("known allocation");
    assert_eq!(stdout, alloc_dir.join("stdout.log"));
    let none = ractor::call!(h.sup, SupervisorMsg::LogPaths, "nope".to_string()).expect("call");
    assert_eq!(none, None);

    h.reconcile(vec![]);
    h.expect("a1", event::STOPPED).await;
    h.stop().await;
}

#[tokio::test]
async fn batch_work_exiting_zero_completes_and_is_not_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let batch = desired("b1", 1, JobType::Batch, "exit 0");
    h.reconcile(vec![batch.clone()]);
    h.expect("b1", event::STARTED).await;
    let done = h.expect("b1", event::COMPLETED).await;
    assert_eq!(done.status, AllocStatus::Complete);
    assert_eq!(done.exit.expect("exit").code, Some(0));

    // Still desired (the coordinators have not seen the report yet): not rerun.
    h.reconcile(vec![batch]);
    let later = h.drain(Duration::from_millis(300)).await;
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(driver.starts(), 1);
    assert_eq!(h.snapshot().await[0].status, AllocStatus::Complete);
    h.stop().await;
}

#[tokio::test]
async fn failing_work_is_restarted_by_the_policy_then_reported_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let service = desired("s1", 1, JobType::Service, "exit 3");
    let batch = desired("b2", 1, JobType::Batch, "exit 4");
    for (alloc, desired) in [("s1", vec![service.clone()]), ("b2", vec![service, batch])] {
        h.reconcile(desired);
        for _ in 0..2 {
            let restarted = h.expect(alloc, event::RESTARTED).await;
            assert_eq!(restarted.status, AllocStatus::Running);
            assert!(restarted.detail.contains("exit code"), "{restarted:?}");
        }
        let failed = h.expect(alloc, event::FAILED).await;
        assert_eq!(failed.status, AllocStatus::Failed);
        assert!(
            failed.detail.contains("gave up after 2 restarts"),
            "{failed:?}"
        );
    }
    let s1 = h
        .seen
        .iter()
        .rev()
        .find(|r| r.alloc_id == "s1")
        .expect("s1");
    assert_eq!(s1.exit.as_ref().and_then(|e| e.code), Some(3));
    assert_eq!(driver.starts(), 6, "three runs each");
    h.stop().await;
}

#[tokio::test]
async fn an_allocation_removed_from_the_desired_set_is_stopped_and_its_process_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    h.reconcile(vec![desired("a1", 1, JobType::Service, "sleep 30")]);
    h.expect("a1", event::STARTED).await;
    let pid = persisted_pid(dir.path(), "a1");

    h.reconcile(vec![]);
    let stopped = h.expect("a1", event::STOPPED).await;
    assert_eq!(stopped.status, AllocStatus::Stopped);
    assert!(!alive(pid), "process {pid} still runs");
    let alloc_dir = dir.path().join("allocs/a1");
    assert!(!alloc_dir.join(HANDLE).exists(), "handle forgotten");
    assert!(alloc_dir.join("stdout.log").exists(), "logs kept");
    assert_eq!(h.snapshot().await[0].status, AllocStatus::Stopped);
    h.stop().await;
}

#[tokio::test]
async fn a_new_supervisor_adopts_running_work_and_stops_nothing_before_reconciling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let service = desired("a1", 1, JobType::Service, "sleep 30");
    let batch = desired("b1", 1, JobType::Batch, "sleep 0.3");
    let mut first = Harness::start(dir.path(), &driver).await;
    first.reconcile(vec![service.clone(), batch.clone()]);
    first.expect("a1", event::STARTED).await;
    first.expect("b1", event::STARTED).await;
    let pid = persisted_pid(dir.path(), "a1");
    first.stop().await;

    // The batch work finishes while no supervisor runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = Harness::start(dir.path(), &driver).await;
    let adopted = second.expect("a1", event::ADOPTED).await;
    assert_eq!(adopted.status, AllocStatus::Running);
    let completed = second.expect("b1", event::COMPLETED).await;
    assert_eq!(completed.status, AllocStatus::Complete);

    // No reconcile yet: nothing is stopped.
    let quiet = second.drain(Duration::from_millis(300)).await;
    assert!(quiet.is_empty(), "{quiet:?}");
    assert!(alive(pid));
    assert_eq!(driver.stops.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Still desired: never a second copy.
    second.reconcile(vec![service, batch]);
    let quiet = second.drain(Duration::from_millis(300)).await;
    assert!(quiet.is_empty(), "{quiet:?}");
    assert_eq!(driver.starts(), 2);
    assert!(alive(pid));

    second.reconcile(vec![]);
    second.expect("a1", event::STOPPED).await;
    assert!(!alive(pid));
    second.stop().await;
}

#[tokio::test]
async fn a_workload_whose_handle_was_never_written_is_recovered_and_stopped_when_unwanted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut first = Harness::start(dir.path(), &driver).await;
    first.reconcile(vec![desired("a1", 1, JobType::Service, "sleep 30")]);
    first.expect("a1", event::STARTED).await;
    let pid = persisted_pid(dir.path(), "a1");
    first.stop().await;
    // The agent died after starting it, before writing its handle.
    let handle = dir.path().join("allocs").join("a1").join(HANDLE);
    std::fs::remove_file(&handle).expect("remove the handle");

    let mut second = Harness::start(dir.path(), &driver).await;
    let adopted = second.expect("a1", event::ADOPTED).await;
    assert_eq!(adopted.status, AllocStatus::Running);
    assert!(handle.exists(), "the recovered handle is persisted again");
    assert_eq!(driver.starts(), 1, "recovered, not started again");
    // Replaced while no agent ran: no longer desired, so it is stopped
    // rather than left running beside its replacement.
    second.reconcile(vec![]);
    second.expect("a1", event::STOPPED).await;
    assert!(!alive(pid));
    second.stop().await;
}

#[tokio::test]
async fn an_exit_while_no_agent_ran_is_restarted_once_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let service = desired("s1", 1, JobType::Service, "sleep 0.3; exit 5");
    let mut first = Harness::start(dir.path(), &driver).await;
    first.reconcile(vec![service.clone()]);
    first.expect("s1", event::STARTED).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut second = Harness::start(dir.path(), &driver).await;
    let exited = second.expect("s1", event::EXITED).await;
    assert_eq!(exited.exit.and_then(|e| e.code), Some(5));
    let quiet = second.drain(Duration::from_millis(200)).await;
    assert!(
        quiet.is_empty(),
        "not restarted before confirmed: {quiet:?}"
    );
    assert_eq!(driver.starts(), 1);

    second.reconcile(vec![service]);
    let restarted = second.expect("s1", event::RESTARTED).await;
    assert_eq!(restarted.status, AllocStatus::Running);
    second.reconcile(vec![]);
    second.expect("s1", event::STOPPED).await;
    second.stop().await;
}

#[tokio::test]
async fn a_higher_generation_replaces_the_running_one_and_a_lower_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    h.reconcile(vec![desired("a1", 1, JobType::Service, "sleep 30")]);
    h.expect("a1", event::STARTED).await;
    let old_pid = persisted_pid(dir.path(), "a1");

    h.reconcile(vec![desired("a1", 2, JobType::Service, "sleep 30")]);
    let stopped = h.expect("a1", event::STOPPED).await;
    assert_eq!(stopped.generation, 1);
    let started = h.expect("a1", event::STARTED).await;
    assert_eq!(started.generation, 2);
    assert!(!alive(old_pid));
    let new_pid = persisted_pid(dir.path(), "a1");
    assert!(alive(new_pid));

    h.reconcile(vec![desired("a1", 1, JobType::Service, "sleep 30")]);
    let quiet = h.drain(Duration::from_millis(300)).await;
    assert!(quiet.is_empty(), "{quiet:?}");
    assert_eq!(driver.starts(), 2);
    assert!(alive(new_pid));
    let snapshot = h.snapshot().await;
    assert_eq!(
        (snapshot[0].generation, snapshot[0].status),
        (2, AllocStatus::Running)
    );

    h.reconcile(vec![]);
    h.expect("a1", event::STOPPED).await;
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_driver_or_a_refused_start_is_reported_failed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let mut vm = desired("v1", 1, JobType::Service, "true");
    vm.task.driver = "vm".into();
    let mut empty = desired("e1", 1, JobType::Batch, "true");
    empty.task.command = None;
    h.reconcile(vec![vm.clone(), empty.clone()]);

    let unknown = h.expect("v1", event::FAILED).await;
    assert_eq!(unknown.status, AllocStatus::Failed);
    assert!(
        unknown.detail.contains("unknown driver \"vm\""),
        "{unknown:?}"
    );
    let refused = h.expect("e1", event::START_FAILED).await;
    assert_eq!(refused.status, AllocStatus::Failed);
    assert!(refused.detail.contains("no command"), "{refused:?}");

    h.reconcile(vec![vm, empty]);
    let quiet = h.drain(Duration::from_millis(300)).await;
    assert!(quiet.is_empty(), "reported once: {quiet:?}");
    assert_eq!(driver.starts(), 0);
    assert_eq!(h.snapshot().await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_crashed_workload_actor_is_reported_and_its_workload_adopted_not_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let service = desired("a1", 1, JobType::Service, "sleep 30");
    h.reconcile(vec![service.clone()]);
    h.expect("a1", event::STARTED).await;
    let pid = persisted_pid(dir.path(), "a1");

    let children = h.sup.get_children();
    assert_eq!(children.len(), 1);
    children[0]
        .send_message(workload_actor::WorkloadMsg::Crash)
        .expect("sent");
    let failed = h.expect("a1", event::FAILED).await;
    assert!(
        failed.detail.contains("workload actor failed"),
        "{failed:?}"
    );
    assert_eq!(
        h.snapshot().await[0].event,
        event::FAILED,
        "supervisor alive"
    );
    assert!(alive(pid));

    h.reconcile(vec![service]);
    let adopted = h.expect("a1", event::ADOPTED).await;
    assert_eq!(adopted.status, AllocStatus::Running);
    assert_eq!(driver.starts(), 1, "never a second copy");

    h.reconcile(vec![]);
    h.expect("a1", event::STOPPED).await;
    assert!(!alive(pid));
    h.stop().await;
}

#[tokio::test]
async fn a_panicking_driver_is_reported_as_a_failed_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let mut bad = desired("p1", 1, JobType::Batch, "true");
    bad.task.args.push(PANIC.into());
    h.reconcile(vec![bad]);
    let failed = h.expect("p1", event::START_FAILED).await;
    assert_eq!(failed.status, AllocStatus::Failed);
    assert!(failed.detail.contains("driver call failed"), "{failed:?}");
    h.reconcile(vec![]);
    let quiet = h.drain(Duration::from_millis(200)).await;
    assert!(quiet.is_empty(), "nothing ran, nothing to stop: {quiet:?}");
    h.stop().await;
}

#[tokio::test]
async fn silent_coordinators_stop_only_the_jobs_that_asked_and_never_restart_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(TestDriver::default());
    let mut h = Harness::start(dir.path(), &driver).await;
    let mut careful = desired("c1", 1, JobType::Service, "sleep 30");
    careful.stop_after_disconnect = Some(Duration::from_secs(2));
    let carefree = desired("f1", 1, JobType::Service, "sleep 30");
    // One at a time: `expect` skips the reports it is not waiting for.
    h.reconcile(vec![careful.clone()]);
    h.expect("c1", event::STARTED).await;
    h.reconcile(vec![careful.clone(), carefree.clone()]);
    h.expect("f1", event::STARTED).await;
    let careful_pid = persisted_pid(dir.path(), "c1");
    let carefree_pid = persisted_pid(dir.path(), "f1");

    // Silent, but not yet for long enough: nothing happens.
    h.sup
        .cast(SupervisorMsg::CoordinatorsSilent(Duration::from_millis(
            1900,
        )))
        .expect("sent");
    assert_eq!(h.drain(Duration::from_millis(300)).await, vec![]);

    h.sup
        .cast(SupervisorMsg::CoordinatorsSilent(Duration::from_secs(2)))
        .expect("sent");
    let lost = h.expect("c1", event::STOPPED_AFTER_DISCONNECT).await;
    assert_eq!((lost.status, lost.generation), (AllocStatus::Lost, 1));
    assert!(
        lost.detail.contains("stop_after_disconnect is 2s"),
        "{lost:?}"
    );
    h.expect("c1", event::STOPPED).await;
    assert!(!alive(careful_pid), "the careful job's workload still runs");
    assert!(
        alive(carefree_pid),
        "the job without the setting was stopped"
    );

    // An assignment that still names the stopped generation (the
    // coordinators have not heard the report yet) does not start it again;
    // a new generation does, but only once a coordinator is heard again:
    // started now it would only be stopped and reported lost once more.
    h.reconcile(vec![careful.clone(), carefree.clone()]);
    let quiet = h.drain(Duration::from_millis(500)).await;
    assert!(
        quiet.iter().all(|r| r.alloc_id != "c1"),
        "the stopped generation came back: {quiet:?}"
    );
    careful.generation = 2;
    h.reconcile(vec![careful, carefree]);
    let held = h.drain(Duration::from_millis(500)).await;
    assert!(
        held.iter().all(|r| r.alloc_id != "c1"),
        "started while the coordinators were still silent: {held:?}"
    );
    h.sup
        .cast(SupervisorMsg::CoordinatorsSilent(Duration::from_millis(
            100,
        )))
        .expect("sent");
    let again = h.expect("c1", event::STARTED).await;
    assert_eq!(again.generation, 2);
    assert!(alive(carefree_pid));

    h.reconcile(vec![desired("f1", 1, JobType::Service, "sleep 30")]);
    h.expect("c1", event::STOPPED).await;
    h.reconcile(vec![]);
    h.expect("f1", event::STOPPED).await;
    h.stop().await;
}
