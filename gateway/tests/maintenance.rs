//! Host maintenance end to end, in process: drains that respect each job's
//! SLA, `start_before_kill`, inverse offers to frameworks, and drains that
//! outlive a master failover or an agent that is away.

mod common;

use std::time::Duration;

use common::*;
use orrery_events::pb::TaskState;
use orrery_proto::scheduler as sp;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);

fn local_settings() -> orrery_actors::master::Settings {
    let mut s = test_settings();
    s.domain = Some(orrery_events::state::Domain {
        region: "local".into(),
        zone: "a".into(),
    });
    s
}

fn running_on(s: &orrery_proto::operator::JobStatusResponse, host: &str) -> usize {
    s.instances
        .iter()
        .filter(|i| i.state == "TASK_RUNNING" && i.hostname == host)
        .count()
}

/// Samples every 10 ms until the 3 instances of `svc` run off host-a;
/// returns the fewest instances seen running.
async fn watch_drain(m: &Masters) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut fewest = 3;
    loop {
        fewest = fewest.min(instances_running(m, "svc").await);
        let s = status(m, "svc").await;
        let running = s
            .instances
            .iter()
            .filter(|i| i.state == "TASK_RUNNING")
            .count();
        if running == 3 && running_on(&s, "host-a") == 0 {
            return fewest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn host_state(m: &Masters, host: &str) -> Option<String> {
    hosts(m, &[])
        .await
        .into_iter()
        .find(|h| h.hostname == host)
        .map(|h| h.state)
}

async fn wait_host_state(m: &Masters, host: &str, state: &str) {
    eventually(&format!("{host} {state}"), WAIT, || async move {
        (host_state(m, host).await.as_deref() == Some(state)).then_some(())
    })
    .await;
}

/// 3 instances of `svc` (max_unavailable 1) on host-a, then host-b and
/// host-c join.
async fn three_on_host_a(m: &Masters, start_before_kill: bool) -> (SimAgent, Vec<SimAgent>) {
    let first = SimAgent::spawn_in(m.addrs(), "host-a", 4, Some(("local", "a")));
    let mut job = spec("svc", 3, &[]);
    job.max_unavailable = 1;
    job.start_before_kill = start_before_kill;
    create(m, job).await.expect("created");
    eventually("3 on host-a", WAIT, || async move {
        (running_on(&status(m, "svc").await, "host-a") == 3).then_some(())
    })
    .await;
    let others: Vec<SimAgent> = ["host-b", "host-c"]
        .iter()
        .map(|h| SimAgent::spawn_in(m.addrs(), h, 4, Some(("local", "a"))))
        .collect();
    eventually("3 agents", WAIT, || async move {
        (m.state().await.agents.len() == 3).then_some(())
    })
    .await;
    (first, others)
}

/// Drains host-a under 3 instances (max_unavailable 1) until they all run
/// elsewhere and the host is DOWN; returns the fewest instances running.
fn drain_three_instances(start_before_kill: bool) -> usize {
    run(LIMIT, async {
        let m = Masters::start(1, local_settings()).await;
        let agents = three_on_host_a(&m, start_before_kill).await;
        start_maintenance(&m, &["host-a"]).await;
        let fewest = watch_drain(&m).await;
        // The empty host goes DRAINED, then DOWN by itself.
        wait_host_state(&m, "host-a", "HOST_STATE_DOWN").await;
        drop(agents);
        m.shutdown().await;
        fewest
    })
}

#[test]
fn draining_a_host_moves_a_job_within_its_sla_and_puts_the_host_down() {
    let fewest = drain_three_instances(false);
    assert!(
        fewest >= 2,
        "at most one instance down at a time, saw {fewest} running"
    );
}

#[test]
fn start_before_kill_drains_with_no_instance_down() {
    let fewest = drain_three_instances(true);
    assert_eq!(
        fewest, 3,
        "each replacement runs before the old task is killed"
    );
}

#[test]
fn a_drain_survives_a_master_failover() {
    run(LIMIT, async {
        let mut m = Masters::start(3, local_settings()).await;
        let agents = three_on_host_a(&m, false).await;
        start_maintenance(&m, &["host-a"]).await;
        // The leader dies mid-drain; the next one carries it on.
        let leader = m.leader().await;
        m.kill(leader).await;
        let fewest = watch_drain(&m).await;
        assert!(fewest >= 2, "the SLA held across the failover: {fewest}");
        wait_host_state(&m, "host-a", "HOST_STATE_DOWN").await;
        assert_ne!(m.leader().await, leader);
        drop(agents);
        m.shutdown().await;
    });
}

#[test]
fn a_drain_requested_while_the_agent_is_away_applies_when_it_returns() {
    run(LIMIT, async {
        let mut s = local_settings();
        // Away long enough to matter, not long enough to be unreachable.
        s.agent_ping_timeout = Duration::from_secs(2);
        s.max_agent_ping_timeouts = 10;
        let m = Masters::start(1, s).await;
        let (first, others) = three_on_host_a(&m, false).await;
        first
            .shared
            .detached
            .store(true, std::sync::atomic::Ordering::SeqCst);
        eventually("host-a's agent disconnected", WAIT, || async {
            let state = m.state().await;
            state
                .agents
                .iter()
                .any(|a| a.hostname == "host-a" && a.state == "DISCONNECTED")
                .then_some(())
        })
        .await;
        start_maintenance(&m, &["host-a"]).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let running_there = first
            .shared
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter(|s| **s == TaskState::TaskRunning as i32)
            .count();
        assert_eq!(running_there, 3, "nothing reached the agent while away");
        assert_eq!(
            host_state(&m, "host-a").await.as_deref(),
            Some("HOST_STATE_DRAINING")
        );
        // It returns: the drain goes on, within the SLA, to DOWN.
        first
            .shared
            .detached
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let fewest = watch_drain(&m).await;
        assert!(fewest >= 2, "the SLA held: {fewest}");
        wait_host_state(&m, "host-a", "HOST_STATE_DOWN").await;
        drop((first, others));
        m.shutdown().await;
    });
}

/// A framework's task on host-a, RUNNING.
async fn framework_with_task(m: &Masters, name: &str, task: &str) -> Framework {
    let mut fw = Framework::subscribe(m.addrs(), framework_info(name, name, &[]), true).await;
    let offers = fw.offers(WAIT).await;
    // A long filter: the rest of host-a goes to the next framework.
    fw.call(launch(&offers[0], task, 1000, Some(3600.0)))
        .await
        .expect("launched");
    fw.next("RUNNING", WAIT, |e| match e {
        sp::event::Event::Update(u)
            if u.status
                .as_ref()
                .is_some_and(|s| s.task_id == task && s.state == TaskState::TaskRunning as i32) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    fw
}

async fn inverse_offer(fw: &mut Framework) -> sp::InverseOffer {
    fw.next("an inverse offer", WAIT, |e| match e {
        sp::event::Event::InverseOffers(o) => o.inverse_offers.into_iter().next(),
        _ => None,
    })
    .await
}

/// Waits for the task's KILLED update.
async fn killed_for_maintenance(fw: &mut Framework, task: &str) {
    fw.next("TASK_KILLED", WAIT, |e| match e {
        sp::event::Event::Update(u)
            if u.status
                .as_ref()
                .is_some_and(|s| s.task_id == task && s.state == TaskState::TaskKilled as i32) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
}

#[test]
fn inverse_offers_are_answered_and_frameworks_tasks_drained() {
    run(LIMIT, async {
        let mut s = test_settings();
        s.drain_grace = Duration::from_secs(2);
        let m = Masters::start(1, s).await;
        let agent = SimAgent::spawn(m.addrs(), "host-a", 4);
        let mut a = framework_with_task(&m, "fa", "a1").await;
        let mut b = framework_with_task(&m, "fb", "b1").await;

        let started = tokio::time::Instant::now();
        start_maintenance(&m, &["host-a"]).await;
        let ia = inverse_offer(&mut a).await;
        let ib = inverse_offer(&mut b).await;
        assert_eq!(ia.hostname, "host-a");
        assert_eq!(ia.framework_id, a.id());
        assert!(ia.unavailability.is_some());
        a.call(sp::call::Call::AcceptInverseOffers(
            sp::AcceptInverseOffers {
                inverse_offer_ids: vec![ia.offer_id.clone()],
            },
        ))
        .await
        .expect("accepted");
        b.call(sp::call::Call::DeclineInverseOffers(
            sp::DeclineInverseOffers {
                inverse_offer_ids: vec![ib.offer_id.clone()],
            },
        ))
        .await
        .expect("declined");
        // A framework cannot answer another's inverse offer.
        let err = a
            .call(sp::call::Call::AcceptInverseOffers(
                sp::AcceptInverseOffers {
                    inverse_offer_ids: vec![ib.offer_id.clone()],
                },
            ))
            .await
            .expect_err("not its inverse offer");
        assert!(err.message().contains(&ib.offer_id), "{err:?}");

        // The operator sees the answers (Mesos' maintenance status).
        let answers: Vec<(String, String)> = hosts(&m, &["HOST_STATE_DRAINING"])
            .await
            .into_iter()
            .flat_map(|h| h.inverse_offers)
            .map(|o| (o.framework_id, o.status))
            .collect();
        assert!(answers.contains(&(a.id(), "ACCEPT".into())), "{answers:?}");
        assert!(answers.contains(&(b.id(), "DECLINE".into())), "{answers:?}");

        // The accepting framework's task goes at once; the declining one's
        // when the drain grace (2 s) has passed.
        killed_for_maintenance(&mut a, "a1").await;
        let a_gone = started.elapsed();
        killed_for_maintenance(&mut b, "b1").await;
        let b_gone = started.elapsed();
        assert!(
            a_gone < Duration::from_millis(1_800),
            "accepted: killed at once, took {a_gone:?}"
        );
        assert!(
            b_gone >= Duration::from_millis(1_900),
            "declined: killed after the grace, took {b_gone:?}"
        );
        wait_host_state(&m, "host-a", "HOST_STATE_DOWN").await;
        let rescinded = a
            .next("the inverse offer rescinded", WAIT, |e| match e {
                sp::event::Event::RescindInverseOffer(r) => Some(r.offer_id),
                _ => None,
            })
            .await;
        assert_eq!(rescinded, ia.offer_id);
        drop(agent);
        m.shutdown().await;
    });
}

#[test]
fn a_request_id_goes_from_the_call_into_the_log() {
    run(LIMIT, async {
        let m = Masters::start(1, test_settings()).await;
        let agent = SimAgent::spawn(m.addrs(), "host-q", 2);
        eventually("the agent registered", WAIT, || async {
            (m.state().await.agents.len() == 1).then_some(())
        })
        .await;
        let (resp, _) = orrery_gateway::client::with_leader(
            &orrery_gateway::client::Transport::Plain,
            &m.addrs(),
            PATIENCE,
            |ch| async move {
                let mut req = tonic::Request::new(orrery_proto::operator::Hosts {
                    hostnames: vec!["host-q".into()],
                });
                req.metadata_mut()
                    .insert("x-request-id", "ticket-4711".parse().unwrap());
                orrery_proto::operator::operator_client::OperatorClient::new(ch)
                    .start_maintenance(req)
                    .await
            },
        )
        .await
        .expect("drain started");
        assert_eq!(
            resp.metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("ticket-4711"),
            "the id comes back"
        );
        let (log, _) = orrery_gateway::client::with_leader(
            &orrery_gateway::client::Transport::Plain,
            &m.addrs(),
            PATIENCE,
            |ch| async move {
                orrery_proto::operator::operator_client::OperatorClient::new(ch)
                    .read_log(orrery_proto::operator::ReadLogRequest { from: 1, max: 1000 })
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
        .expect("the log");
        let tagged: Vec<&'static str> = log
            .events
            .iter()
            .map(|b| orrery_events::codec::decode(b).expect("decodes"))
            .filter(|e| e.request_id == "ticket-4711")
            .filter_map(|e| e.payload.as_ref().map(orrery_events::codec::event_name))
            .collect();
        assert!(tagged.contains(&"HostDrainStarted"), "{tagged:?}");
        // Events of the master's own making carry none.
        let first = orrery_events::codec::decode(&log.events[0]).unwrap();
        assert_eq!(first.request_id, "");
        drop(agent);
        m.shutdown().await;
    });
}
