//! Commands: what actors ask the core to decide, in the imperative.
//!
//! Owns the `Command` enum and its argument types. A command is a request,
//! not a fact: `decide` turns it into events or a `Rejection`. Commands carry
//! raw client input (not yet validated); decide validates it.

use orrery_proto::events::{CommandInfo, TaskReason, TaskState};

use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::resources::Resources;
use crate::state::{Domain, JobKey, MachineId, MasterConfig, Window};

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// A replica won an election (the storage layer tells the shell).
    ElectLeader(ElectLeader),
    /// Replace the weighted DRF table: (role, weight).
    SetRoleWeights {
        weights: Vec<(String, f64)>,
    },

    RegisterAgent(AgentRegistration),
    ReregisterAgent {
        agent_id: AgentId,
        registration: AgentRegistration,
        /// The tasks the agent says it runs.
        tasks: Vec<ReportedTask>,
    },
    DisconnectAgent {
        agent_id: AgentId,
    },
    /// Decided by the leader's health checker (ping budget exhausted, or
    /// reregistration timeout after a failover).
    MarkAgentUnreachable {
        agent_id: AgentId,
        reason: String,
    },
    /// The operator retires an agent for good.
    MarkAgentGone {
        agent_id: AgentId,
        reason: String,
    },

    /// Record that a change of the masters' group was asked for (the
    /// gateway asks raft once this is committed).
    RequestMastersChange {
        change: orrery_proto::events::MastersChange,
        node_id: u64,
        /// The joining master's address (a learner); "" otherwise.
        addr: String,
    },
    /// Record the masters' group as raft committed it, settling the pending
    /// request: `outcome` is "" if it took effect, else why not.
    RecordMasters {
        /// (id, address, voter)
        members: Vec<(u64, String, bool)>,
        outcome: String,
    },

    Subscribe(FrameworkSubscription),
    DisconnectFramework {
        framework_id: FrameworkId,
    },
    /// The leader's timer believes the failover timeout passed; decide
    /// checks against `now`.
    ExpireFramework {
        framework_id: FrameworkId,
    },
    Teardown {
        framework_id: FrameworkId,
    },
    Suppress {
        framework_id: FrameworkId,
    },
    Revive {
        framework_id: FrameworkId,
    },

    /// Run one allocation cycle (weighted DRF).
    Allocate,
    /// Rescind offers past their timeout.
    ExpireOffers,
    Accept {
        framework_id: FrameworkId,
        offer_ids: Vec<OfferId>,
        launches: Vec<TaskSpec>,
        /// Filter for the unused part; `None` = the master's default.
        refuse_seconds: Option<f64>,
    },
    Decline {
        framework_id: FrameworkId,
        offer_ids: Vec<OfferId>,
        refuse_seconds: Option<f64>,
    },

    Kill {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    UpdateStatus(StatusUpdate),
    Acknowledge {
        framework_id: FrameworkId,
        task_id: TaskId,
        uuid: String,
    },

    /// Replace the whole maintenance schedule (Mesos' POST
    /// /maintenance/schedule).
    UpdateSchedule {
        windows: Vec<Window>,
    },
    /// Peloton's `host maintenance start`: drain these hosts.
    StartMaintenance {
        hostnames: Vec<String>,
    },
    /// Mark drained (or scheduled) machines DOWN (Mesos' /machine/down).
    MarkMachinesDown {
        machines: Vec<MachineId>,
    },
    /// A framework accepts (or declines) inverse offers.
    AnswerInverseOffers {
        framework_id: FrameworkId,
        offer_ids: Vec<OfferId>,
        accepted: bool,
    },
    /// The leader's drain timer: kill what may now be killed on DRAINING
    /// hosts (frameworks' tasks; jobs drain through the job scheduler).
    DrainHosts,
    /// Peloton's `host maintenance complete` / Mesos' /machine/up.
    CompleteMaintenance {
        hostnames: Vec<String>,
    },

    CreateJob(orrery_proto::events::JobSpec),
    UpdateJob(orrery_proto::events::JobSpec),
    KillJob(JobKey),
    /// The job scheduler saw every instance on the job's current version.
    FinishJobUpdate {
        key: JobKey,
        version: u64,
    },
    /// The job scheduler saw the new version fail during an update.
    RollbackJob {
        key: JobKey,
        version: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectLeader {
    pub term: u64,
    pub leader_id: u64,
    pub leader_addr: String,
    /// The leader's HTTP admin address ("" for none).
    pub http_addr: String,
    pub domain: Option<Domain>,
    pub config: MasterConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRegistration {
    pub hostname: String,
    pub ip: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub domain: Option<Domain>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedTask {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub state: TaskState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameworkSubscription {
    /// `None` for a first subscription; the id to fail over otherwise.
    pub framework_id: Option<FrameworkId>,
    pub name: String,
    pub role: String,
    pub region_aware: bool,
    pub partition_aware: bool,
    pub checkpoint: bool,
    pub failover_timeout_ms: u64,
    pub principal: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub task_id: TaskId,
    pub name: String,
    pub resources: Resources,
    pub command: CommandInfo,
    pub job: Option<JobKey>,
    pub instance: u32,
    /// The job version it is launched for (0 for framework tasks).
    pub job_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub agent_id: AgentId,
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub state: TaskState,
    pub uuid: String,
    pub reason: TaskReason,
    pub message: String,
    pub source: orrery_proto::events::StatusSource,
    pub exit_code: Option<i32>,
    pub healthy: Option<bool>,
}
