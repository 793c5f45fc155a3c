//! `digest`: a stable fingerprint of a whole `Cluster`.
//!
//! The digest is SHA-256 over the protobuf snapshot encoding. Snapshots are
//! built from ordered maps, so equal states encode to equal bytes; replicas
//! and `orrery replay check` compare digests to prove they agree (I8).
//! Derived indexes are not part of it: they are recomputed from what is.
//! sha2 (RustCrypto) is used rather than a hand-written hash: it is widely
//! reviewed and its output never changes between versions.

use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::snapshot;
use crate::state::Cluster;

/// A SHA-256 digest of the state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateDigest(pub [u8; 32]);

impl std::fmt::Display for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateDigest({self})")
    }
}

pub fn digest(c: &Cluster) -> StateDigest {
    let bytes = snapshot::to_proto(c).encode_to_vec();
    StateDigest(Sha256::digest(&bytes).into())
}
