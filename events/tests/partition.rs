//! The job scheduler and an unreachable agent (Aurora's partition policy):
//! with a delay, an instance waits and comes back RUNNING with its agent;
//! past the delay (or at once, by default) it is placed again, and the old
//! copy is killed when its agent returns — never two copies of one instance
//! left running.

use orrery_events::command::{Command, ReportedTask};
use orrery_events::pb::{self, TaskState};
use orrery_events::state::Task;
use orrery_events::testkit::{shell, Scenario};
use orrery_events::{jobs, AgentId, FrameworkId, Resources};

fn spec(policy: Option<pb::PartitionPolicy>) -> pb::JobSpec {
    pb::JobSpec {
        key: Some(pb::JobKey {
            role: "www".into(),
            env: "prod".into(),
            name: "web".into(),
        }),
        instances: 1,
        command: Some(shell("sleep 1000")),
        resources: Some(Resources::parse("cpus:1;mem:128").unwrap().to_proto()),
        service: true,
        partition_policy: policy,
        ..Default::default()
    }
}

/// Two hosts; one instance running on one of them, which then becomes
/// unreachable.
fn one_instance_cut_off(policy: Option<pb::PartitionPolicy>) -> (Scenario, FrameworkId, Task) {
    let mut s = Scenario::with_leader();
    for h in ["h1", "h2"] {
        s.agent(h, "cpus:2;mem:4096", None);
    }
    let fw = s.framework(jobs::subscription(&s.cluster));
    assert!(s.cluster.frameworks[&fw].partition_aware);
    s.given(Command::CreateJob(spec(policy)));
    s.run_jobs(&fw, 3);
    let running: Vec<Task> = live(&s);
    assert_eq!(running.len(), 1, "{running:?}");
    let task = running[0].clone();
    s.given(Command::MarkAgentUnreachable {
        agent_id: task.agent_id.clone(),
        reason: "ping timeout".into(),
    });
    assert_eq!(s.cluster.tasks[&task.key].state, TaskState::TaskUnreachable);
    (s, fw, task)
}

fn live(s: &Scenario) -> Vec<Task> {
    s.cluster
        .tasks
        .values()
        .filter(|t| !t.is_terminal())
        .cloned()
        .collect()
}

fn back(s: &mut Scenario, agent: &AgentId, host: &str, task: &Task) {
    s.given(Command::ReregisterAgent {
        agent_id: agent.clone(),
        registration: Scenario::registration(host, "cpus:2;mem:4096", None),
        tasks: vec![ReportedTask {
            framework_id: task.key.framework_id.clone(),
            task_id: task.key.task_id.clone(),
            state: TaskState::TaskRunning,
        }],
    });
}

#[test]
fn within_its_delay_an_instance_waits_and_comes_back_running_with_its_agent() {
    let policy = pb::PartitionPolicy {
        reschedule: true,
        delay_ms: 300_000,
    };
    let (mut s, fw, task) = one_instance_cut_off(Some(policy));
    s.run_jobs(&fw, 10);
    assert_eq!(live(&s).len(), 1, "nothing placed within the delay");
    let host = s.cluster.agents[&task.agent_id].hostname.clone();
    back(&mut s, &task.agent_id, &host, &task);
    assert_eq!(s.cluster.tasks[&task.key].state, TaskState::TaskRunning);
    s.run_jobs(&fw, 3);
    let now = live(&s);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].key, task.key, "the same task, not a replacement");
}

#[test]
fn past_its_delay_an_instance_is_replaced_and_the_old_copy_killed_when_its_agent_returns() {
    let policy = pb::PartitionPolicy {
        reschedule: true,
        delay_ms: 5_000,
    };
    let (mut s, fw, task) = one_instance_cut_off(Some(policy));
    s.run_jobs(&fw, 5);
    let now = live(&s);
    let replacement: Vec<&Task> = now.iter().filter(|t| t.key != task.key).collect();
    assert_eq!(replacement.len(), 1, "{now:?}");
    assert_eq!(replacement[0].state, TaskState::TaskRunning);
    assert_ne!(replacement[0].agent_id, task.agent_id);
    let host = s.cluster.agents[&task.agent_id].hostname.clone();
    back(&mut s, &task.agent_id, &host, &task);
    let old = &s.cluster.tasks[&task.key];
    assert_eq!(old.state, TaskState::TaskKilled, "{old:?}");
    assert!(old
        .message
        .contains("replaced while its agent was unreachable"));
    s.run_jobs(&fw, 3);
    assert_eq!(live(&s).len(), 1, "one copy of the instance");
}

#[test]
fn by_default_an_unreachable_instance_is_replaced_at_once() {
    let (mut s, fw, task) = one_instance_cut_off(None);
    s.run_jobs(&fw, 2);
    let now = live(&s);
    assert!(
        now.iter()
            .any(|t| t.key != task.key && t.state == TaskState::TaskRunning),
        "{now:?}"
    );
}

#[test]
fn without_reschedule_an_instance_waits_for_its_agent_for_ever() {
    let policy = pb::PartitionPolicy {
        reschedule: false,
        delay_ms: 0,
    };
    let (mut s, fw, _task) = one_instance_cut_off(Some(policy));
    s.advance(24 * 3_600_000);
    s.run_jobs(&fw, 3);
    assert_eq!(live(&s).len(), 1);
}
