//! # orrery-actors: the imperative shell
//!
//! Owns the actors that turn requests, agent messages and timers into
//! `orrery_events::Command`s, commit the resulting events through
//! `orrery_storage`, and react to applied events with effects (offers,
//! launches, status updates to frameworks). Business rules never live here:
//! they belong to `orrery_events::decide`.
//!
//! # Layout
//! - [`cluster_machine`]: the master's state machine — committed events
//!   applied to `orrery_events::Cluster` — behind storage's `StateMachine`.
//!
//! **Not finished**: the actix actors themselves (`Master`, `AgentSession`,
//! `FrameworkSession`, `Host`, `Job`; the agent side) come with the master
//! and agent issues.

pub mod cluster_machine;
