//! # orrery-proto: the schemas Orrery speaks and stores
//!
//! This crate owns every `.proto` file and nothing else: generated code only,
//! no business rules. Other crates convert between these messages and their
//! own types.
//!
//! # Layout
//! - `proto/events.proto` → [`events`]: the replicated log's schema (the
//!   envelope and one message per event). **Add-only**: see the rules at the
//!   top of the file; golden encodings under `events/tests/golden/` keep old
//!   logs decodable.
//! - `proto/raft.proto` → [`raft`]: raft RPCs, the on-disk raft entry and
//!   snapshot encoding, and the log service.
//! - Later: `scheduler.proto` (frameworks), `operator.proto` (operators and the
//!   CLI), `agent.proto` (master↔agent, agent↔executor), `raft.proto`
//!   (master↔master), each as its own module.
//!
//! Why prost: it is the protobuf implementation tonic uses, it generates plain
//! structs with no runtime reflection, and protobuf's field numbering lets the
//! log's schema evolve without breaking old logs (unlike bincode, whose
//! project has ceased).

/// Master <-> master replication and the log service: package
/// `orrery.raft.v1` (messages always; tonic clients and servers with the
/// `grpc` feature).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod raft {
    #[cfg(not(feature = "grpc"))]
    include!(concat!(env!("OUT_DIR"), "/messages/orrery.raft.v1.rs"));
    #[cfg(feature = "grpc")]
    include!(concat!(env!("OUT_DIR"), "/orrery.raft.v1.rs"));
}

/// A client for the subset of etcd's v3 KV API that `orrery bench log`
/// uses for its side-by-side peer run (package `etcdserverpb`).
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// The event log's schema: package `orrery.events.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/orrery.events.v1.rs"));
}
