//! Each invariant catches the breakage it exists for: a state edited to
//! break one rule is reported, by name. (A check that cannot fail proves
//! nothing.)

use orrery_events::command::Command;
use orrery_events::pb::{self, envelope::Payload};
use orrery_events::state::HostState;
use orrery_events::testkit::Scenario;
use orrery_events::{invariants, try_apply, ApplyError, TaskKey};

fn broken(s: &Scenario) -> &'static str {
    invariants::check(&s.cluster)
        .expect_err("the edit must be caught")
        .invariant
}

#[test]
fn a_healthy_state_passes() {
    let (s, ..) = Scenario::one_offer();
    invariants::check(&s.cluster).unwrap();
}

#[test]
fn overcommit_is_caught() {
    let (mut s, agent, fw, offer) = Scenario::one_offer();
    s.accept(&fw, &offer, vec![Scenario::task_spec("t", "cpus:4;mem:10")])
        .unwrap();
    let key = TaskKey::new(fw, "t");
    // Make the task larger than the agent, keeping the caches consistent.
    s.cluster.tasks.get_mut(&key).unwrap().resources.cpus_milli = 9000;
    s.cluster.rebuild_derived();
    assert_eq!(broken(&s), "I5 agent over-committed");
    let _ = agent;
}

#[test]
fn drifting_caches_are_caught() {
    let (mut s, agent, ..) = Scenario::one_offer();
    s.cluster.agents.get_mut(&agent).unwrap().used.cpus_milli += 1;
    assert_eq!(broken(&s), "derived agent resources");
}

#[test]
fn leaving_a_terminal_state_is_caught() {
    let (mut s, agent, fw, offer) = Scenario::one_offer();
    s.accept(&fw, &offer, vec![Scenario::task_spec("t", "cpus:1")])
        .unwrap();
    s.given(s.status(&agent, &fw, "t", pb::TaskState::TaskFinished, "u1"));
    let t = s.cluster.tasks.get_mut(&TaskKey::new(fw, "t")).unwrap();
    t.state = pb::TaskState::TaskRunning;
    s.cluster.rebuild_derived();
    assert_eq!(broken(&s), "I6 terminal state is final");
}

#[test]
fn an_inverse_offer_outside_the_schedule_is_caught() {
    let (mut s, agent, fw, offer) = Scenario::one_offer();
    s.accept(&fw, &offer, vec![Scenario::task_spec("t", "cpus:1")])
        .unwrap();
    s.given(Command::StartMaintenance {
        hostnames: vec!["h1".into()],
    });
    s.given(Command::Allocate);
    assert_eq!(s.cluster.inverse_offers.len(), 1);
    invariants::check(&s.cluster).unwrap();
    s.cluster.schedule.clear();
    assert_eq!(broken(&s), "inverse offers stand");
    let _ = agent;
}

#[test]
fn an_offer_of_a_draining_host_is_caught() {
    let (mut s, ..) = Scenario::one_offer();
    s.cluster.hosts.get_mut("h1").unwrap().state = HostState::Draining;
    assert_eq!(broken(&s), "offer of host in maintenance");
}

#[test]
fn a_remote_offer_to_a_region_unaware_framework_is_caught() {
    let (mut s, agent, ..) = Scenario::one_offer();
    s.cluster.agents.get_mut(&agent).unwrap().domain = Some(orrery_events::state::Domain {
        region: "far".into(),
        zone: "z".into(),
    });
    assert_eq!(broken(&s), "remote offer to framework without REGION_AWARE");
}

#[test]
fn a_task_on_an_unknown_agent_is_caught() {
    let (mut s, agent, fw, offer) = Scenario::one_offer();
    s.accept(&fw, &offer, vec![Scenario::task_spec("t", "cpus:1")])
        .unwrap();
    s.given(s.status(&agent, &fw, "t", pb::TaskState::TaskFinished, "u1"));
    s.cluster
        .tasks
        .get_mut(&TaskKey::new(fw, "t"))
        .unwrap()
        .agent_id = "S404".into();
    s.cluster.rebuild_derived();
    assert_eq!(broken(&s), "task agent");
}

#[test]
fn apply_refuses_gaps_and_dangling_references() {
    let (mut s, ..) = Scenario::one_offer();
    let next = s.cluster.applied_index + 1;
    let gap = pb::Envelope {
        index: next + 1,
        term: 1,
        proposed_at_ms: 0,
        request_id: String::new(),
        principal: String::new(),
        idempotency_key: String::new(),
        payload: Some(Payload::AgentDisconnected(pb::AgentDisconnected {
            agent_id: "S1".into(),
        })),
    };
    assert_eq!(
        try_apply(&mut s.cluster, &gap),
        Err(ApplyError::Gap {
            expected: next,
            found: next + 1
        })
    );
    let dangling = pb::Envelope { index: next, ..gap };
    let mut env = dangling.clone();
    env.payload = Some(Payload::AgentDisconnected(pb::AgentDisconnected {
        agent_id: "S404".into(),
    }));
    assert!(matches!(
        try_apply(&mut s.cluster, &env),
        Err(ApplyError::Dangling { kind: "agent", .. })
    ));
    let none = pb::Envelope {
        payload: None,
        ..dangling
    };
    assert_eq!(
        try_apply(&mut s.cluster, &none),
        Err(ApplyError::NoPayload { index: next })
    );
    let _ = Command::Allocate;
}
