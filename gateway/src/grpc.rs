//! The master's gRPC services: wire messages to actor messages and back.
//!
//! Every handler validates what it can convert (enums, resources), asks the
//! `Master` actor, and maps its answer to a status: a follower answers
//! UNAVAILABLE with `orrery-leader`; a rejected command answers with the
//! rejection's class (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) and
//! its message, which names the problem.

use std::pin::Pin;

use actix::Addr;
use orrery_actors::master::{
    AgentPong, AttachAgent, FrameworkCall, JobStatus, ListJobs, Log, Master, MasterError,
    RegisterAgent, Serving, Submit, SubscribeFramework,
};
use orrery_actors::{agent_session, framework_session, not_leader_status, views};
use orrery_events::command::{
    AgentRegistration, Command, FrameworkSubscription, ReportedTask, StatusUpdate,
};
use orrery_events::pb::{self, FrameworkCapability, StatusSource, TaskReason, TaskState};
use orrery_events::state::Domain;
use orrery_events::{AgentId, FrameworkId, RejectionClass, Resources, TaskId};
use orrery_proto::agent as ap;
use orrery_proto::events::MastersChange;
use orrery_proto::operator as op;
use orrery_proto::scheduler as sp;
use orrery_storage::{EventLog, StateAccess};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;

/// The metadata key naming a rejection (`host_in_maintenance`, ...).
pub const REJECTION_METADATA: &str = "orrery-rejection";

/// Largest message a client may send (an Accept with 1,000 tasks fits).
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;

pub(crate) fn status_of(e: MasterError) -> Status {
    match e {
        MasterError::NotLeader { leader_addr } => not_leader_status(leader_addr.as_deref()),
        MasterError::Rejected(r) => {
            let message = r.to_string();
            let mut status = match r.class() {
                RejectionClass::Invalid => Status::invalid_argument(message),
                RejectionClass::NotFound => Status::not_found(message),
                RejectionClass::Precondition => Status::failed_precondition(message),
            };
            // The refusal's name, for clients that react to one in
            // particular (an agent waits out a DOWN host).
            if let Ok(v) = r.name().parse() {
                status.metadata_mut().insert(REJECTION_METADATA, v);
            }
            status
        }
        e @ (MasterError::StaleStream { .. } | MasterError::NotRegistered(_)) => {
            Status::failed_precondition(e.to_string())
        }
        MasterError::AgentRefused { name, message } => {
            let mut status = Status::failed_precondition(message);
            if let Ok(v) = name.parse() {
                status.metadata_mut().insert(REJECTION_METADATA, v);
            }
            status
        }
        e @ (MasterError::Recovering | MasterError::Unavailable(_)) => {
            Status::unavailable(e.to_string())
        }
        e @ MasterError::Overloaded { retry_after, .. } => {
            let mut status = Status::resource_exhausted(e.to_string());
            // gRPC's own pushback (A6 retry design) and the HTTP form.
            let ms = retry_after.as_millis().to_string();
            let secs = retry_after.as_secs().max(1).to_string();
            if let (Ok(ms), Ok(secs)) = (ms.parse(), secs.parse()) {
                status.metadata_mut().insert("grpc-retry-pushback-ms", ms);
                status.metadata_mut().insert("retry-after", secs);
            }
            status
        }
    }
}

pub(crate) fn mailbox(e: actix::MailboxError) -> Status {
    Status::unavailable(format!("the master actor is not running: {e}"))
}

fn enum_field<T: TryFrom<i32>>(field: &str, v: i32) -> Result<T, Status> {
    T::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{field}: {v} is not a known value")))
}

fn resources(field: &str, r: Option<&pb::Resources>) -> Result<Resources, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument(format!("{field} is missing")))?;
    Resources::from_proto(r).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn domain(d: Option<pb::Domain>) -> Option<Domain> {
    d.map(|d| Domain {
        region: d.region,
        zone: d.zone,
    })
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

// --- scheduler ------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct SchedulerService {
    pub master: Addr<Master>,
    pub log: Log,
}

#[tonic::async_trait]
impl sp::scheduler_server::Scheduler for SchedulerService {
    type SubscribeStream = Stream<sp::Event>;

