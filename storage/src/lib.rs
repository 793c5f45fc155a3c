//! # orrery-storage: the event log
//!
//! Owns the durable, replicated, append-only log of Orrery. It is
//! domain-agnostic: it stores opaque bytes (encoded `Envelope`s) at gap-free
//! indexes and feeds them, in order, to a [`StateMachine`]. It must not know
//! what an event means.
//!
//! # Layout
//! - [`api`]: the [`EventLog`] trait every backend implements, the
//!   [`StateMachine`] trait it feeds, and the errors split by who reacts
//!   ([`AppendError`] for callers, [`Fatal`] for the replica).
//! - [`subscription`]: a stream of committed events that resumes exactly.
//! - [`security`]: mutual TLS on every link, the principal a certificate
//!   names (`orrery://ROLE/NAME`), and certificates (`security::pki`).
//! - [`serve`]: tonic routes served on a bound listener until stopped.
//! - [`memory`]: a single-replica in-memory backend for tests.
//! - [`ports`]: free loopback ports for addresses named before they are
//!   bound (a raft group's peers), outside the kernel's ephemeral range.
//! - [`raft`]: the default backend — openraft 0.9 (storage-v2) over the
//!   `raft-log` crate on local disk, snapshots as protobuf files, raft RPCs
//!   over tonic, and the start-up rules that refuse a wiped or foreign data
//!   dir.
//! - [`tikv`]: the event log kept in TiKV (`--store tikv://…`): entries at
//!   big-endian index keys, a lease, a compare-and-swap commit point that
//!   fences older leaders; and `tikv::double`, an in-process PD + TiKV
//!   **test double** its tests run against when no TiKV is reachable.
//! - [`conformance`] (feature `conformance`): one suite every backend passes.

pub mod api;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod memory;
pub mod ports;
pub mod raft;
pub mod security;
pub mod serve;
pub mod subscription;
pub mod tikv;

pub use api::{
    AppendError, AppendedRange, EventLog, Fatal, LeaderInfo, LoggedEvent, ReadError, StateAccess,
    StateMachine,
};
pub use subscription::Subscription;
