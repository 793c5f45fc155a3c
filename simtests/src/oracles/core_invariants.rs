//! The core's own invariants (`orrery_events::invariants::check`: derived
//! fields, terminal states final, offers respect maintenance and domains,
//! inverse offers stand, …) on the committed state, after every step
//! that changed it.

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "core invariants";

#[derive(Debug, Default)]
pub struct CoreInvariants {
    checked_at: Option<u64>,
}

impl Oracle for CoreInvariants {
    fn name(&self) -> &'static str {
        NAME
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        let index = sim.truth.cluster.applied_index;
        if self.checked_at == Some(index) {
            return Ok(());
        }
        self.checked_at = Some(index);
        orrery_events::invariants::check(&sim.truth.cluster).map_err(|v| v.to_string())
    }
}
