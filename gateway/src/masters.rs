//! The masters' group through the operator API: `orrery masters
//! list|add|remove` and `orrery master join`.
//!
//! A change runs in four steps, each on the leader, under the group's one
//! change slot ([`RaftNode::try_change_slot`]):
//! 1. storage checks it against raft's live view (leader, quorum, caught
//!    up; see `orrery_storage::raft::membership`);
//! 2. `MastersChangeRequested` is committed (decide refuses a second
//!    pending change and a retired id), with the caller as principal;
//! 3. raft changes its membership (joint consensus);
//! 4. `MastersChanged` records the group raft ended with, and the outcome.
//!
//! Steps 2-4 run in their own task: a client that gives up waiting does not
//! cut a change short. A leader that dies between 2 and 4 leaves the
//! request pending; the next leader's [`settle_pending`] completes a joint
//! configuration if one was left, and records what became of the request.
//!
//! For the process tests that kill a leader mid-change, the environment
//! variable `ORRERY_TEST_MEMBERSHIP_PAUSE` (`before-raft` or
//! `before-record`) holds a change for 3 s at that step; it is logged as a
//! warning, and nothing else reads it.

use std::time::Duration;

use actix::Addr;
use orrery_actors::log::Log;
use orrery_actors::master::{Master, Serving, Submit};
use orrery_actors::telemetry::Origin;
use orrery_events::Command;
use orrery_proto::events::MastersChange;
use orrery_proto::operator as op;
use orrery_storage::raft::membership::{Group, MembershipError};
use orrery_storage::raft::RaftNode;
use orrery_storage::{EventLog, StateAccess};
use tonic::Status;

use crate::grpc::{mailbox, status_of};

type Node = RaftNode<orrery_actors::cluster_machine::ClusterMachine>;

fn raft_node(log: &Log) -> Result<&Node, Status> {
    match log {
        Log::Raft(n) => Ok(n),
        Log::Tikv(_) => Err(Status::failed_precondition(
            "masters on TiKV keep no raft group: they meet in TiKV, and any number may run",
        )),
    }
}

fn membership_status(e: MembershipError) -> Status {
    match e {
        MembershipError::NotLeader { leader_addr, .. } => {
            orrery_actors::not_leader_status(leader_addr.as_deref())
        }
        MembershipError::Raft(_) => Status::unavailable(e.to_string()),
        MembershipError::UnknownMaster(_) => Status::not_found(e.to_string()),
        e => Status::failed_precondition(format!("{} ({})", e, e.name())),
    }
}

