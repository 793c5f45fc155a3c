//! The master end to end, in process: three masters with real raft logs on
//! disk and real gRPC on loopback, simulated agents, and framework clients
//! that speak the scheduler API. Two scenarios run again with the log in
//! TiKV (`_on_tikv`, on the in-process test double).

mod common;

use std::time::Duration;

use common::*;
use orrery_events::pb::{FrameworkCapability, TaskState};
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use orrery_proto::scheduler as sp;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn subscribe_offer_launch_update_acknowledge_reconcile() {
    run(LIMIT, async {
        subscribe_offer_launch_update_acknowledge_reconcile_on(
            Masters::start(3, test_settings()).await,
        )
        .await;
    });
}

/// The same, with the masters' log in TiKV (the test double).
#[test]
fn subscribe_offer_launch_update_acknowledge_reconcile_on_tikv() {
    run(LIMIT, async {
        subscribe_offer_launch_update_acknowledge_reconcile_on(
            Masters::start_tikv(3, test_settings()).await,
        )
        .await;
    });
}

async fn subscribe_offer_launch_update_acknowledge_reconcile_on(masters: Masters) {
    let a1 = SimAgent::spawn(masters.addrs(), "host-1", 4);
    let mut fw =
        Framework::subscribe(masters.addrs(), framework_info("web", "web", &[]), true).await;
    assert_eq!(fw.id(), "F1");

    let offers = fw.offers(WAIT).await;
    let offer = &offers[0];
    assert_eq!(offer.hostname, "host-1");
    assert_eq!(offer.resources.as_ref().unwrap().cpus_milli, 4000);
    fw.call(launch(offer, "t1", 1000, Some(0.0)))
        .await
        .expect("accepted");

    // The agent runs it; the framework hears TASK_RUNNING and acks it.
    let status = fw
        .next("TASK_RUNNING for t1", WAIT, |e| match e {
            sp::event::Event::Update(u) => u
                .status
                .filter(|s| s.task_id == "t1" && s.state == TaskState::TaskRunning as i32),
            _ => None,
        })
        .await;
    assert!(
        !status.uuid.is_empty(),
        "an agent's update carries a uuid to acknowledge"
    );
    assert_eq!(a1.task_count(), 1);
    fw.call(sp::call::Call::Acknowledge(sp::Acknowledge {
        task_id: "t1".into(),
        uuid: status.uuid.clone(),
    }))
    .await
    .expect("acknowledged");

    // Explicit reconcile: the known task and an unknown one.
    fw.call(sp::call::Call::Reconcile(sp::Reconcile {
        task_ids: vec!["t1".into(), "nope".into()],
    }))
    .await
    .expect("reconcile");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let s = fw
            .next("reconciliation updates", WAIT, |e| match e {
                sp::event::Event::Update(u) => u.status.filter(|s| s.uuid.is_empty()),
                _ => None,
            })
            .await;
        seen.push((s.task_id, s.state));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("nope".to_string(), TaskState::TaskLost as i32),
            ("t1".to_string(), TaskState::TaskRunning as i32)
        ]
    );
    // Implicit reconcile: every live task of the framework.
    fw.call(sp::call::Call::Reconcile(sp::Reconcile {
        task_ids: vec![],
    }))
    .await
    .expect("reconcile");
    let s = fw
        .next("implicit reconciliation", WAIT, |e| match e {
            sp::event::Event::Update(u) => u.status.filter(|s| s.uuid.is_empty()),
            _ => None,
        })
        .await;
    assert_eq!(
        (s.task_id.as_str(), s.state),
        ("t1", TaskState::TaskRunning as i32)
    );

    // Kill: the agent kills it and the framework hears TASK_KILLED.
    fw.call(sp::call::Call::Kill(sp::Kill {
        task_id: "t1".into(),
    }))
    .await
    .expect("kill");
    fw.next("TASK_KILLED for t1", WAIT, |e| match e {
        sp::event::Event::Update(u) => u
            .status
            .filter(|s| s.task_id == "t1" && s.state == TaskState::TaskKilled as i32),
        _ => None,
    })
    .await;

    // Every master agrees on the log; the leader's view shows it all.
    let state = masters.state().await;
    assert_eq!(state.agents.len(), 1);
    assert_eq!(state.frameworks.len(), 1);
    assert_eq!(task_state(&state, "F1", "t1"), Some(TaskState::TaskKilled));
    drop(a1);
    masters.shutdown().await;
}

