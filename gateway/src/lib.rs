//! # orrery-gateway: the front door
//!
//! Owns the tonic services (`orrery.scheduler.v1`, `orrery.operator.v1`,
//! `orrery.agent.v1`, `orrery.raft.v1`) and the axum HTTP admin endpoints
//! (`/health`, `/metrics`, `/state`, `/vars.json`, the Mesos-compatible
//! maintenance endpoints). It converts wire messages to commands and answers
//! to wire messages; it holds no business rule.
//!
//! **Not finished**: a placeholder until the master issue lands.
