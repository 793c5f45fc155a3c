//! Projections: read-only views of a `Cluster` that the allocator, decide,
//! the actors and `orrery replay` share, so each question has one answer.
//!
//! - [`offers`]: what each agent has free, who may be offered what, and the
//!   rescinds a change implies;
//! - [`domains`]: fault domains — which agent a framework may see;
//! - [`maintenance`]: the schedule and host states;
//! - [`recovery`]: what a new leader must reconcile.

pub mod domains;
pub mod maintenance;
pub mod offers;
pub mod recovery;
