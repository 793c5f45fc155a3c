//! Dry runs of drains and job updates (`whatif`): the real core on a copy,
//! reporting moves, SLA breaches and waits, and leaving the state alone.

use orrery_events::command::Command;
use orrery_events::pb::{self, TaskState};
use orrery_events::state::JobKey;
use orrery_events::testkit::{shell, Scenario};
use orrery_events::whatif::{dry_run, Assumptions, Change};
use orrery_events::{digest, jobs, FrameworkId, Rejection, Resources};

fn spec(name: &str, instances: u32, cmd: &str) -> pb::JobSpec {
    pb::JobSpec {
        key: Some(pb::JobKey {
            role: "www".into(),
            env: "prod".into(),
            name: name.into(),
        }),
        instances,
        command: Some(shell(cmd)),
        resources: Some(Resources::parse("cpus:1;mem:128").unwrap().to_proto()),
        max_unavailable: 1,
        service: true,
        ..Default::default()
    }
}

/// Three hosts of 2 cpus; a job of `instances` one-cpu instances, running.
fn cluster(instances: u32) -> (Scenario, FrameworkId) {
    let mut s = Scenario::with_leader();
    for h in ["h1", "h2", "h3"] {
        s.agent(h, "cpus:2;mem:4096", None);
    }
    let fw = s.framework(Scenario::subscription(
        jobs::FRAMEWORK_NAME,
        jobs::FRAMEWORK_ROLE,
    ));
    s.given(Command::CreateJob(spec("web", instances, "sleep 1000")));
    s.run_jobs(&fw, 20);
    let running = s
        .cluster
        .tasks
        .values()
        .filter(|t| t.state == TaskState::TaskRunning)
        .count();
    assert_eq!(
        running, instances as usize,
        "the job runs before the dry run"
    );
    (s, fw)
}

fn hosts_with_tasks(s: &Scenario) -> Vec<String> {
    let mut hs: Vec<String> = s
        .cluster
        .tasks
        .values()
        .filter(|t| !t.is_terminal())
        .map(|t| s.cluster.agents[&t.agent_id].hostname.clone())
        .collect();
    hs.sort();
    hs.dedup();
    hs
}

#[test]
fn a_dry_run_drain_moves_the_tasks_within_the_sla_and_changes_nothing() {
    let (s, _) = cluster(3);
    let busy = hosts_with_tasks(&s)[0].clone();
    let on_busy = s
        .cluster
        .tasks
        .values()
        .filter(|t| !t.is_terminal() && s.cluster.agents[&t.agent_id].hostname == busy)
        .count();
    let before = digest(&s.cluster);
    let r = dry_run(
        &s.cluster,
        Change::Drain(vec![busy.clone()]),
        &Assumptions::default(),
        s.now_ms,
    )
    .expect("the drain is allowed");
    assert_eq!(before, digest(&s.cluster), "a dry run changes nothing");
    assert_eq!(r.from_index, s.cluster.applied_index);
    assert_eq!(r.moves.len(), on_busy, "{r:#?}");
    for m in &r.moves {
        assert_eq!(m.from_host, busy);
        let (_, to) = m.to.as_ref().expect("replaced");
        assert_ne!(to, &busy, "never back onto the draining host");
        assert!(m.job.as_ref().is_some_and(|(j, _)| j == "www/prod/web"));
        assert!(m.running_after_ms.is_some_and(|t| t >= 10_000), "{m:?}");
        assert_eq!(m.why, "drained within the job's SLA");
    }
    assert!(r.below_sla.is_empty(), "{:?}", r.below_sla);
    assert_eq!(r.hosts.len(), 1);
    assert_eq!(r.hosts[0].state, "HOST_STATE_DRAINED");
    let done = r.done_after_ms.expect("drained within the horizon");
    assert_eq!(r.hosts[0].drained_after_ms, Some(done));
    // One instance at a time (max_unavailable 1): a second move waits for
    // the first replacement to run.
    if r.moves.len() > 1 {
        assert!(r.moves[1].stopped_after_ms >= r.moves[0].running_after_ms.unwrap());
    }
    assert!(r.waiting.is_empty());
}

#[test]
fn a_drain_with_no_room_waits_and_says_for_what() {
    // 6 instances fill all three hosts: nothing can move anywhere.
    let (s, _) = cluster(6);
    let r = dry_run(
        &s.cluster,
        Change::Drain(vec!["h1".into()]),
        &Assumptions {
            horizon_ms: 600_000,
            ..Default::default()
        },
        s.now_ms,
    )
    .unwrap();
    assert_eq!(r.done_after_ms, None);
    assert_eq!(r.simulated_ms, 600_000);
    assert_eq!(r.hosts[0].state, "HOST_STATE_DRAINING");
    // The SLA allows one instance down: one is killed, never replaced.
    assert_eq!(r.moves.len(), 1, "{:#?}", r.moves);
    assert_eq!(r.moves[0].to, None);
    assert!(
        r.below_sla.is_empty(),
        "one down is within max_unavailable 1"
    );
    assert!(
        r.waiting
            .iter()
            .any(|w| w.contains("www/prod/web") && w.starts_with("h1:")),
        "{:?}",
        r.waiting
    );
}

