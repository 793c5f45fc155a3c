//! Raft RPCs to other masters over tonic (`orrery.raft.v1.Raft`).
//!
//! Every request carries the cluster id, so a replica of another cluster
//! (a data dir copied from elsewhere, a wrong `--peers`) is refused by the
//! receiver instead of joining its log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use orrery_proto::raft as pb;
use orrery_proto::raft::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use crate::security::Tls;

use super::types::{
    entry_to_pb, log_id_to_pb, opt_log_id_from_pb, opt_log_id_to_pb, stored_membership_to_pb,
    vote_from_pb, vote_to_pb, NodeId, TypeConfig,
};

/// The largest raft message either side accepts (a batch of entries or a
/// snapshot chunk).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 128 << 20;

pub struct NetworkFactory {
    pub(crate) cluster_id: Arc<Mutex<String>>,
    pub(crate) tls: Option<Arc<Tls>>,
}

pub struct Peer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    cluster_id: Arc<Mutex<String>>,
    tls: Option<Arc<Tls>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: None,
            cluster_id: self.cluster_id.clone(),
            tls: self.tls.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(
    e: impl std::fmt::Display,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network<E: std::error::Error>(
    e: impl std::fmt::Display,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// Connects lazily: a peer that is down costs nothing until it is called.
/// With `tls`, over mutual TLS to a peer that must hold a master
/// certificate.
pub fn client(addr: &str, tls: Option<&Tls>) -> Result<RaftClient<Channel>, String> {
    let endpoint = match tls {
        Some(tls) => tls.endpoint(addr)?,
        None => Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?,
    };
    // Keepalives as on every Orrery channel (see `crate::serve`): a peer
    // frozen without a reset is found by its silence, not by a TCP timeout
    // minutes later.
    let endpoint = endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(crate::serve::TCP_KEEPALIVE))
        .http2_keep_alive_interval(crate::serve::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::serve::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(RaftClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
}

impl Peer {
    fn client<E: std::error::Error>(&mut self) -> Result<RaftClient<Channel>, RpcErr<E>> {
        if self.client.is_none() {
            self.client = Some(client(&self.addr, self.tls.as_deref()).map_err(unreachable::<E>)?);
        }
        Ok(self.client.clone().expect("set above"))
    }

    fn cluster_id(&self) -> String {
        self.cluster_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn status_err<E: std::error::Error>(&self, s: tonic::Status) -> RpcErr<E> {
        let msg = format!("node {} at {}: {}", self.target, self.addr, s.message());
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                unreachable::<E>(msg)
            }
            _ => network::<E>(msg),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let req = pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
            entries: rpc.entries.iter().map(entry_to_pb).collect(),
            leader_commit: opt_log_id_to_pb(rpc.leader_commit.as_ref()),
            cluster_id: self.cluster_id(),
        };
        let mut c = self.client()?;
        let resp = tokio::time::timeout(option.hard_ttl(), c.append_entries(req))
            .await
            .map_err(|_| network(format!("append_entries to node {} timed out", self.target)))?
            .map_err(|s| self.status_err(s))?
            .into_inner();
        Ok(match resp.result {
            Some(pb::append_entries_response::Result::Success(_)) => AppendEntriesResponse::Success,
            Some(pb::append_entries_response::Result::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(p.matching.as_ref()))
            }
            Some(pb::append_entries_response::Result::Conflict(_)) => {
                AppendEntriesResponse::Conflict
            }
            Some(pb::append_entries_response::Result::HigherVote(v)) => {
                AppendEntriesResponse::HigherVote(vote_from_pb(Some(&v)))
            }
            None => return Err(network("append_entries: empty response")),
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let req = pb::InstallSnapshotRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            meta: Some(pb::SnapshotMeta {
                last_log_id: rpc.meta.last_log_id.as_ref().map(log_id_to_pb),
                last_membership: Some(stored_membership_to_pb(&rpc.meta.last_membership)),
                snapshot_id: rpc.meta.snapshot_id.clone(),
            }),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
            cluster_id: self.cluster_id(),
        };
        let mut c = self.client()?;
        let resp = tokio::time::timeout(option.hard_ttl(), c.install_snapshot(req))
            .await
            .map_err(|_| {
                network(format!(
                    "install_snapshot to node {} timed out",
                    self.target
                ))
            })?
            .map_err(|s| self.status_err(s))?
            .into_inner();
        Ok(InstallSnapshotResponse {
            vote: vote_from_pb(resp.vote.as_ref()),
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req = pb::VoteRequest {
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: opt_log_id_to_pb(rpc.last_log_id.as_ref()),
            cluster_id: self.cluster_id(),
        };
        let mut c = self.client()?;
        let resp = tokio::time::timeout(option.hard_ttl(), c.request_vote(req))
            .await
            .map_err(|_| network(format!("vote to node {} timed out", self.target)))?
            .map_err(|s| self.status_err(s))?
            .into_inner();
        Ok(VoteResponse {
            vote: vote_from_pb(resp.vote.as_ref()),
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_from_pb(resp.last_log_id.as_ref()),
        })
    }
}

impl std::fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkFactory")
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({} at {})", self.target, self.addr)
    }
}
