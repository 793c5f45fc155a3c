//! Masters joining and leaving a running group, on openraft's joint
//! consensus.
//!
//! A new master first joins as a **learner** (`add_learner`): it receives
//! the log (a snapshot if the log was purged) but does not vote, so a slow
//! newcomer cannot stall commits. The operator then **promotes** it
//! (`change_membership`, which commits a joint configuration and then the
//! new one), or **removes** a voter or learner. openraft's own membership
//! entries decide who votes; the master records each change as events too
//! (see `orrery_events`), which is where removed ids are remembered.
//!
//! Refused, by name ([`MembershipError`]), because they are unsafe:
//! - a change on a replica that does not lead (the caller follows the hint);
//! - a second change while one runs here, or while the group is still in a
//!   joint configuration (one change at a time);
//! - removing the leader (openraft 0.9 has no leadership transfer: stop the
//!   leader so another takes over, then remove it);
//! - a voter set that would leave no quorum of masters that answer now
//!   (each is asked for its status; the leader counts itself);
//! - promoting a learner that is not caught up, or an id/address already in
//!   the group (a wiped master keeps its id in the group: `--rebuild` it, or
//!   remove it and join a new id).
//!
//! A change cut short by the leader's death is left to the next leader:
//! [`RaftNode::finish_joint`] completes a joint configuration it finds
//! (openraft 0.9 does not by itself), or the new configuration never
//! committed and the group is as before. Either way it is clean.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use thiserror::Error;

use super::{peer_status, RaftNode};
use crate::api::StateMachine;

/// A learner may be promoted once it is this close to the leader's log.
pub const CATCH_UP_LAG_MAX: u64 = 100;

/// How long the leader waits for a master's status when it counts who
/// answers.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Masters one group may hold (voters and learners).
pub const GROUP_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    #[error("master {node_id} does not lead; the leader is {}", leader_addr.as_deref().unwrap_or("unknown"))]
    NotLeader {
        node_id: u64,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("a change of the masters' group is in progress ({0}); one change at a time")]
    InProgress(String),
    #[error(
        "master {0} is the leader and cannot remove itself: stop it so that another master \
         takes over, then remove it from the new leader"
    )]
    LeaderRemoval(u64),
    #[error("{0}")]
    NoQuorum(String),
    #[error(
        "master {0} is already in the group; if its data dir was lost, start it with \
         --rebuild, or remove it and join a master with a new id"
    )]
    AlreadyMember(u64),
    #[error("address {addr} is already master {node_id}'s")]
    AddressInUse { addr: String, node_id: u64 },
    #[error("master {0} is not in the group")]
    UnknownMaster(u64),
    #[error("master {0} is already a voter")]
    AlreadyVoter(u64),
    #[error(
        "master {node_id} is {lag} entries behind the leader (at most {CATCH_UP_LAG_MAX} to be \
         promoted); wait for it to catch up (`orrery masters list`)"
    )]
    NotCaughtUp { node_id: u64, lag: u64 },
    #[error("the group would hold {0} masters (at most {GROUP_MAX})")]
    TooMany(usize),
    #[error("raft: {0}")]
    Raft(String),
}

impl MembershipError {
    /// A stable snake_case name, for metrics, JSON and tests.
    pub fn name(&self) -> &'static str {
        match self {
            MembershipError::NotLeader { .. } => "not_leader",
            MembershipError::InProgress(_) => "change_in_progress",
            MembershipError::LeaderRemoval(_) => "leader_removal",
            MembershipError::NoQuorum(_) => "no_quorum",
            MembershipError::AlreadyMember(_) => "already_member",
            MembershipError::AddressInUse { .. } => "address_in_use",
            MembershipError::UnknownMaster(_) => "unknown_master",
            MembershipError::AlreadyVoter(_) => "already_voter",
            MembershipError::NotCaughtUp { .. } => "not_caught_up",
            MembershipError::TooMany(_) => "too_many",
            MembershipError::Raft(_) => "raft",
        }
    }
}

/// One master as the group sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    pub addr: String,
    /// A voter in the (last) configuration; else a learner.
    pub voter: bool,
    /// The last log index the leader knows it holds (on the leader only).
    pub matched: Option<u64>,
    /// Entries behind the leader's last log index (on the leader only).
    pub lag: Option<u64>,
}

/// The group as this replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub leader_id: Option<u64>,
    pub term: u64,
    pub members: Vec<Member>,
    /// In a joint configuration (a change half done).
    pub joint: bool,
    /// The raft log index of the configuration shown.
    pub config_index: Option<u64>,
    pub last_log_index: u64,
}

