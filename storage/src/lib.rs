//! # orrery-storage: the event log
//!
//! Owns the durable, replicated, append-only log of Orrery. It is
//! domain-agnostic: it stores opaque bytes (encoded `Envelope`s) at gap-free
//! indexes and feeds them, in order, to a `StateMachine`. It must not know
//! what an event means.
//!
//! Planned backends (see DESIGN.md): `raft` (openraft with a checksummed,
//! fsynced on-disk log and protobuf snapshots; the default), `tikv`
//! (tikv-client; the log as ordered keys, leadership by a lease key) and
//! `memory` (tests), all held to one conformance suite.
//!
//! **Not finished**: this crate is a placeholder until the storage issue
//! lands; nothing here stores anything yet.
