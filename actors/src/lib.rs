//! # orrery-actors: the imperative shell
//!
//! Owns the actors that turn requests, agent messages and timers into
//! `orrery_events::Command`s, commit the resulting events through
//! `orrery_storage`, and react to committed events with effects (offers,
//! launches, status updates to frameworks). Business rules never live here:
//! they belong to `orrery_events::decide`.
//!
//! Why actix: the design asks for actors with bounded mailboxes and
//! per-actor timers, and actix gives exactly that on top of tokio (its
//! actors run on one arbiter thread; the gRPC server and the log run on the
//! tokio runtime's workers and talk to actors through `Addr`s).
//!
//! # Layout
//! - [`cluster_machine`]: the master's state machine — committed events
//!   applied to `orrery_events::Cluster` — behind storage's `StateMachine`.
//! - [`master`]: `Master`, the active master (leadership, the decide →
//!   append → effects loop, timers, sessions).
//! - [`framework_session`]: `FrameworkSession`, one per scheduler stream.
//! - [`agent_session`]: `AgentSession`, one per registered agent (its
//!   stream and its ping budget).
//! - [`effects`]: what committed events make the master send.
//! - [`views`]: the operator's view of the cluster (`/state`, `GetState`).
//! - [`client`]: finding the leader from the client side (agents, CLI,
//!   framework clients): deadlines and keepalives on every call, the leader
//!   asked of all masters in parallel, `orrery-leader` followed.
//! - [`http_serve`]: the HTTP server loop of masters and agents (header
//!   and body read timeouts, a bound on connections).
//! - [`agent`]: the agent daemon and `orrery executor`.
//!
//! The built-in job scheduler runs inside `Master` (it answers the offers
//! made to its framework with the core's `jobs::plan`) rather than as one
//! actor per job: every decision it makes needs the whole cluster's state,
//! which the master's copy already is.
//!
//! **Not finished**: the `Host` actor comes with the maintenance issue.

pub mod agent;
pub mod agent_session;
pub mod client;
pub mod cluster_machine;
pub mod effects;
pub mod framework_session;
pub mod http_serve;
pub mod log;
pub mod master;
pub mod removals;
pub mod telemetry;
pub mod views;

/// The metadata key naming the leader's address on UNAVAILABLE answers.
pub const LEADER_METADATA: &str = "orrery-leader";

/// UNAVAILABLE with `orrery-leader: ADDR` when the leader is known.
pub fn not_leader_status(leader_addr: Option<&str>) -> tonic::Status {
    let mut status = tonic::Status::unavailable(format!(
        "this master is not the leader; the leader is {}",
        leader_addr.unwrap_or("not known yet")
    ));
    if let Some(addr) = leader_addr {
        if let Ok(v) = addr.parse() {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    status
}