impl Group {
    pub fn voters(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == id)
    }
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl<S: StateMachine> RaftNode<S> {
    /// The group as this replica sees it (match index and lag on the leader).
    pub fn group(&self) -> Group {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let last_voters: BTreeSet<u64> = membership
            .get_joint_config()
            .last()
            .cloned()
            .unwrap_or_default();
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.as_ref();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if *id == m.id && m.state == ServerState::Leader {
                    Some(last)
                } else {
                    replication
                        .and_then(|r| r.get(id))
                        .map(|l| l.as_ref().map_or(0, |l| l.index))
                };
                Member {
                    node_id: *id,
                    addr: node.addr.clone(),
                    voter: last_voters.contains(id),
                    matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                }
            })
            .collect();
        Group {
            leader_id: m.current_leader,
            term: m.current_term,
            members,
            joint: membership.get_joint_config().len() > 1,
            config_index: m.membership_config.log_id().map(|l| l.index),
            last_log_index: last,
        }
    }

    /// Holds the group's one change slot: None if a change runs here now.
    pub fn try_change_slot(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.inner.change_slot.clone().try_lock_owned().ok()
    }

    fn must_lead(&self) -> Result<Group, MembershipError> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(MembershipError::NotLeader {
                node_id: self.node_id(),
                leader_id: m.current_leader,
                leader_addr: m
                    .current_leader
                    .and_then(|l| super::member_addr(&m, &self.inner.config.peers, l)),
            });
        }
        let g = self.group();
        if g.joint {
            return Err(MembershipError::InProgress(
                "the group is in a joint configuration".into(),
            ));
        }
        Ok(g)
    }

    /// Which of `ids` answer a status call now (the leader always does).
    async fn answering(&self, g: &Group, ids: &BTreeSet<u64>) -> BTreeSet<u64> {
        let tls = self.inner.config.tls.clone();
        let asks = ids.iter().map(|id| {
            let addr = g.get(*id).map(|m| m.addr.clone());
            let me = self.node_id();
            let tls = tls.clone();
            async move {
                if *id == me {
                    return Some(*id);
                }
                let addr = addr?;
                peer_status(&addr, tls.as_deref(), PROBE_WAIT)
                    .await
                    .ok()
                    .map(|_| *id)
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Refuses a voter set whose majority does not answer now.
    async fn check_quorum(
        &self,
        g: &Group,
        after: &BTreeSet<u64>,
        what: &str,
    ) -> Result<(), MembershipError> {
        if after.is_empty() {
            return Err(MembershipError::NoQuorum(format!(
                "{what} would leave the group without a voter"
            )));
        }
        let up = self.answering(g, after).await;
        if up.len() < majority(after.len()) {
            let down: Vec<String> = after.difference(&up).map(u64::to_string).collect();
            return Err(MembershipError::NoQuorum(format!(
                "{what} would leave voters {} of which only {} answer (a quorum needs {}; \
                 not answering: {}): the group could not commit",
                after
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                up.len(),
                majority(after.len()),
                down.join(",")
            )));
        }
        Ok(())
    }

    /// Checks that master `id` at `addr` may join as a learner.
    pub fn check_add_learner(&self, id: u64, addr: &str) -> Result<(), MembershipError> {
        let g = self.must_lead()?;
        if g.get(id).is_some() {
            return Err(MembershipError::AlreadyMember(id));
        }
        if let Some(m) = g.members.iter().find(|m| m.addr == addr) {
            return Err(MembershipError::AddressInUse {
                addr: addr.to_owned(),
                node_id: m.node_id,
            });
        }
        if g.members.len() + 1 > GROUP_MAX {
            return Err(MembershipError::TooMany(g.members.len() + 1));
        }
        Ok(())
    }

    /// Adds master `id` as a learner; returns once the change is committed
    /// (replication to it has started; it catches up in the background).
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<Group, MembershipError> {
        self.check_add_learner(id, addr)?;
        self.inner
            .raft
            .add_learner(
                id,
                BasicNode {
                    addr: addr.to_owned(),
                },
                false,
            )
            .await
            .map_err(|e| self.raft_error(e))?;
        Ok(self.group())
    }

    /// Checks that learner `id` may become a voter.
    pub async fn check_promote(&self, id: u64) -> Result<(), MembershipError> {
        let g = self.must_lead()?;
        let m = g.get(id).ok_or(MembershipError::UnknownMaster(id))?;
        if m.voter {
            return Err(MembershipError::AlreadyVoter(id));
        }
        let lag = m.lag.unwrap_or(u64::MAX);
        if lag > CATCH_UP_LAG_MAX {
            return Err(MembershipError::NotCaughtUp { node_id: id, lag });
        }
        let mut after = g.voters();
        after.insert(id);
        self.check_quorum(&g, &after, &format!("promoting master {id}"))
            .await
    }

    /// Makes learner `id` a voter (joint consensus: two configurations
    /// commit in turn).
    pub async fn promote(&self, id: u64) -> Result<Group, MembershipError> {
        self.check_promote(id).await?;
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.raft_error(e))?;
        Ok(self.group())
    }

    /// Checks that master `id` may leave the group.
    pub async fn check_remove(&self, id: u64) -> Result<(), MembershipError> {
        let g = self.must_lead()?;
        let m = g.get(id).ok_or(MembershipError::UnknownMaster(id))?;
        if id == self.node_id() {
            return Err(MembershipError::LeaderRemoval(id));
        }
        if m.voter {
            let mut after = g.voters();
            after.remove(&id);
            self.check_quorum(&g, &after, &format!("removing master {id}"))
                .await?;
        }
        Ok(())
    }

    /// Removes master `id` (a voter or a learner) from the group.
    pub async fn remove(&self, id: u64) -> Result<Group, MembershipError> {
        self.check_remove(id).await?;
        let voter = self.group().get(id).is_some_and(|m| m.voter);
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.raft_error(e))?;
        Ok(self.group())
    }

    /// On the leader: completes a joint configuration left by a leader
    /// that died mid-change (its target, the last configuration, becomes
    /// the group). Returns whether there was one to finish.
    pub async fn finish_joint(&self) -> Result<bool, MembershipError> {
        let g = self.group();
        if !g.joint || g.leader_id != Some(self.node_id()) {
            return Ok(false);
        }
        let target: BTreeSet<u64> = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .last()
            .cloned()
            .unwrap_or_default();
        tracing::warn!(voters = ?target, "finishing a change of the masters' group that a leader change interrupted");
        self.inner
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(target), false)
            .await
            .map_err(|e| self.raft_error(e))?;
        Ok(true)
    }

    fn raft_error(
        &self,
        e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
    ) -> MembershipError {
        use openraft::error::{ClientWriteError, RaftError};
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                MembershipError::NotLeader {
                    node_id: self.node_id(),
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                MembershipError::InProgress(e.to_string())
            }
            other => MembershipError::Raft(other.to_string()),
        }
    }
}
