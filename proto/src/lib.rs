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
//! - `proto/scheduler.proto` → [`scheduler`]: frameworks ↔ the active
//!   master (Mesos' v1 scheduler API over gRPC).
//! - `proto/agent.proto` → [`agent`]: agents ↔ the active master.
//! - `proto/operator.proto` → [`operator`]: the CLI and tools.
//! - `proto/checkpoint.proto` → [`checkpoint`]: an agent's on-disk records.
//! - `proto/tikv_log.proto` → [`tikvlog`]: the TiKV backend's records.
//! - `proto/tikv/*.proto` → `tikv_double`: a subset of kvproto's PD and TiKV
//!   services, for the TiKV test double (server side only).
//!
//! The three client APIs are built only with the `grpc` feature.
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

/// The TiKV backend's records (entries, tail, lease, snapshot meta):
/// package `orrery.tikvlog.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod tikvlog {
    include!(concat!(env!("OUT_DIR"), "/orrery.tikvlog.v1.rs"));
}

/// A subset of PD's and TiKV's gRPC services (kvproto's field numbers and
/// method paths), server side only: what the in-process TiKV **test double**
/// serves. Not a TiKV client; the backend uses tikv-client.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod tikv_double {
    pub mod metapb {
        include!(concat!(env!("OUT_DIR"), "/metapb.rs"));
    }
    pub mod pdpb {
        include!(concat!(env!("OUT_DIR"), "/pdpb.rs"));
    }
    pub mod kvrpcpb {
        include!(concat!(env!("OUT_DIR"), "/kvrpcpb.rs"));
    }
    pub mod tikvpb {
        include!(concat!(env!("OUT_DIR"), "/tikvpb.rs"));
    }
}

/// The event log's schema: package `orrery.events.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/orrery.events.v1.rs"));
}

/// Frameworks ↔ the active master: package `orrery.scheduler.v1`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod scheduler {
    include!(concat!(env!("OUT_DIR"), "/orrery.scheduler.v1.rs"));
}

/// Agents ↔ the active master: package `orrery.agent.v1`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/orrery.agent.v1.rs"));
}

/// Operators and the CLI ↔ the active master: package `orrery.operator.v1`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod operator {
    include!(concat!(env!("OUT_DIR"), "/orrery.operator.v1.rs"));
}

/// What an agent checkpoints under its work dir: package
/// `orrery.checkpoint.v1`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod checkpoint {
    include!(concat!(env!("OUT_DIR"), "/orrery.checkpoint.v1.rs"));
}