    async fn subscribe(
        &self,
        request: Request<sp::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request);
        let info = request
            .into_inner()
            .framework
            .ok_or_else(|| Status::invalid_argument("framework info is missing"))?;
        let mut region_aware = false;
        let mut partition_aware = false;
        for c in &info.capabilities {
            match enum_field::<FrameworkCapability>("capabilities", *c)? {
                FrameworkCapability::RegionAware => region_aware = true,
                FrameworkCapability::PartitionAware => partition_aware = true,
                FrameworkCapability::Unspecified => {
                    return Err(Status::invalid_argument(
                        "capabilities: FRAMEWORK_CAPABILITY_UNSPECIFIED is not a capability",
                    ))
                }
            }
        }
        // Bound to the authenticated caller; the core refuses a failover
        // under another principal.
        let principal = caller.framework_principal(&info.principal, &info.role)?;
        let subscription = FrameworkSubscription {
            framework_id: (!info.framework_id.is_empty())
                .then(|| FrameworkId::new(info.framework_id)),
            name: info.name,
            role: info.role,
            region_aware,
            partition_aware,
            checkpoint: info.checkpoint,
            failover_timeout_ms: info.failover_timeout_ms,
            principal,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(framework_session::STREAM_BUFFER);
        self.master
            .send(SubscribeFramework {
                subscription,
                tx,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn call(&self, request: Request<sp::Call>) -> Result<Response<sp::CallResponse>, Status> {
        let caller = Caller::of(&request);
        let call = request.into_inner();
        if caller.principal.is_some() {
            let bound = self.log.with_state(|m| {
                m.cluster
                    .frameworks
                    .get(&FrameworkId::new(call.framework_id.clone()))
                    .map(|f| f.principal.clone())
            });
            if let Some(bound) = bound {
                caller.framework_owner(&call.framework_id, &bound)?;
            }
        }
        let inner = call
            .call
            .ok_or_else(|| Status::invalid_argument("the call names no operation"))?;
        let committed_index = self
            .master
            .send(FrameworkCall {
                framework_id: FrameworkId::new(call.framework_id),
                stream_id: call.stream_id,
                call: inner,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(sp::CallResponse { committed_index }))
    }
}

// --- agents -----------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct AgentService {
    pub master: Addr<Master>,
    pub log: Log,
    pub ping: AgentPing,
}

/// What the master announces of its pings at registration: the agent takes
/// the master for gone after `interval_ms * max_timeouts` of silence.
#[derive(Clone, Copy, Debug)]
pub struct AgentPing {
    pub interval_ms: u64,
    pub max_timeouts: u32,
}

impl AgentPing {
    pub fn of(settings: &orrery_actors::master::Settings) -> Self {
        AgentPing {
            interval_ms: settings.agent_ping_timeout.as_millis() as u64,
            max_timeouts: settings.max_agent_ping_timeouts,
        }
    }
}

impl AgentService {
    /// The caller must be the agent of `agent_id`'s host (an id the log
    /// does not know is left to the master to refuse).
    fn own_agent(&self, caller: &Caller, agent_id: &str) -> Result<(), Status> {
        if caller.principal.is_none() {
            return Ok(());
        }
        let host = self.log.with_state(|m| {
            m.cluster
                .agents
                .get(&AgentId::new(agent_id.to_owned()))
                .map(|a| a.hostname.clone())
        });
        match host {
            Some(h) => caller.agent_host(&h),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl ap::agent_link_server::AgentLink for AgentService {
    type AttachStream = Stream<ap::MasterMessage>;

    async fn register(
        &self,
        request: Request<ap::RegisterRequest>,
    ) -> Result<Response<ap::RegisterResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("agent info is missing"))?;
        caller.agent_host(&info.hostname)?;
        self.own_agent(&caller, &req.agent_id)?;
        let registration = AgentRegistration {
            hostname: info.hostname,
            ip: info.ip,
            resources: resources("resources", info.resources.as_ref())?,
            attributes: info
                .attributes
                .into_iter()
                .map(|a| (a.name, a.value))
                .collect(),
            domain: domain(info.domain),
        };
        let mut tasks = Vec::with_capacity(req.tasks.len());
        for t in req.tasks {
            tasks.push(ReportedTask {
                framework_id: FrameworkId::new(t.framework_id),
                task_id: TaskId::new(t.task_id),
                state: enum_field::<TaskState>("tasks.state", t.state)?,
            });
        }
        let (agent_id, term) = self
            .master
            .send(RegisterAgent {
                agent_id: (!req.agent_id.is_empty()).then(|| AgentId::new(req.agent_id)),
                registration,
                tasks,
                version: req.version,
                incarnation: req.incarnation,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(ap::RegisterResponse {
            agent_id: agent_id.0,
            term,
            ping_interval_ms: self.ping.interval_ms,
            max_ping_timeouts: self.ping.max_timeouts,
        }))
    }

    async fn attach(
        &self,
        request: Request<ap::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let caller = Caller::of(&request);
        let agent_id = request.into_inner().agent_id;
        self.own_agent(&caller, &agent_id)?;
        let agent_id = AgentId::new(agent_id);
        let (tx, rx) = tokio::sync::mpsc::channel(agent_session::STREAM_BUFFER);
        self.master
            .send(AttachAgent { agent_id, tx })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pong(
        &self,
        request: Request<ap::PongRequest>,
    ) -> Result<Response<ap::PongResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        self.own_agent(&caller, &req.agent_id)?;
        self.master
            .send(AgentPong {
                agent_id: AgentId::new(req.agent_id),
                seq: req.seq,
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(ap::PongResponse {}))
    }

    async fn update_status(
        &self,
        request: Request<ap::StatusUpdate>,
    ) -> Result<Response<ap::StatusAck>, Status> {
        let caller = Caller::of(&request);
        let u = request.into_inner();
        self.own_agent(&caller, &u.agent_id)?;
        let uuid = u.uuid.clone();
        let update = StatusUpdate {
            agent_id: AgentId::new(u.agent_id),
            framework_id: FrameworkId::new(u.framework_id),
            task_id: TaskId::new(u.task_id),
            state: enum_field::<TaskState>("state", u.state)?,
            uuid: u.uuid,
            reason: enum_field::<TaskReason>("reason", u.reason)?,
            message: u.message,
            source: enum_field::<StatusSource>("source", u.source)?,
            exit_code: u.exit_code,
            healthy: u.healthy,
        };
        self.master
            .send(Submit {
                command: Command::UpdateStatus(update),
                want_events: false,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(ap::StatusAck { uuid }))
    }
}

// --- operator ---------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct OperatorService {
    pub master: Addr<Master>,
    pub log: Log,
}

/// Who leads, answered by every master from its own raft state without the
/// actor's mailbox (a busy leader still answers at once): what callers ask
/// of all masters in parallel when their leader stopped answering.
#[derive(Clone, Debug)]
pub struct DiscoveryService {
    pub log: Log,
}

#[tonic::async_trait]
impl op::discovery_server::Discovery for DiscoveryService {
    async fn leader(
        &self,
        _: Request<op::LeaderRequest>,
    ) -> Result<Response<op::LeaderResponse>, Status> {
        let l = self.log.leader();
        Ok(Response::new(op::LeaderResponse {
            node_id: l.leader_id.filter(|_| l.is_leader).unwrap_or_default(),
            term: l.term,
            serving: l.is_leader && l.ready,
            leader_addr: l.leader_addr.unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl op::operator_server::Operator for OperatorService {
    async fn get_state(
        &self,
        _: Request<op::GetStateRequest>,
    ) -> Result<Response<op::State>, Status> {
        self.master
            .send(Serving)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        let mut state = self.log.with_state(|m| views::state(&m.cluster));
        state.commit_index = self.log.last_applied();
        Ok(Response::new(state))
    }

    async fn update_weights(
        &self,
        request: Request<op::UpdateWeightsRequest>,
    ) -> Result<Response<op::UpdateWeightsResponse>, Status> {
        let weights = request
            .into_inner()
            .weights
            .into_iter()
            .map(|w| (w.role, w.weight))
            .collect();
        let committed = self
            .master
            .send(Submit {
                command: Command::SetRoleWeights { weights },
                want_events: false,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(op::UpdateWeightsResponse {
            committed_index: committed.last_index,
        }))
    }

    async fn create_job(
        &self,
        r: Request<pb::JobSpec>,
    ) -> Result<Response<op::JobResponse>, Status> {
        self.job_command(Command::CreateJob(r.into_inner())).await
    }

    async fn update_job(
        &self,
        r: Request<pb::JobSpec>,
    ) -> Result<Response<op::JobResponse>, Status> {
        self.job_command(Command::UpdateJob(r.into_inner())).await
    }

    async fn kill_job(&self, r: Request<pb::JobKey>) -> Result<Response<op::JobResponse>, Status> {
        let key = orrery_events::state::JobKey::from_proto(Some(&r.into_inner()));
        self.job_command(Command::KillJob(key)).await
    }

    async fn list_jobs(
        &self,
        _: Request<op::ListJobsRequest>,
    ) -> Result<Response<op::JobList>, Status> {
        let list = self
            .master
            .send(ListJobs)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(list))
    }

    async fn update_schedule(
        &self,
        r: Request<op::MaintenanceSchedule>,
    ) -> Result<Response<op::JobResponse>, Status> {
        let windows = r
            .into_inner()
            .windows
            .into_iter()
            .map(window_from)
            .collect();
        self.job_command(Command::UpdateSchedule { windows }).await
    }

    async fn get_schedule(
        &self,
        _: Request<op::GetScheduleRequest>,
    ) -> Result<Response<op::MaintenanceSchedule>, Status> {
        self.master
            .send(Serving)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        let windows = self.log.with_state(|m| {
            m.cluster
                .schedule
                .iter()
                .map(orrery_events::projections::maintenance::window_proto)
                .collect()
        });
        Ok(Response::new(op::MaintenanceSchedule { windows }))
    }

    async fn start_maintenance(
        &self,
        r: Request<op::Hosts>,
    ) -> Result<Response<op::JobResponse>, Status> {
        let hostnames = r.into_inner().hostnames;
        self.job_command(Command::StartMaintenance { hostnames })
            .await
    }

    async fn complete_maintenance(
        &self,
        r: Request<op::Hosts>,
    ) -> Result<Response<op::JobResponse>, Status> {
        let hostnames = r.into_inner().hostnames;
        self.job_command(Command::CompleteMaintenance { hostnames })
            .await
    }

    async fn machines_down(
        &self,
        r: Request<op::Machines>,
    ) -> Result<Response<op::JobResponse>, Status> {
        let machines = r
            .into_inner()
            .machines
            .into_iter()
            .map(|m| orrery_events::state::MachineId {
                hostname: m.hostname,
                ip: m.ip,
            })
            .collect();
        self.job_command(Command::MarkMachinesDown { machines })
            .await
    }

    async fn read_log(
        &self,
        r: Request<op::ReadLogRequest>,
    ) -> Result<Response<op::ReadLogResponse>, Status> {
        /// Events per answer at most (a client pages with `from`).
        const MAX: usize = 10_000;
        let r = r.into_inner();
        let max = (r.max as usize).clamp(1, MAX);
        let mut from = r.from.max(1);
        let (digest_index, digest) = self.log.with_state(|m| {
            (
                m.cluster.applied_index,
                orrery_events::digest(&m.cluster).0.to_vec(),
            )
        });
        let mut out = op::ReadLogResponse {
            last_index: self.log.last_applied(),
            digest,
            digest_index,
            ..Default::default()
        };
        let events = match self.log.read(from, u64::MAX, max).await {
            Ok(events) => events,
            Err(orrery_storage::ReadError::Compacted { first_available }) => {
                let (index, state) = self.log.latest_snapshot().ok_or_else(|| {
                    Status::unavailable(format!(
                        "events before {first_available} were compacted and no snapshot is at hand"
                    ))
                })?;
                out.snapshot = state;
                out.snapshot_index = index;
                from = index + 1;
                self.log
                    .read(from, u64::MAX, max)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        out.events = events.into_iter().map(|e| e.payload).collect();
        Ok(Response::new(out))
    }

    async fn list_masters(
        &self,
        _: Request<op::ListMastersRequest>,
    ) -> Result<Response<op::MastersGroup>, Status> {
        Ok(Response::new(
            crate::masters::list(&self.master, &self.log).await?,
        ))
    }

    async fn join_master(
        &self,
        r: Request<op::JoinMasterRequest>,
    ) -> Result<Response<op::MastersGroup>, Status> {
        let r = r.into_inner();
        self.masters_change(MastersChange::AddLearner, r.node_id, r.addr)
            .await
    }

    async fn add_master(
        &self,
        r: Request<op::MasterIdRequest>,
    ) -> Result<Response<op::MastersGroup>, Status> {
        self.masters_change(
            MastersChange::Promote,
            r.into_inner().node_id,
            String::new(),
        )
        .await
    }

    async fn remove_master(
        &self,
        r: Request<op::MasterIdRequest>,
    ) -> Result<Response<op::MastersGroup>, Status> {
        self.masters_change(MastersChange::Remove, r.into_inner().node_id, String::new())
            .await
    }

    async fn mark_agents_gone(
        &self,
        r: Request<op::MarkAgentsGoneRequest>,
    ) -> Result<Response<op::MarkAgentsGoneResponse>, Status> {
        let r = r.into_inner();
        // A follower answers NotLeader (the client follows it), never "none held".
        self.master
            .send(Serving)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        let mut ids: Vec<String> = r.agent_ids;
        if r.held {
            let held = self
                .master
                .send(orrery_actors::master::HeldAgents)
                .await
                .map_err(mailbox)?;
            ids.extend(held.into_iter().map(|a| a.0));
        }
        let mut seen = std::collections::HashSet::new();
        ids.retain(|i| seen.insert(i.clone()));
        if ids.is_empty() {
            return Err(Status::invalid_argument(
                "name the agents to retire, or ask for the held ones (--held): no agent's removal is held now",
            ));
        }
        let mut out = op::MarkAgentsGoneResponse::default();
        for id in ids {
            let committed = self
                .master
                .send(Submit {
                    command: Command::MarkAgentGone {
                        agent_id: orrery_events::AgentId::new(&id),
                        reason: "retired by the operator (orrery agents mark-gone)".into(),
                    },
                    want_events: false,
                    origin: orrery_actors::telemetry::origin(),
                })
                .await
                .map_err(mailbox)?
                .map_err(|e| {
                    let s = status_of(e);
                    Status::new(s.code(), format!("agent {id}: {}", s.message()))
                })?;
            out.committed_index = committed.last_index;
            out.agent_ids.push(id);
        }
        Ok(Response::new(out))
    }

    async fn plan_maintenance(
        &self,
        r: Request<op::PlanMaintenanceRequest>,
    ) -> Result<Response<op::DryRunReport>, Status> {
        let r = r.into_inner();
        let change = orrery_events::whatif::Change::Drain(r.hostnames);
        self.dry_run(change, r.assumptions).await
    }

    async fn plan_job_update(
        &self,
        r: Request<op::PlanJobUpdateRequest>,
    ) -> Result<Response<op::DryRunReport>, Status> {
        let r = r.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: the job to plan is missing"))?;
        let change = orrery_events::whatif::Change::UpdateJob(Box::new(spec));
        self.dry_run(change, r.assumptions).await
    }

    async fn query_hosts(
        &self,
        r: Request<op::QueryHostsRequest>,
    ) -> Result<Response<op::HostList>, Status> {
        let states = r.into_inner().states;
        const KNOWN: [&str; 4] = [
            "HOST_STATE_UP",
            "HOST_STATE_DRAINING",
            "HOST_STATE_DRAINED",
            "HOST_STATE_DOWN",
        ];
        if let Some(bad) = states.iter().find(|s| !KNOWN.contains(&s.as_str())) {
            return Err(Status::invalid_argument(format!(
                "{bad:?} is not a host state ({})",
                KNOWN.join(", ")
            )));
        }
        self.master
            .send(Serving)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        let hosts = self.log.with_state(|m| {
            m.cluster
                .hosts
                .values()
                .filter(|h| states.is_empty() || states.iter().any(|s| s == h.state.as_str()))
                .map(|h| op::HostView {
                    hostname: h.machine.hostname.clone(),
                    ip: h.machine.ip.clone(),
                    state: h.state.as_str().to_owned(),
                    live_tasks: orrery_events::projections::maintenance::live_tasks_on_host(
                        &m.cluster,
                        &h.machine.hostname,
                    ) as u32,
                    inverse_offers: m
                        .cluster
                        .inverse_offers
                        .values()
                        .filter(|o| o.hostname == h.machine.hostname)
                        .map(|o| op::InverseOfferStatus {
                            framework_id: o.framework_id.0.clone(),
                            agent_id: o.agent_id.0.clone(),
                            status: o.answer.as_str().to_owned(),
                        })
                        .collect(),
                })
                .collect()
        });
        Ok(Response::new(op::HostList { hosts }))
    }

    async fn job_status(
        &self,
        r: Request<pb::JobKey>,
    ) -> Result<Response<op::JobStatusResponse>, Status> {
        let key = orrery_events::state::JobKey::from_proto(Some(&r.into_inner()));
        let status = self
            .master
            .send(JobStatus(key))
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(status))
    }
}

fn window_from(w: pb::MaintenanceWindow) -> orrery_events::state::Window {
    let u = w.unavailability.unwrap_or_default();
    orrery_events::state::Window {
        machines: w
            .machines
            .into_iter()
            .map(|m| orrery_events::state::MachineId {
                hostname: m.hostname,
                ip: m.ip,
            })
            .collect(),
        unavailability: orrery_events::state::Unavailability {
            start_ns: u.start_ns,
            duration_ns: u.duration_ns,
        },
    }
}

impl OperatorService {
    /// A dry run on the leader's committed state.
    async fn dry_run(
        &self,
        change: orrery_events::whatif::Change,
        assumptions: Option<op::DryRunAssumptions>,
    ) -> Result<Response<op::DryRunReport>, Status> {
        let assume = crate::dryrun::assumptions(assumptions.as_ref())?;
        self.master
            .send(Serving)
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(
            crate::dryrun::run(&self.log, change, assume).await?,
        ))
    }

    /// One change of the masters' group (see [`crate::masters::change`]).
    async fn masters_change(
        &self,
        change: MastersChange,
        node_id: u64,
        addr: String,
    ) -> Result<Response<op::MastersGroup>, Status> {
        crate::masters::change(&self.master, &self.log, change, node_id, addr)
            .await
            .map(Response::new)
    }

    async fn job_command(&self, command: Command) -> Result<Response<op::JobResponse>, Status> {
        let committed = self
            .master
            .send(Submit {
                command,
                want_events: false,
                origin: orrery_actors::telemetry::origin(),
            })
            .await
            .map_err(mailbox)?
            .map_err(status_of)?;
        Ok(Response::new(op::JobResponse {
            committed_index: committed.last_index,
        }))
    }
}

/// The three services, to add to the raft server's routes.
pub fn routes(
    routes: tonic::service::Routes,
    master: Addr<Master>,
    log: Log,
    ping: AgentPing,
    security: Option<std::sync::Arc<crate::auth::Security>>,
    admission: std::sync::Arc<crate::admission::Admission>,
) -> tonic::service::Routes {
    let routes = routes
        .add_service(
            sp::scheduler_server::SchedulerServer::new(SchedulerService {
                master: master.clone(),
                log: log.clone(),
            })
            .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            ap::agent_link_server::AgentLinkServer::new(AgentService {
                master: master.clone(),
                log: log.clone(),
                ping,
            })
            .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(op::discovery_server::DiscoveryServer::new(
            DiscoveryService { log: log.clone() },
        ))
        .add_service(op::operator_server::OperatorServer::new(OperatorService {
            master,
            log,
        }));
    tonic::service::Routes::from(
        routes
            .into_axum_router()
            // Inside the guard: an unauthenticated flood is refused by the
            // guard and takes no room from the callers it lets in.
            .layer(axum::middleware::from_fn_with_state(
                admission,
                crate::admission::grpc_admit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                security,
                crate::auth::grpc_guard,
            ))
            .layer(axum::middleware::from_fn(crate::metrics::api_latency)),
    )
}
