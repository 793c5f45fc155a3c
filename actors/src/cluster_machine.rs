//! The master's state machine: the committed event log applied to the
//! cluster state (`orrery_events::Cluster`), behind storage's domain-agnostic
//! `StateMachine` trait.
//!
//! Storage assigns each event its index and term; this file decodes the
//! envelope, stamps them in, and applies it. A payload that does not decode,
//! or that `apply` refuses (a gap, an unknown entity), is fatal for the
//! replica: it stops rather than skip (DESIGN.md: never a silent skip).

use orrery_events::pb::envelope::Payload;
use orrery_events::{codec, digest, invariants, snapshot, try_apply, Cluster};
use orrery_storage::{LoggedEvent, StateMachine};

#[derive(Debug, Default)]
pub struct ClusterMachine {
    pub cluster: Cluster,
}

impl StateMachine for ClusterMachine {
    fn apply(&mut self, event: &LoggedEvent) -> Result<(), String> {
        let mut env =
            codec::decode(&event.payload).map_err(|e| format!("event {}: {e}", event.index))?;
        env.index = event.index;
        env.term = event.term;
        try_apply(&mut self.cluster, &env).map_err(|e| e.to_string())?;
        if cfg!(debug_assertions) {
            invariants::check(&self.cluster)
                .map_err(|v| format!("after event {}: {v}", event.index))?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        snapshot::encode(&self.cluster)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.cluster = snapshot::decode(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn digest(&self) -> Vec<u8> {
        digest(&self.cluster).0.to_vec()
    }
}

/// Whether a pre-built event may be appended by a raw client (`orrery
/// master --accept-raw-appends`, for tests and benchmarks): it must decode,
/// and be one that applies to any state (it creates or replaces what it
/// names), so that no client can make every replica stop.
pub fn raw_append_allowed(bytes: &[u8]) -> Result<(), String> {
    let env = codec::decode(bytes).map_err(|e| e.to_string())?;
    match env.payload {
        Some(
            Payload::RoleWeightsSet(_)
            | Payload::AgentRegistered(_)
            | Payload::MaintenanceScheduleUpdated(_)
            | Payload::JobCreated(_),
        ) => Ok(()),
        Some(p) => Err(format!(
            "{} may depend on state; raw appends take RoleWeightsSet, AgentRegistered, \
             MaintenanceScheduleUpdated or JobCreated",
            codec::event_name(&p)
        )),
        None => Err("an envelope without a payload".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_events::pb;

    fn weights(n: u64) -> Vec<u8> {
        codec::encode(&pb::Envelope {
            index: 0,
            term: 0,
            proposed_at_ms: n,
            request_id: String::new(),
            principal: String::new(),
            idempotency_key: String::new(),
            payload: Some(Payload::RoleWeightsSet(pb::RoleWeightsSet {
                weights: vec![pb::RoleWeight {
                    role: format!("r{n}"),
                    weight_milli: 1000 + n,
                }],
            })),
        })
    }

    #[test]
    fn applies_with_the_index_storage_assigned_and_refuses_gaps() {
        let mut m = ClusterMachine::default();
        m.apply(&LoggedEvent {
            index: 1,
            term: 3,
            payload: weights(1),
        })
        .unwrap();
        assert_eq!(m.cluster.applied_index, 1);
        assert_eq!(m.cluster.applied_term, 3);
        let err = m
            .apply(&LoggedEvent {
                index: 3,
                term: 3,
                payload: weights(2),
            })
            .unwrap_err();
        assert!(err.contains("gap"), "{err}");
        let err = m
            .apply(&LoggedEvent {
                index: 2,
                term: 3,
                payload: vec![0xff, 0xff],
            })
            .unwrap_err();
        assert!(err.contains("event 2"), "{err}");
    }

    #[test]
    fn snapshots_restore_to_the_same_digest() {
        let mut m = ClusterMachine::default();
        for i in 1..=5 {
            m.apply(&LoggedEvent {
                index: i,
                term: 1,
                payload: weights(i),
            })
            .unwrap();
        }
        let mut r = ClusterMachine::default();
        r.restore(&m.snapshot()).unwrap();
        assert_eq!(r.digest(), m.digest());
        assert!(r.restore(b"garbage").is_err());
    }

    #[test]
    fn raw_appends_take_only_self_contained_events() {
        assert!(raw_append_allowed(&weights(1)).is_ok());
        let dangling = codec::encode(&pb::Envelope {
            payload: Some(Payload::AgentGone(pb::AgentGone {
                agent_id: "S9".into(),
                reason: String::new(),
            })),
            ..Default::default()
        });
        assert!(raw_append_allowed(&dangling).is_err());
        assert!(raw_append_allowed(b"\xff\xff").is_err());
    }
}