#[test]
fn followers_redirect_to_the_leader() {
    run(LIMIT, async {
        let masters = Masters::start(3, test_settings()).await;
        let leader = masters.leader().await;
        let follower = *masters.peers.keys().find(|&&id| id != leader).unwrap();
        let ch = orrery_gateway::client::connect(
            &orrery_gateway::client::Transport::Plain,
            &masters.peers[&follower],
        )
        .await
        .unwrap();
        let err = OperatorClient::new(ch)
            .get_state(op::GetStateRequest {})
            .await
            .expect_err("a follower does not serve");
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            orrery_gateway::client::leader_hint(&err).as_deref(),
            Some(masters.peers[&leader].as_str()),
            "UNAVAILABLE names the leader in orrery-leader"
        );
        masters.shutdown().await;
    });
}

#[test]
fn stale_framework_instance_is_refused() {
    run(LIMIT, async {
        let masters = Masters::start(1, test_settings()).await;
        let mut first =
            Framework::subscribe(masters.addrs(), framework_info("f", "r", &[]), false).await;
        let old_stream = first.ids.lock().unwrap().stream_id.clone();
        // A second scheduler instance fails over to the same framework id.
        let mut info = framework_info("f", "r", &[]);
        info.framework_id = first.id();
        let second = Framework::subscribe(masters.addrs(), info, false).await;
        assert_eq!(second.id(), first.id());
        // The old instance's stream is told and closed ...
        first
            .next("the Error that ends the old stream", WAIT, |e| match e {
                sp::event::Event::Error(e) => Some(e.message),
                _ => None,
            })
            .await;
        // ... and its calls are refused.
        let err = second
            .call_as(&old_stream, sp::call::Call::Revive(sp::Revive {}))
            .await
            .expect_err("a stale stream's call is refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        second
            .call(sp::call::Call::Revive(sp::Revive {}))
            .await
            .expect("the current instance may call");
        masters.shutdown().await;
    });
}

#[test]
fn declined_agents_are_not_offered_again_until_the_filter_expires() {
    run(LIMIT, async {
        let masters = Masters::start(1, test_settings()).await;
        let _a1 = SimAgent::spawn(masters.addrs(), "host-1", 2);
        let _a2 = SimAgent::spawn(masters.addrs(), "host-2", 2);
        let mut fw =
            Framework::subscribe(masters.addrs(), framework_info("f", "r", &[]), false).await;
        // Collect one offer from each agent.
        let mut by_host = std::collections::BTreeMap::new();
        while by_host.len() < 2 {
            for o in fw.offers(WAIT).await {
                by_host.insert(o.hostname.clone(), o);
            }
        }
        // Decline host-1 for a minute, host-2 for nothing.
        fw.call(sp::call::Call::Decline(sp::Decline {
            offer_ids: vec![by_host["host-1"].offer_id.clone()],
            filters: Some(sp::Filters {
                refuse_seconds: Some(60.0),
            }),
        }))
        .await
        .expect("declined");
        fw.call(sp::call::Call::Decline(sp::Decline {
            offer_ids: vec![by_host["host-2"].offer_id.clone()],
            filters: Some(sp::Filters {
                refuse_seconds: Some(0.0),
            }),
        }))
        .await
        .expect("declined");
        // Over the next 10 allocation intervals host-2 comes back, host-1
        // never does.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut hosts = std::collections::BTreeSet::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(ev)) = tokio::time::timeout_at(deadline, fw.events.recv()).await {
                if let Some(sp::event::Event::Offers(o)) = ev.event {
                    for offer in o.offers {
                        hosts.insert(offer.hostname.clone());
                        fw.call(sp::call::Call::Decline(sp::Decline {
                            offer_ids: vec![offer.offer_id],
                            filters: Some(sp::Filters {
                                refuse_seconds: Some(0.0),
                            }),
                        }))
                        .await
                        .expect("declined");
                    }
                }
            }
        }
        assert!(
            hosts.contains("host-2"),
            "the unfiltered agent is offered again: {hosts:?}"
        );
        assert!(
            !hosts.contains("host-1"),
            "the filtered agent is not: {hosts:?}"
        );
        // Revive clears the filter (Mesos semantics).
        fw.call(sp::call::Call::Revive(sp::Revive {}))
            .await
            .expect("revived");
        fw.next("an offer from host-1 after revive", WAIT, |e| match e {
            sp::event::Event::Offers(o) => o
                .offers
                .iter()
                .any(|o| o.hostname == "host-1")
                .then_some(()),
            _ => None,
        })
        .await;
        masters.shutdown().await;
    });
}