#[test]
fn a_framework_task_is_killed_at_the_drain_grace_unless_the_framework_accepts() {
    let mut s = Scenario::with_leader();
    let a = s.agent("h1", "cpus:2;mem:4096", None);
    let fw = s.framework(Scenario::subscription("batch", "analytics"));
    s.allocate();
    let offer = s.offer_for(&fw, &a).unwrap();
    s.accept(
        &fw,
        &offer,
        vec![Scenario::task_spec("t1", "cpus:1;mem:128")],
    )
    .unwrap();
    s.given(s.status(&a, &fw, "t1", TaskState::TaskRunning, "t1-u1"));
    let grace = s.cluster.leader.as_ref().unwrap().config.drain_grace_ms;

    let r = dry_run(
        &s.cluster,
        Change::Drain(vec!["h1".into()]),
        &Assumptions::default(),
        s.now_ms,
    )
    .unwrap();
    assert_eq!(r.moves.len(), 1);
    let m = &r.moves[0];
    assert_eq!((m.task_id.as_str(), m.job.as_ref()), ("t1", None));
    assert_eq!(m.to, None, "nobody replaces a framework's task");
    assert_eq!(m.why, "the drain grace passed");
    assert!(
        m.stopped_after_ms >= grace && m.stopped_after_ms < grace + 120_000,
        "{} vs grace {grace}",
        m.stopped_after_ms
    );
    assert!(r.done_after_ms.is_some_and(|d| d >= grace));

    let quick = dry_run(
        &s.cluster,
        Change::Drain(vec!["h1".into()]),
        &Assumptions {
            frameworks_accept_inverse_offers: true,
            ..Default::default()
        },
        s.now_ms,
    )
    .unwrap();
    assert_eq!(
        quick.moves[0].why,
        "its framework accepted the inverse offer"
    );
    assert!(quick.done_after_ms.unwrap() < 10_000, "{quick:?}");
}

#[test]
fn a_dry_run_update_replaces_every_instance_and_finishes() {
    let (s, _) = cluster(3);
    let before = digest(&s.cluster);
    let key = JobKey::from_proto(spec("web", 3, "").key.as_ref());
    let version = s.cluster.jobs[&key].version;
    let r = dry_run(
        &s.cluster,
        Change::UpdateJob(Box::new(spec("web", 3, "sleep 2000"))),
        &Assumptions::default(),
        s.now_ms,
    )
    .unwrap();
    assert_eq!(before, digest(&s.cluster));
    assert_eq!(s.cluster.jobs[&key].version, version);
    assert_eq!(r.outcome, "finished", "{r:#?}");
    assert_eq!(r.moves.len(), 3);
    assert!(r
        .moves
        .iter()
        .all(|m| m.why == "replaced by the update" && m.to.is_some()));
    // batch_size 1: the instances go one after another.
    let mut stops: Vec<u64> = r.moves.iter().map(|m| m.stopped_after_ms).collect();
    stops.dedup();
    assert_eq!(stops.len(), 3, "{stops:?}");
    assert!(r.below_sla.is_empty(), "{:?}", r.below_sla);
    assert!(r.done_after_ms.is_some());
}

#[test]
fn what_the_real_call_would_refuse_the_dry_run_refuses() {
    let (s, _) = cluster(1);
    let e = dry_run(
        &s.cluster,
        Change::Drain(vec!["nosuchhost".into()]),
        &Assumptions::default(),
        s.now_ms,
    )
    .unwrap_err();
    assert!(matches!(e, Rejection::UnknownHost { .. }), "{e:?}");
    let e = dry_run(
        &s.cluster,
        Change::UpdateJob(Box::new(spec("other", 1, "true"))),
        &Assumptions::default(),
        s.now_ms,
    )
    .unwrap_err();
    assert!(e.to_string().contains("www/prod/other"), "{e}");
    let e = dry_run(
        &s.cluster,
        Change::Drain(vec!["h1".into()]),
        &Assumptions {
            horizon_ms: 0,
            ..Default::default()
        },
        s.now_ms,
    )
    .unwrap_err();
    assert!(e.to_string().contains("horizon"), "{e}");
}

#[test]
fn an_update_in_batches_wider_than_the_sla_is_reported_below_it() {
    let (s, _) = cluster(3);
    let mut wide = spec("web", 3, "sleep 2000");
    wide.update_strategy = Some(pb::UpdateStrategy {
        batch_size: 2,
        watch_ms: 0,
        rollback_on_failure: true,
    });
    let r = dry_run(
        &s.cluster,
        Change::UpdateJob(Box::new(wide)),
        &Assumptions::default(),
        s.now_ms,
    )
    .unwrap();
    assert_eq!(r.outcome, "finished");
    assert_eq!(r.below_sla.len(), 1, "{r:#?}");
    let b = &r.below_sla[0];
    assert_eq!(
        (b.job.as_str(), b.instances, b.max_unavailable),
        ("www/prod/web", 3, 1)
    );
    assert_eq!(b.fewest_available, 1, "two of three replaced at once");
    assert!(!b.already_before);
}
