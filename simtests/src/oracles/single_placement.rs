//! A task id runs on at most one agent at a time: no two simulated agents
//! hold a live executor for the same (framework, task).

use std::collections::BTreeMap;

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "a task runs on one agent";

#[derive(Debug)]
pub struct SinglePlacement;

impl Oracle for SinglePlacement {
    fn name(&self) -> &'static str {
        NAME
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        let mut on = BTreeMap::new();
        for ag in &sim.agents {
            for e in ag.executors.values() {
                if orrery_events::state::task::is_terminal(e.state) {
                    continue;
                }
                if let Some(other) = on.insert(&e.key, &ag.hostname) {
                    return Err(format!(
                        "task {} runs on {} and on {}",
                        e.key, other, ag.hostname
                    ));
                }
            }
        }
        Ok(())
    }
}