/// Accepts every offer with one task of `cpus_milli` until told to stop;
/// returns the number of tasks launched.
async fn fill(
    fw: &mut Framework,
    prefix: &str,
    cpus_milli: u64,
    until: tokio::time::Instant,
) -> usize {
    let mut launched = 0;
    while tokio::time::Instant::now() < until {
        let Ok(Some(ev)) = tokio::time::timeout_at(until, fw.events.recv()).await else {
            break;
        };
        if let Some(sp::event::Event::Offers(o)) = ev.event {
            for offer in o.offers {
                let cpus = offer.resources.as_ref().map_or(0, |r| r.cpus_milli);
                if cpus >= cpus_milli {
                    let id = format!("{prefix}-{launched}");
                    if fw
                        .call(launch(&offer, &id, cpus_milli, Some(0.0)))
                        .await
                        .is_ok()
                    {
                        launched += 1;
                    }
                } else {
                    let _ = fw
                        .call(sp::call::Call::Decline(sp::Decline {
                            offer_ids: vec![offer.offer_id],
                            filters: Some(sp::Filters {
                                refuse_seconds: Some(0.0),
                            }),
                        }))
                        .await;
                }
            }
        }
    }
    launched
}

#[test]
fn drf_shares_converge_to_the_role_weights() {
    run(LIMIT, async {
        let masters = Masters::start(1, test_settings()).await;
        let (_, leader) = orrery_gateway::client::with_leader(
            &orrery_gateway::client::Transport::Plain,
            &masters.addrs(),
            PATIENCE,
            |ch| async move {
                OperatorClient::new(ch)
                    .update_weights(op::UpdateWeightsRequest {
                        weights: vec![
                            op::WeightInfo {
                                role: "light".into(),
                                weight: 1.0,
                            },
                            op::WeightInfo {
                                role: "heavy".into(),
                                weight: 3.0,
                            },
                        ],
                    })
                    .await
            },
        )
        .await
        .expect("weights set");
        assert!(!leader.is_empty());
        let mut light =
            Framework::subscribe(masters.addrs(), framework_info("l", "light", &[]), false).await;
        let mut heavy =
            Framework::subscribe(masters.addrs(), framework_info("h", "heavy", &[]), false).await;
        // Both frameworks are there before any resources are (DRF never
        // takes back what it gave). One cpu per agent, so that an offer is
        // exactly one task's worth and a framework holding offers counts
        // no more than it will use.
        let agents: Vec<SimAgent> = (0..32)
            .map(|i| SimAgent::spawn(masters.addrs(), &format!("host-{i}"), 1))
            .collect();
        // 32 cpus; both frameworks want all of it, one cpu per task.
        let until = tokio::time::Instant::now() + Duration::from_secs(6);
        let (l, h) = tokio::join!(
            fill(&mut light, "l", 1000, until),
            fill(&mut heavy, "h", 1000, until)
        );
        assert_eq!(l + h, 32, "the cluster is full: light {l}, heavy {h}");
        // Weighted DRF: heavy's share is three times light's (8 and 24),
        // within one task either way.
        assert!(
            (7..=9).contains(&l) && (23..=25).contains(&h),
            "light {l}, heavy {h}"
        );
        let state = masters.state().await;
        let running = state
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::TaskRunning as i32)
            .count();
        assert_eq!(running, 32);
        drop(agents);
        masters.shutdown().await;
    });
}

#[test]
fn a_framework_survives_the_leader_being_killed_and_keeps_its_tasks() {
    run(LIMIT, async {
        a_framework_survives_the_leader_being_killed_and_keeps_its_tasks_on(
            Masters::start(3, test_settings()).await,
        )
        .await;
    });
}

/// The same, with the masters' log in TiKV (the test double).
#[test]
fn a_framework_survives_the_leader_being_killed_and_keeps_its_tasks_on_tikv() {
    run(LIMIT, async {
        a_framework_survives_the_leader_being_killed_and_keeps_its_tasks_on(
            Masters::start_tikv(3, test_settings()).await,
        )
        .await;
    });
}

