//! The master end to end, in process: three masters with real raft logs on
//! disk and real gRPC on loopback, simulated agents, and framework clients
//! that speak the scheduler API.

mod common;

use std::time::Duration;

use common::*;
use orrery_events::pb::TaskState;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use orrery_proto::scheduler as sp;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn subscribe_offer_launch_update_acknowledge_reconcile() {
    run(LIMIT, async {
        let masters = Masters::start(3, test_settings()).await;
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
    });
}

#[test]
fn followers_redirect_to_the_leader() {
    run(LIMIT, async {
        let masters = Masters::start(3, test_settings()).await;
        let leader = masters.leader().await;
        let follower = *masters.peers.keys().find(|&&id| id != leader).unwrap();
        let ch = orrery_gateway::client::connect(&masters.peers[&follower])
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
