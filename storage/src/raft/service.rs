//! The tonic services a master serves: `Raft` (replication between masters,
//! and `Status`) and `Log` (append and read events).
//!
//! The services check the cluster id on every raft message: a replica
//! refuses messages from another cluster, and a freshly bootstrapped replica
//! adopts the cluster id of the first leader that reaches it.

use std::sync::Arc;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::SnapshotMeta;
use orrery_proto::raft as pb;
use tonic::{Request, Response, Status};

use super::types::{
    entry_from_pb, log_id_to_pb, membership_to_pb, opt_log_id_from_pb, opt_log_id_to_pb,
    stored_membership_from_pb, vote_from_pb, vote_to_pb,
};
use super::{Inner, LEADER_METADATA};
use crate::api::{AppendError, EventLog, ReadError, StateMachine};

pub struct RaftService<S: StateMachine> {
    pub(crate) inner: Arc<Inner<S>>,
}

pub struct LogService<S: StateMachine> {
    pub(crate) node: super::RaftNode<S>,
}

impl<S: StateMachine> RaftService<S> {
    async fn check_cluster(&self, theirs: &str) -> Result<(), Status> {
        self.inner.check_or_adopt_cluster(theirs).await
    }
}

#[tonic::async_trait]
impl<S: StateMachine> pb::raft_server::Raft for RaftService<S> {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id).await?;
        let entries = req
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let rpc = AppendEntriesRequest {
            vote: vote_from_pb(req.vote.as_ref()),
            prev_log_id: opt_log_id_from_pb(req.prev_log_id.as_ref()),
            entries,
            leader_commit: opt_log_id_from_pb(req.leader_commit.as_ref()),
        };
        let resp = self
            .inner
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(format!("raft: {e}")))?;
        use pb::append_entries_response::Result as R;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
                matching: opt_log_id_to_pb(m.as_ref()),
            }),
            AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(&v)),
        };
        Ok(Response::new(pb::AppendEntriesResponse {
            result: Some(result),
        }))
    }

    async fn request_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id).await?;
        let rpc = VoteRequest {
            vote: vote_from_pb(req.vote.as_ref()),
            last_log_id: opt_log_id_from_pb(req.last_log_id.as_ref()),
        };
        let resp = self
            .inner
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(format!("raft: {e}")))?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_to_pb(resp.last_log_id.as_ref()),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id).await?;
        let meta = req.meta.unwrap_or_default();
        let rpc = InstallSnapshotRequest {
            vote: vote_from_pb(req.vote.as_ref()),
            meta: SnapshotMeta {
                last_log_id: opt_log_id_from_pb(meta.last_log_id.as_ref()),
                last_membership: stored_membership_from_pb(meta.last_membership.as_ref()),
                snapshot_id: meta.snapshot_id,
            },
            offset: req.offset,
            data: req.data,
            done: req.done,
        };
        let resp = self
            .inner
            .raft
            .install_snapshot(rpc)
            .await
            .map_err(|e| Status::unavailable(format!("raft: {e}")))?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(vote_to_pb(&resp.vote)),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.inner.status()))
    }
}

fn not_leader(leader_addr: Option<String>, what: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "{what}: this master is not the leader (leader: {})",
        leader_addr.as_deref().unwrap_or("unknown")
    ));
    if let Some(addr) = leader_addr {
        if let Ok(v) = addr.parse() {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    status
}

#[tonic::async_trait]
impl<S: StateMachine> pb::log_server::Log for LogService<S> {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let req = request.into_inner();
        match self.node.raw_appends() {
            super::RawAppends::Refused => return Err(Status::permission_denied(
                "this master does not take pre-built events (start it with --accept-raw-appends)",
            )),
            super::RawAppends::Accepted => {}
            super::RawAppends::Checked(check) => {
                for (i, e) in req.events.iter().enumerate() {
                    check(e).map_err(|why| {
                        Status::invalid_argument(format!("event #{i} of the batch: {why}"))
                    })?;
                }
            }
        }
        // The term is the committed entry's own (the current term could
        // already be a later one).
        match self.node.commit(req.events).await {
            Ok(c) => Ok(Response::new(pb::AppendResponse {
                first_index: *c.range.start(),
                last_index: *c.range.end(),
                term: c.term,
            })),
            Err(AppendError::NotLeader { leader_addr, .. }) => {
                Err(not_leader(leader_addr, "append"))
            }
            Err(e @ AppendError::TooLarge { .. }) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ AppendError::Unavailable(_)) => Err(Status::unavailable(e.to_string())),
            Err(e @ AppendError::Fatal(_)) => Err(Status::internal(e.to_string())),
        }
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let req = request.into_inner();
        let to = if req.to_index == 0 {
            u64::MAX
        } else {
            req.to_index
        };
        let max = (req.max_events as usize).clamp(1, 10_000);
        match self.node.read(req.from_index, to, max).await {
            Ok(events) => Ok(Response::new(pb::ReadResponse {
                events: events
                    .into_iter()
                    .map(|e| pb::LoggedEvent {
                        index: e.index,
                        term: e.term,
                        payload: e.payload,
                    })
                    .collect(),
            })),
            Err(e @ ReadError::Compacted { .. }) => Err(Status::out_of_range(e.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

pub(crate) fn membership_pb(m: &openraft::Membership<u64, openraft::BasicNode>) -> pb::Membership {
    membership_to_pb(m)
}

pub(crate) fn log_id_pb(id: &openraft::LogId<u64>) -> pb::LogId {
    log_id_to_pb(id)
}

impl<S: StateMachine> std::fmt::Debug for RaftService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftService")
    }
}

impl<S: StateMachine> std::fmt::Debug for LogService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogService")
    }
}