async fn a_framework_survives_the_leader_being_killed_and_keeps_its_tasks_on(mut masters: Masters) {
    let agents: Vec<SimAgent> = (0..2)
        .map(|i| SimAgent::spawn(masters.addrs(), &format!("host-{i}"), 4))
        .collect();
    let mut fw =
        Framework::subscribe(masters.addrs(), framework_info("svc", "svc", &[]), true).await;
    // Launch four tasks; each launch is acknowledged (committed) before
    // the next.
    let mut acked = Vec::new();
    while acked.len() < 4 {
        for offer in fw.offers(WAIT).await {
            let id = format!("t{}", acked.len());
            if acked.len() < 4 && fw.call(launch(&offer, &id, 1000, Some(0.0))).await.is_ok() {
                acked.push(id);
            }
        }
    }
    let old = masters.leader().await;
    masters.kill(old).await;

    // The framework resubscribes (failover) to the new leader.
    let ids = fw.ids.clone();
    eventually("the framework resubscribed", WAIT, || {
        let n = ids.lock().unwrap().subscriptions;
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let new = masters.leader().await;
    assert_ne!(new, old);
    // Every acknowledged launch is there, running, on reregistered agents.
    let state = eventually("the tasks under the new leader", WAIT, || {
        let m = &masters;
        let acked = &acked;
        async move {
            let s = m.state().await;
            let all = acked
                .iter()
                .all(|t| task_state(&s, "F1", t) == Some(TaskState::TaskRunning));
            let agents_back = s.agents.iter().all(|a| a.state == "REGISTERED");
            (all && agents_back).then_some(s)
        }
    })
    .await;
    assert_eq!(state.tasks.len(), 4, "no task appeared or vanished");
    let f = &state.frameworks[0];
    assert!(
        f.connected && !f.removed,
        "the framework is connected: {f:?}"
    );
    // And it can go on launching through the new leader.
    // (Offers the old leader made are void: the election rescinded
    // them, and accepting one is refused as unknown.)
    loop {
        let offer = fw.offers(WAIT).await.remove(0);
        match fw.call(launch(&offer, "t-after", 1000, Some(0.0))).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::NotFound => continue,
            Err(e) => panic!("launch through the new leader: {e:?}"),
        }
    }
    fw.next("TASK_RUNNING for t-after", WAIT, |e| match e {
        sp::event::Event::Update(u) => u
            .status
            .filter(|s| s.task_id == "t-after" && s.state == TaskState::TaskRunning as i32),
        _ => None,
    })
    .await;
    assert_eq!(agents.iter().map(SimAgent::task_count).sum::<usize>(), 5);
    drop(agents);
    masters.shutdown().await;
}

#[test]
fn a_silent_agent_becomes_unreachable_and_is_reconciled_when_it_returns() {
    run(LIMIT, async {
        let mut settings = test_settings();
        settings.agent_ping_timeout = Duration::from_millis(100);
        settings.max_agent_ping_timeouts = 3;
        let masters = Masters::start(1, settings).await;
        let agent = SimAgent::spawn(masters.addrs(), "host-1", 4);
        let mut aware = Framework::subscribe(
            masters.addrs(),
            framework_info("aware", "a", &[FrameworkCapability::PartitionAware]),
            false,
        )
        .await;
        let mut plain =
            Framework::subscribe(masters.addrs(), framework_info("plain", "b", &[]), false).await;
        for (fw, task) in [(&mut aware, "ta"), (&mut plain, "tb")] {
            let offer = fw.offers(WAIT).await.remove(0);
            fw.call(launch(&offer, task, 1000, Some(0.0)))
                .await
                .expect("launched");
            fw.next("TASK_RUNNING", WAIT, |e| match e {
                sp::event::Event::Update(u) => u
                    .status
                    .filter(|s| s.state == TaskState::TaskRunning as i32),
                _ => None,
            })
            .await;
        }
        // The agent stops answering pings: after 3 × 100 ms it is
        // unreachable; PARTITION_AWARE hears UNREACHABLE, the other LOST.
        agent
            .shared
            .silent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let u = aware
            .next("TASK_UNREACHABLE", WAIT, |e| match e {
                sp::event::Event::Update(u) => u.status.filter(|s| s.task_id == "ta"),
                _ => None,
            })
            .await;
        assert_eq!(u.state, TaskState::TaskUnreachable as i32);
        let u = plain
            .next("TASK_LOST", WAIT, |e| match e {
                sp::event::Event::Update(u) => u.status.filter(|s| s.task_id == "tb"),
                _ => None,
            })
            .await;
        assert_eq!(u.state, TaskState::TaskLost as i32);
        let s = masters.state().await;
        assert_eq!(s.agents[0].state, "UNREACHABLE");

        // It comes back: reregisters with both tasks. The PARTITION_AWARE
        // task is RUNNING again; the LOST one is killed on the agent.
        agent
            .shared
            .silent
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let u = aware
            .next("TASK_RUNNING after the agent returned", WAIT, |e| match e {
                sp::event::Event::Update(u) => u.status.filter(|s| s.task_id == "ta"),
                _ => None,
            })
            .await;
        assert_eq!(u.state, TaskState::TaskRunning as i32);
        let shared = agent.shared.clone();
        eventually("the LOST task killed on the agent", WAIT, || {
            let st = shared
                .tasks
                .lock()
                .unwrap()
                .get(&(plain.id(), "tb".to_string()))
                .copied();
            async move { (st == Some(TaskState::TaskKilled as i32)).then_some(()) }
        })
        .await;
        let s = masters.state().await;
        assert_eq!(s.agents[0].state, "REGISTERED");
        assert_eq!(
            task_state(&s, &aware.id(), "ta"),
            Some(TaskState::TaskRunning)
        );
        assert_eq!(task_state(&s, &plain.id(), "tb"), Some(TaskState::TaskLost));
        drop(agent);
        masters.shutdown().await;
    });
}

#[test]
fn a_framework_gone_past_its_failover_timeout_is_removed_and_its_tasks_killed() {
    run(LIMIT, async {
        let masters = Masters::start(1, test_settings()).await;
        let agent = SimAgent::spawn(masters.addrs(), "host-1", 4);
        let mut info = framework_info("brief", "r", &[]);
        info.failover_timeout_ms = 300;
        let mut fw = Framework::subscribe(masters.addrs(), info, false).await;
        let id = fw.id();
        let offer = fw.offers(WAIT).await.remove(0);
        fw.call(launch(&offer, "t1", 1000, Some(0.0)))
            .await
            .expect("launched");
        fw.next("TASK_RUNNING", WAIT, |e| match e {
            sp::event::Event::Update(u) => u
                .status
                .filter(|s| s.state == TaskState::TaskRunning as i32),
            _ => None,
        })
        .await;
        // The scheduler goes away (its stream closes) and does not return.
        drop(fw);
        let shared = agent.shared.clone();
        let key = (id.clone(), "t1".to_string());
        eventually("the task killed on the agent", WAIT, || {
            let st = shared.tasks.lock().unwrap().get(&key).copied();
            async move { (st == Some(TaskState::TaskKilled as i32)).then_some(()) }
        })
        .await;
        let s = masters.state().await;
        assert!(s.frameworks[0].removed, "{:?}", s.frameworks[0]);
        masters.shutdown().await;
    });
}

#[test]
fn after_a_leader_change_agents_that_do_not_reregister_in_time_are_unreachable() {
    run(LIMIT, async {
        let mut settings = test_settings();
        settings.agent_reregister_timeout = Duration::from_millis(1500);
        let mut masters = Masters::start(3, settings).await;
        let stays = SimAgent::spawn(masters.addrs(), "host-stays", 2);
        let leaves = SimAgent::spawn(masters.addrs(), "host-leaves", 2);
        let registered = eventually("both agents registered", WAIT, || {
            let m = &masters;
            async move {
                let s = m.state().await;
                (s.agents.len() == 2 && s.agents.iter().all(|a| a.state == "REGISTERED"))
                    .then_some(s)
            }
        })
        .await;
        assert_eq!(registered.agents.len(), 2);
        leaves
            .shared
            .silent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let old = masters.leader().await;
        masters.kill(old).await;
        let s = eventually("the late agent marked unreachable", WAIT, || {
            let m = &masters;
            async move {
                let s = m.state().await;
                s.agents
                    .iter()
                    .any(|a| a.hostname == "host-leaves" && a.state == "UNREACHABLE")
                    .then_some(s)
            }
        })
        .await;
        let back = s
            .agents
            .iter()
            .find(|a| a.hostname == "host-stays")
            .unwrap();
        assert_eq!(
            back.state, "REGISTERED",
            "the agent that reregistered stays"
        );
        assert!(
            stays
                .shared
                .registrations
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 2
        );
        drop((stays, leaves));
        masters.shutdown().await;
    });
}

fn in_region(region: &str, zone: &str) -> Option<orrery_events::state::Domain> {
    Some(orrery_events::state::Domain {
        region: region.into(),
        zone: zone.into(),
    })
}

#[test]
fn remote_region_offers_go_only_to_region_aware_frameworks() {
    run(LIMIT, async {
        let mut settings = test_settings();
        settings.domain = in_region("us-east", "a");
        let masters = Masters::start(1, settings).await;
        let _local = SimAgent::spawn_in(masters.addrs(), "local-1", 2, Some(("us-east", "b")));
        let _remote = SimAgent::spawn_in(masters.addrs(), "remote-1", 2, Some(("eu-west", "a")));
        let mut plain =
            Framework::subscribe(masters.addrs(), framework_info("plain", "p", &[]), false).await;
        let mut aware = Framework::subscribe(
            masters.addrs(),
            framework_info("aware", "a", &[FrameworkCapability::RegionAware]),
            false,
        )
        .await;
        // The region-aware framework gets the remote agent, with its domain.
        // (It also gets local offers; it declines those for a minute so
        // that they go to the other framework.)
        let mut local_ids = Vec::new();
        let remote = aware
            .next("an offer from the remote agent", WAIT, |e| match e {
                sp::event::Event::Offers(o) => {
                    local_ids.extend(
                        o.offers
                            .iter()
                            .filter(|o| o.hostname != "remote-1")
                            .map(|o| o.offer_id.clone()),
                    );
                    o.offers.into_iter().find(|o| o.hostname == "remote-1")
                }
                _ => None,
            })
            .await;
        let decline_local = |ids: Vec<String>| {
            sp::call::Call::Decline(sp::Decline {
                offer_ids: ids,
                filters: Some(sp::Filters {
                    refuse_seconds: Some(60.0),
                }),
            })
        };
        if !local_ids.is_empty() {
            aware
                .call(decline_local(local_ids))
                .await
                .expect("declined");
        }
        let d = remote.domain.expect("offers carry the agent's domain");
        assert_eq!((d.region.as_str(), d.zone.as_str()), ("eu-west", "a"));
        // The plain one sees the local agent and never the remote one, even
        // when the aware framework declines it.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut hosts = std::collections::BTreeSet::new();
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, plain.events.recv()).await {
            if let Some(sp::event::Event::Offers(o)) = ev.event {
                for offer in o.offers {
                    hosts.insert(offer.hostname.clone());
                    let _ = plain
                        .call(sp::call::Call::Decline(sp::Decline {
                            offer_ids: vec![offer.offer_id],
                            filters: Some(sp::Filters {
                                refuse_seconds: Some(0.0),
                            }),
                        }))
                        .await;
                }
            }
            while let Ok(ev) = aware.events.try_recv() {
                if let Some(sp::event::Event::Offers(o)) = ev.event {
                    let ids: Vec<String> = o
                        .offers
                        .iter()
                        .filter(|o| o.hostname != "remote-1")
                        .map(|o| o.offer_id.clone())
                        .collect();
                    if !ids.is_empty() {
                        let _ = aware.call(decline_local(ids)).await;
                    }
                }
            }
        }
        assert!(hosts.contains("local-1"), "{hosts:?}");
        assert!(
            !hosts.contains("remote-1"),
            "a region-unaware framework got a remote offer: {hosts:?}"
        );
        masters.shutdown().await;
    });
}

