//! A drain never breaks a job's SLA: when the job scheduler kills an
//! instance on a DRAINING host, at most `max_unavailable` (at least 1) of
//! the job's instances are down once that kill is counted. Instances that
//! are down for other reasons (a crashed agent) count against the budget,
//! so a drain waits for them.

use orrery_events::pb::envelope::Payload;
use orrery_events::pb::TaskState;
use orrery_events::state::HostState;
use orrery_events::{pb, Cluster, TaskKey};

use super::Oracle;

pub const NAME: &str = "drains keep max_unavailable";

#[derive(Debug)]
pub struct JobSla;

impl Oracle for JobSla {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        let Some(Payload::TaskKillRequested(k)) = &env.payload else {
            return Ok(());
        };
        let key = TaskKey::new(k.framework_id.clone(), k.task_id.clone());
        let Some(t) = before.task(&key) else {
            return Ok(());
        };
        let Some(job_key) = &t.job else {
            return Ok(());
        };
        let draining = before
            .agents
            .get(&t.agent_id)
            .and_then(|a| before.host_of(a))
            .is_some_and(|h| h.state == HostState::Draining);
        let Some(job) = before.jobs.get(job_key) else {
            return Ok(());
        };
        if !draining || job.spec.start_before_kill {
            return Ok(());
        }
        let up =
            |t: &orrery_events::state::Task| t.state == TaskState::TaskRunning && !t.kill_requested;
        let running_after = before
            .tasks
            .values()
            .filter(|x| x.job.as_ref() == Some(job_key) && up(x) && x.key != key)
            .count() as u32;
        let down = job.spec.instances.saturating_sub(running_after);
        let budget = job.spec.max_unavailable.max(1);
        if down > budget {
            return Err(format!(
                "draining {} killed {}: {down} of {}'s {} instances down, max_unavailable is {budget}",
                t.agent_id, k.task_id, job_key, job.spec.instances
            ));
        }
        Ok(())
    }
}
