//! No agent is over-committed: the resources of the live tasks the master
//! placed on an agent fit in what the agent declared, and so do the
//! executors each simulated agent actually runs.

use orrery_events::Resources;

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "no agent over-committed";

#[derive(Debug)]
pub struct Overcommit;

impl Oracle for Overcommit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        let c = &sim.truth.cluster;
        for a in c.agents.values() {
            let mut used = Resources::default();
            for t in c.tasks_on_agent(&a.id).filter(|t| !t.is_terminal()) {
                used.add(&t.resources);
            }
            if !a.total.contains(&used) {
                return Err(format!(
                    "agent {} ({}) has {} cpus_milli of live tasks on {}",
                    a.id, a.hostname, used.cpus_milli, a.total.cpus_milli
                ));
            }
        }
        for ag in &sim.agents {
            let mut used = Resources::default();
            for e in ag.executors.values() {
                if !orrery_events::state::task::is_terminal(e.state) {
                    used.add(&e.resources);
                }
            }
            if !ag.resources.contains(&used) {
                return Err(format!(
                    "{} runs executors with {} cpus_milli on {}",
                    ag.hostname, used.cpus_milli, ag.resources.cpus_milli
                ));
            }
        }
        Ok(())
    }
}
