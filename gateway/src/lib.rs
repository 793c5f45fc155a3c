//! # orrery-gateway: the front door
//!
//! Owns the tonic services of the master's client APIs
//! (`orrery.scheduler.v1`, `orrery.agent.v1`, `orrery.operator.v1`; the raft
//! services live in storage and share the address), the axum HTTP admin
//! endpoints, and the client side that finds the leader. It converts wire
//! messages to commands and answers to wire messages; it holds no business
//! rule.
//!
//! Why axum for HTTP: it is tokio's own HTTP framework, small, and already
//! in the tree through tonic.
//!
//! # Layout
//! - [`auth`]: authentication (client certificates, bearer tokens),
//!   default-deny authorization from the policy file, per-client rate
//!   limits, and the TLS listener of the HTTP endpoints.
//! - [`grpc`]: the services (scheduler, agent link, operator, and
//!   discovery: who leads) and `MasterError` → gRPC status.
//! - [`http`]: `GET /health`, `GET /state` (followers redirect with 307).
//! - [`server`]: a master replica wired (log, actor, gRPC, HTTP).
//! - [`client`]: connect to whichever master leads, following
//!   `orrery-leader` answers.
//!
//! - [`maintenance`]: Mesos' maintenance endpoints (`/maintenance/schedule`,
//!   `/maintenance/status`, `/machine/down`, `/machine/up`).
//! - [`metrics`]: `/metrics` (Prometheus) and `/vars.json`, and the API
//!   latency layer.
//! - [`mesos`]: Mesos' v1 HTTP scheduler and operator APIs
//!   (`/api/v1/scheduler`, `/api/v1`) and `/master/state`, translated onto
//!   the same master actor as the gRPC services.

/// The leader-following client lives in orrery-actors (the agent uses it
/// too); re-exported here for the CLI and framework clients.
pub use orrery_actors::client;
pub mod admission;
pub mod auth;
pub mod dryrun;
pub mod grpc;
pub mod http;
pub mod maintenance;
pub mod masters;
pub mod mesos;
pub mod metrics;
pub mod server;
pub mod ui;
