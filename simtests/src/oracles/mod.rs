//! The invariant oracles, one per file. Each watches the run in up to
//! three ways: every committed event with the state before it (in log
//! order, exactly once), the whole simulation after a step (every
//! `check_every` steps), and the end, after the liveness phase.

use orrery_events::{pb, Cluster};

use crate::sim::Sim;

pub mod acked_events;
pub mod core_invariants;
pub mod idempotency;
pub mod job_sla;
pub mod liveness;
pub mod maintenance_placement;
pub mod no_loss_while_alive;
pub mod no_silent_loss;
pub mod overcommit;
pub mod remote_offers;
pub mod removal_limit;
pub mod replica_digests;
pub mod single_placement;
pub mod status_order;

pub trait Oracle {
    fn name(&self) -> &'static str;
    /// A committed event and the state before it.
    fn on_event(&mut self, _before: &Cluster, _env: &pb::Envelope) -> Result<(), String> {
        Ok(())
    }
    /// After a step.
    fn after_step(&mut self, _sim: &mut Sim) -> Result<(), String> {
        Ok(())
    }
    /// After the liveness phase converged.
    fn at_end(&mut self, _sim: &Sim) -> Result<(), String> {
        Ok(())
    }
}

pub fn all(cfg: &crate::Config) -> Vec<Box<dyn Oracle>> {
    vec![
        Box::new(acked_events::AckedEvents),
        Box::new(replica_digests::ReplicaDigests),
        Box::new(core_invariants::CoreInvariants::default()),
        Box::new(overcommit::Overcommit),
        Box::new(single_placement::SinglePlacement),
        Box::new(no_silent_loss::NoSilentLoss),
        Box::new(no_loss_while_alive::NoLossWhileAlive::default()),
        Box::new(maintenance_placement::MaintenancePlacement),
        Box::new(remote_offers::RemoteOffers),
        Box::new(job_sla::JobSla),
        Box::new(status_order::StatusOrder::default()),
        Box::new(removal_limit::RemovalLimit::new(cfg.removal_limit_pct)),
        Box::new(idempotency::Idempotency),
        Box::new(liveness::Liveness),
    ]
}

/// The agent a simulated agent is now, in the committed state.
pub(crate) fn region_of(c: &Cluster, agent_id: &str) -> Option<String> {
    c.agents
        .get(agent_id)
        .and_then(|a| a.domain.as_ref())
        .map(|d| d.region.clone())
}
