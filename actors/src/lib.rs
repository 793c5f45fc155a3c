//! # orrery-actors: the imperative shell
//!
//! Owns the actix actors that turn requests, agent messages and timers into
//! `orrery_events::Command`s, commit the resulting events through
//! `orrery_storage`, and react to applied events with effects (offers,
//! launches, status updates to frameworks). Master side: `Master`,
//! `AgentSession`, `FrameworkSession`, `Host`, `Job`. Agent side: the agent
//! node, executor links, status-update streams, the checkpointer.
//!
//! Business rules never live here: they belong to `orrery_events::decide`.
//!
//! **Not finished**: a placeholder until the master issue lands.
