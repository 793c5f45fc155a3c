//! Replicas that applied the same prefix have equal digests.
//!
//! The committed log's state is digested at every index divisible by
//! `digest_every`; each replica, applying that index, must reach the same
//! digest (`Sim::apply_to`). At the end every replica whose applied index
//! equals the committed one is compared in full.

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "replica digests agree";

#[derive(Debug)]
pub struct ReplicaDigests;

impl Oracle for ReplicaDigests {
    fn name(&self) -> &'static str {
        NAME
    }

    fn at_end(&mut self, sim: &Sim) -> Result<(), String> {
        let want = orrery_events::digest(&sim.truth.cluster);
        for r in &sim.masters {
            if r.state.applied_index == sim.truth.cluster.applied_index {
                let got = orrery_events::digest(&r.state);
                if got != want {
                    return Err(format!(
                        "master {} applied {} entries and has digest {got}; the committed log gives {want}",
                        r.id, r.state.applied_index
                    ));
                }
            }
        }
        Ok(())
    }
}