#[test]
fn an_agent_with_a_domain_is_refused_by_a_master_without_one() {
    run(LIMIT, async {
        let masters = Masters::start(1, test_settings()).await;
        let err = register_with_domain(&masters)
            .await
            .expect_err("a domain agent registered with a domain-less master");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("no fault domain"), "{err:?}");
        masters.shutdown().await;
    });
}

async fn register_with_domain(masters: &Masters) -> Result<(), tonic::Status> {
    use orrery_proto::agent::{self as ap, agent_link_client::AgentLinkClient};
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &masters.addrs(),
        PATIENCE,
        |ch| async move {
            AgentLinkClient::new(ch)
                .register(ap::RegisterRequest {
                    version: String::new(),
                    incarnation: String::new(),
                    agent_id: String::new(),
                    info: Some(ap::AgentInfo {
                        hostname: "h".into(),
                        ip: "127.0.0.1".into(),
                        resources: Some(orrery_events::pb::Resources {
                            cpus_milli: 1000,
                            mem_mb: 1024,
                            ..Default::default()
                        }),
                        attributes: vec![],
                        domain: Some(orrery_events::pb::Domain {
                            region: "r1".into(),
                            zone: "z1".into(),
                        }),
                    }),
                    tasks: vec![],
                })
                .await
        },
    )
    .await
    .map(|_| ())
}
