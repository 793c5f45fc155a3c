//! # orrery-events: the functional core
//!
//! Everything Orrery knows about a cluster derives from one append-only log
//! of events. This crate is the pure heart of that design: the schema's
//! Rust side, the state, the rules, and the views. It does no I/O, reads no
//! clock, draws no random number and iterates only ordered maps
//! (`clippy.toml` bans the alternatives), so any replica — or `orrery
//! replay` years later — derives the same state from the same log.
//!
//! The data flow (DESIGN.md):
//! ```text
//! Command --decide(&Cluster, cmd, now)--> Vec<Event> | Rejection
//! Event  --(the shell appends; the log commits; Envelope)--> apply(&mut Cluster, &Envelope)
//! ```
//!
//! # Layout
//! - [`ids`], [`resources`]: value types (typed ids; fixed-point resources
//!   with Mesos' text syntax).
//! - [`state`]: `Cluster` and one file per entity (agent, framework, task,
//!   offer, host, job).
//! - [`command`]: what actors ask for, in the imperative.
//! - [`decide`]: every business rule, one file per area; returns events (the
//!   proto `Envelope` payloads, past tense) or a [`Rejection`].
//! - [`apply`]: the only mutation; total, exhaustive, no validation.
//! - [`allocator`]: one weighted-DRF cycle, seeded from the log.
//! - [`projections`]: offers, domains, maintenance, recovery.
//! - [`invariants`]: rules every committed state obeys; run after every
//!   apply in debug builds.
//! - [`digest`], [`snapshot`], [`codec`]: fingerprints, snapshots and the
//!   checked wire form of envelopes.
//! - [`testkit`] (tests and the `testkit` feature): given/when/then helpers.

pub mod allocator;
pub mod apply;
pub mod codec;
pub mod command;
pub mod decide;
pub mod digest;
pub mod explain;
pub mod ids;
pub mod invariants;
pub mod jobs;
pub mod projections;
pub mod rejection;
pub mod replay;
pub mod resources;
pub mod snapshot;
pub mod state;
pub mod whatif;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use apply::{apply, try_apply, ApplyError};
pub use command::Command;
pub use decide::{decide, Event, NowMs};
pub use digest::{digest, StateDigest};
pub use ids::{AgentId, FrameworkId, OfferId, TaskId, TaskKey};
pub use orrery_proto::events as pb;
pub use rejection::{Rejection, RejectionClass};
pub use resources::Resources;
pub use state::Cluster;

/// Wraps decided events into envelopes that follow `cluster`'s last index,
/// as the leader does when it proposes a batch.
pub fn envelopes(
    cluster: &Cluster,
    term: u64,
    proposed_at_ms: u64,
    events: Vec<Event>,
) -> Vec<pb::Envelope> {
    events
        .into_iter()
        .zip(cluster.applied_index + 1..)
        .map(|(payload, index)| pb::Envelope {
            index,
            term,
            proposed_at_ms,
            request_id: String::new(),
            principal: String::new(),
            idempotency_key: String::new(),
            payload: Some(payload),
        })
        .collect()
}