/// The group as the leader sees it, with the log's record of it.
pub fn view(log: &Log, group: &Group, committed_index: u64) -> op::MastersGroup {
    let (retired, pending) = log.with_state(|m| {
        (
            m.cluster.masters.retired.iter().copied().collect(),
            m.cluster
                .masters
                .pending
                .as_ref()
                .map(orrery_events::decide::masters::describe_pending)
                .unwrap_or_default(),
        )
    });
    op::MastersGroup {
        leader_id: group.leader_id.unwrap_or(0),
        term: group.term,
        masters: group
            .members
            .iter()
            .map(|m| op::MasterStatus {
                node_id: m.node_id,
                addr: m.addr.clone(),
                role: if Some(m.node_id) == group.leader_id {
                    "leader"
                } else if m.voter {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                matched_index: m.matched,
                lag: m.lag,
            })
            .collect(),
        joint: group.joint,
        last_log_index: group.last_log_index,
        retired,
        pending,
        committed_index,
    }
}

pub async fn list(master: &Addr<Master>, log: &Log) -> Result<op::MastersGroup, Status> {
    master
        .send(Serving)
        .await
        .map_err(mailbox)?
        .map_err(status_of)?;
    let node = raft_node(log)?;
    Ok(view(log, &node.group(), 0))
}

async fn submit(master: &Addr<Master>, command: Command, origin: Origin) -> Result<u64, Status> {
    let c = master
        .send(Submit {
            command,
            want_events: false,
            origin,
        })
        .await
        .map_err(mailbox)?
        .map_err(status_of)?;
    Ok(c.last_index)
}

/// The test hook of the module doc.
async fn test_pause(stage: &str) {
    if std::env::var("ORRERY_TEST_MEMBERSHIP_PAUSE").is_ok_and(|v| v == stage) {
        tracing::warn!(
            stage,
            "ORRERY_TEST_MEMBERSHIP_PAUSE: holding this change for 3 s"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn record(group: &Group, outcome: String) -> Command {
    Command::RecordMasters {
        members: group
            .members
            .iter()
            .map(|m| (m.node_id, m.addr.clone(), m.voter))
            .collect(),
        outcome,
    }
}

/// Runs one change: `change` of master `node_id` (`addr` for a learner).
pub async fn change(
    master: &Addr<Master>,
    log: &Log,
    change: MastersChange,
    node_id: u64,
    addr: String,
) -> Result<op::MastersGroup, Status> {
    master
        .send(Serving)
        .await
        .map_err(mailbox)?
        .map_err(status_of)?;
    let node = raft_node(log)?.clone();
    if change == MastersChange::AddLearner {
        // A joining master that restarted before its first raft message:
        // already a learner here, nothing to change (a learner never voted,
        // so an empty data dir is safe for it).
        let g = node.group();
        if g.get(node_id).is_some_and(|m| !m.voter && m.addr == addr) {
            return Ok(view(log, &g, 0));
        }
    }
    let slot = node.try_change_slot().ok_or_else(|| {
        membership_status(MembershipError::InProgress(
            "another change is running on this leader".into(),
        ))
    })?;
    match change {
        MastersChange::AddLearner => node.check_add_learner(node_id, &addr),
        MastersChange::Promote => node.check_promote(node_id).await,
        MastersChange::Remove => node.check_remove(node_id).await,
        MastersChange::Unspecified => {
            return Err(Status::invalid_argument("no change named"));
        }
    }
    .map_err(membership_status)?;
    let origin = orrery_actors::telemetry::origin();
    let master = master.clone();
    let log = log.clone();
    let run = tokio::spawn(async move {
        let _slot = slot;
        submit(
            &master,
            Command::RequestMastersChange {
                change,
                node_id,
                addr: addr.clone(),
            },
            origin.clone(),
        )
        .await?;
        test_pause("before-raft").await;
        let result = match change {
            MastersChange::AddLearner => node.add_learner(node_id, &addr).await,
            MastersChange::Promote => node.promote(node_id).await,
            _ => node.remove(node_id).await,
        };
        let outcome = match &result {
            Ok(_) => String::new(),
            Err(e) => format!("refused: {e}"),
        };
        tracing::info!(
            change = ?change,
            node_id,
            outcome = %if outcome.is_empty() { "done" } else { &outcome },
            "masters' group change"
        );
        test_pause("before-record").await;
        let index = submit(&master, record(&node.group(), outcome), origin).await?;
        let group = result.map_err(membership_status)?;
        Ok::<_, Status>(view(&log, &group, index))
    });
    run.await
        .map_err(|e| Status::internal(format!("the change's task failed: {e}")))?
}

/// What became of a pending request, judged by the group raft has now.
fn outcome_of(p: &orrery_proto::events::MastersChangeRequested, g: &Group) -> String {
    let m = g.get(p.node_id);
    let done = match MastersChange::try_from(p.change).unwrap_or_default() {
        MastersChange::AddLearner => m.is_some(),
        MastersChange::Promote => m.is_some_and(|m| m.voter),
        MastersChange::Remove => m.is_none(),
        MastersChange::Unspecified => false,
    };
    if done {
        String::new()
    } else {
        "rolled back: the leader changed before the change committed".into()
    }
}

/// On the leader, when no change runs here: finishes a change a previous
/// leader left half done and records how it ended.
pub async fn settle_pending(master: &Addr<Master>, log: &Log) -> Result<bool, Status> {
    let node = raft_node(log)?;
    if !log.leader().ready {
        return Ok(false);
    }
    let Some(pending) = log.with_state(|m| m.cluster.masters.pending.clone()) else {
        return Ok(false);
    };
    let Some(_slot) = node.try_change_slot() else {
        return Ok(false);
    };
    if master
        .send(Serving)
        .await
        .map_err(mailbox)?
        .map_err(status_of)
        .is_err()
    {
        return Ok(false);
    }
    node.finish_joint().await.map_err(membership_status)?;
    let group = node.group();
    let outcome = outcome_of(&pending, &group);
    let settled = if outcome.is_empty() {
        format!("settled by master {} after a leader change", node.node_id())
    } else {
        outcome
    };
    tracing::warn!(node_id = pending.node_id, outcome = %settled, "settled a masters' group change a previous leader left pending");
    submit(master, record(&group, settled), Origin::default()).await?;
    Ok(true)
}

/// Runs [`settle_pending`] every half second for as long as the master runs.
pub fn spawn_settler(master: Addr<Master>, log: Log) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !master.connected() {
                return;
            }
            if let Err(e) = settle_pending(&master, &log).await {
                tracing::warn!(
                    "settling a pending change of the masters' group: {}",
                    e.message()
                );
            }
        }
    })
}
