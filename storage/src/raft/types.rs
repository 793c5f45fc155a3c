//! openraft's type configuration for Orrery, and the conversions between
//! openraft's types and their protobuf form (`raft.proto`), which is both
//! the wire format between masters and the on-disk encoding of the log.
//!
//! Protobuf rather than openraft's serde support: the on-disk log must
//! outlive this binary, and protobuf's numbered fields evolve safely.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote,
};
use orrery_proto::raft as pb;
use prost::Message;

/// A batch of opaque events: the application data of one raft entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch(pub Vec<Vec<u8>>);

/// What applying an entry returns to the writer: the event indexes its batch
/// got (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub first: u64,
    pub last: u64,
    pub term: u64,
}

impl std::fmt::Display for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} event(s)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Orrery's raft: node ids are u64, nodes are addresses, an entry's
    /// data is a batch of events, snapshots are bytes in memory.
    pub TypeConfig:
        D = EventBatch,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;

pub fn log_id_to_pb(id: &LogId<NodeId>) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub fn opt_log_id_to_pb(id: Option<&LogId<NodeId>>) -> Option<pb::LogId> {
    id.map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Option<LogId<NodeId>> {
    id.map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<&pb::Vote>) -> Vote<NodeId> {
    let v = v.cloned().unwrap_or_default();
    if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    }
}

pub fn membership_to_pb(m: &Membership<NodeId, BasicNode>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::VoterSet {
                voters: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| pb::NodeAddr {
                node_id: *id,
                addr: n.addr.clone(),
            })
            .collect(),
    }
}

pub fn membership_from_pb(m: Option<&pb::Membership>) -> Membership<NodeId, BasicNode> {
    let m = m.cloned().unwrap_or_default();
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .iter()
        .map(|c| c.voters.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m
        .nodes
        .iter()
        .map(|n| {
            (
                n.node_id,
                BasicNode {
                    addr: n.addr.clone(),
                },
            )
        })
        .collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &StoredMembership<NodeId, BasicNode>) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id().as_ref()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(
    m: Option<&pb::StoredMembership>,
) -> StoredMembership<NodeId, BasicNode> {
    let m = m.cloned().unwrap_or_default();
    StoredMembership::new(
        opt_log_id_from_pb(m.log_id.as_ref()),
        membership_from_pb(m.membership.as_ref()),
    )
}

pub fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::Entry {
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(match &e.payload {
            EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(batch) => pb::entry::Payload::Events(pb::EventBatch {
                events: batch.0.clone(),
            }),
            EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
        }),
    }
}

/// Converts a wire or disk entry; a missing payload (a newer Orrery's entry)
/// is refused, never guessed.
pub fn entry_from_pb(e: pb::Entry) -> Result<Entry<TypeConfig>, String> {
    let log_id = e
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or("entry without a log id")?;
    let payload = match e.payload {
        Some(pb::entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(pb::entry::Payload::Events(b)) => EntryPayload::Normal(EventBatch(b.events)),
        Some(pb::entry::Payload::Membership(m)) => {
            EntryPayload::Membership(membership_from_pb(Some(&m)))
        }
        None => {
            return Err(format!(
                "entry {} has a payload this Orrery does not know",
                log_id.index
            ))
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn encode_entry(e: &Entry<TypeConfig>) -> Vec<u8> {
    entry_to_pb(e).encode_to_vec()
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, String> {
    let pb = pb::Entry::decode(bytes).map_err(|e| format!("undecodable raft entry: {e}"))?;
    entry_from_pb(pb)
}
