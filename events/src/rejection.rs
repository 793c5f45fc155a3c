//! Refusals: the named reasons `decide` gives when a command must not happen.
//!
//! A `Rejection` is the caller's fault (a bad flag, a stale offer, an unknown
//! id) and changes nothing. The gateway maps each variant to a gRPC status or
//! an HTTP 4xx via [`Rejection::class`]; metrics count them by
//! [`Rejection::name`]. Bugs are never rejections: they are assertions.

use thiserror::Error;

use crate::ids::{AgentId, FrameworkId, OfferId, TaskKey};

/// Who should react to a rejection, and how the wire reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionClass {
    /// The request itself is malformed (gRPC InvalidArgument, HTTP 400).
    Invalid,
    /// It names something that does not exist (gRPC NotFound, HTTP 404).
    NotFound,
    /// It is well formed but the state does not allow it now (gRPC
    /// FailedPrecondition, HTTP 409).
    Precondition,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejection {
    // --- malformed input -------------------------------------------------
    #[error("invalid {kind} {id:?}: {problem}")]
    InvalidId {
        kind: &'static str,
        id: String,
        problem: &'static str,
    },
    #[error("invalid resources: {problem}")]
    InvalidResources { problem: String },
    #[error("invalid {field}: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
    #[error("too many {what}: {count} given, at most {limit} allowed")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("invalid status update for task {task}: {problem}")]
    InvalidStatus { task: TaskKey, problem: String },
    #[error("invalid task {task}: {problem}")]
    InvalidTask { task: TaskKey, problem: String },
    #[error("invalid constraint #{position} {constraint:?}: {problem}")]
    InvalidConstraint {
        position: usize,
        constraint: String,
        problem: String,
    },

    // --- unknown things --------------------------------------------------
    #[error("unknown agent {agent_id}")]
    UnknownAgent { agent_id: AgentId },
    #[error("unknown framework {framework_id}")]
    UnknownFramework { framework_id: FrameworkId },
    #[error("unknown offer {offer_id} (already used, declined, rescinded or never made)")]
    UnknownOffer { offer_id: OfferId },
    #[error("unknown task {task}")]
    UnknownTask { task: TaskKey },
    #[error("unknown host {hostname}")]
    UnknownHost { hostname: String },
    #[error("unknown job {key}")]
    UnknownJob { key: String },

    // --- state does not allow it -----------------------------------------
    #[error("no leader has been elected yet")]
    NoLeader,
    #[error("term {term} is not newer than the current term {current}")]
    StaleTerm { term: u64, current: u64 },
    #[error("agent {agent_id} is {state}, not registered")]
    AgentNotActive {
        agent_id: AgentId,
        state: &'static str,
    },
    #[error("agent {agent_id} is gone and cannot reregister; register as a new agent")]
    AgentGone { agent_id: AgentId },
    #[error("agent {agent_id} reregistered with a different {what}: was {was:?}, now {now:?}")]
    AgentIdentityMismatch {
        agent_id: AgentId,
        what: &'static str,
        was: String,
        now: String,
    },
    #[error("agent declares fault domain region {region:?} but the master has no fault domain")]
    AgentDomainWithoutMasterDomain { region: String },
    #[error("framework {framework_id} has been removed")]
    FrameworkRemoved { framework_id: FrameworkId },
    #[error("framework {framework_id} is not connected")]
    FrameworkNotConnected { framework_id: FrameworkId },
    #[error("framework {framework_id} is connected; its failover timeout has not started")]
    FrameworkConnected { framework_id: FrameworkId },
    #[error("framework {framework_id} may still fail over for {remaining_ms} ms")]
    FailoverNotExpired {
        framework_id: FrameworkId,
        remaining_ms: u64,
    },
    #[error("framework {framework_id} is bound to principal {bound:?}, not {given:?}")]
    PrincipalMismatch {
        framework_id: FrameworkId,
        bound: String,
        given: String,
    },
    #[error("offer {offer_id} belongs to framework {owner}, not {framework_id}")]
    OfferNotOwned {
        offer_id: OfferId,
        owner: FrameworkId,
        framework_id: FrameworkId,
    },
    #[error("offer {offer_id} is listed twice")]
    DuplicateOffer { offer_id: OfferId },
    #[error("offers span agents {first} and {second}; one accept uses one agent")]
    OffersSpanAgents { first: AgentId, second: AgentId },
    #[error("task id {task} is already in use")]
    DuplicateTaskId { task: TaskKey },
    #[error("tasks need {requested} but the offers hold {offered}")]
    ResourcesExceedOffer { requested: String, offered: String },
    #[error("task {task} is on agent {actual}, not {claimed}")]
    TaskOnOtherAgent {
        task: TaskKey,
        actual: AgentId,
        claimed: AgentId,
    },
    #[error("task {task} is already {state}; a terminal state is final")]
    TaskTerminal { task: TaskKey, state: &'static str },
    #[error("task {task} cannot go from {from} to {to}")]
    StatusRegression {
        task: TaskKey,
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "acknowledgement {uuid:?} for task {task} does not match its latest update {expected:?}"
    )]
    UnexpectedAcknowledgement {
        task: TaskKey,
        uuid: String,
        expected: String,
    },
    #[error("host {hostname} is {state}; no new work is placed there")]
    HostInMaintenance {
        hostname: String,
        state: &'static str,
    },
    #[error("host {hostname} is {state}; expected {expected}")]
    InvalidHostTransition {
        hostname: String,
        state: &'static str,
        expected: &'static str,
    },
    #[error("machine {hostname}/{ip} appears more than once in the schedule")]
    MachineListedTwice { hostname: String, ip: String },
    #[error("machine {hostname} is DOWN and must stay in the schedule until it is brought up")]
    DownMachineUnscheduled { hostname: String },
    #[error(
        "agent {agent_id} is in region {region:?}, remote to the master's {master_region:?}, \
         and framework {framework_id} is not REGION_AWARE"
    )]
    RemoteRegionNotAllowed {
        framework_id: FrameworkId,
        agent_id: AgentId,
        region: String,
        master_region: String,
    },
    #[error("job {key} already exists")]
    JobExists { key: String },
    #[error(
        "a change of the masters' group is still in progress ({pending}); one change at a \
         time: wait for it to finish (`orrery masters list`)"
    )]
    MastersChangeInProgress { pending: String },
    #[error(
        "master id {node_id} was removed from the group and is never used again (its old \
         data could vote twice in one term); give the new master a new id"
    )]
    MasterIdRetired { node_id: u64 },
}

impl Rejection {
    /// How the gateway reports it.
    pub fn class(&self) -> RejectionClass {
        use Rejection::*;
        match self {
            InvalidId { .. }
            | InvalidResources { .. }
            | InvalidField { .. }
            | TooMany { .. }
            | InvalidStatus { .. }
            | InvalidTask { .. }
            | InvalidConstraint { .. }
            | DuplicateOffer { .. }
            | OffersSpanAgents { .. }
            | ResourcesExceedOffer { .. }
            | MachineListedTwice { .. } => RejectionClass::Invalid,
            UnknownAgent { .. }
            | UnknownFramework { .. }
            | UnknownOffer { .. }
            | UnknownTask { .. }
            | UnknownHost { .. }
            | UnknownJob { .. } => RejectionClass::NotFound,
            NoLeader
            | StaleTerm { .. }
            | AgentNotActive { .. }
            | AgentGone { .. }
            | AgentIdentityMismatch { .. }
            | AgentDomainWithoutMasterDomain { .. }
            | FrameworkRemoved { .. }
            | FrameworkNotConnected { .. }
            | FrameworkConnected { .. }
            | FailoverNotExpired { .. }
            | PrincipalMismatch { .. }
            | OfferNotOwned { .. }
            | DuplicateTaskId { .. }
            | TaskOnOtherAgent { .. }
            | TaskTerminal { .. }
            | StatusRegression { .. }
            | UnexpectedAcknowledgement { .. }
            | HostInMaintenance { .. }
            | InvalidHostTransition { .. }
            | DownMachineUnscheduled { .. }
            | RemoteRegionNotAllowed { .. }
            | JobExists { .. }
            | MastersChangeInProgress { .. }
            | MasterIdRetired { .. } => RejectionClass::Precondition,
        }
    }

    /// A stable snake_case name, for metrics labels and JSON.
    pub fn name(&self) -> &'static str {
        use Rejection::*;
        match self {
            InvalidId { .. } => "invalid_id",
            InvalidResources { .. } => "invalid_resources",
            InvalidField { .. } => "invalid_field",
            TooMany { .. } => "too_many",
            InvalidStatus { .. } => "invalid_status",
            InvalidTask { .. } => "invalid_task",
            InvalidConstraint { .. } => "invalid_constraint",
            UnknownAgent { .. } => "unknown_agent",
            UnknownFramework { .. } => "unknown_framework",
            UnknownOffer { .. } => "unknown_offer",
            UnknownTask { .. } => "unknown_task",
            UnknownHost { .. } => "unknown_host",
            UnknownJob { .. } => "unknown_job",
            NoLeader => "no_leader",
            StaleTerm { .. } => "stale_term",
            AgentNotActive { .. } => "agent_not_active",
            AgentGone { .. } => "agent_gone",
            AgentIdentityMismatch { .. } => "agent_identity_mismatch",
            AgentDomainWithoutMasterDomain { .. } => "agent_domain_without_master_domain",
            FrameworkRemoved { .. } => "framework_removed",
            FrameworkNotConnected { .. } => "framework_not_connected",
            FrameworkConnected { .. } => "framework_connected",
            FailoverNotExpired { .. } => "failover_not_expired",
            PrincipalMismatch { .. } => "principal_mismatch",
            OfferNotOwned { .. } => "offer_not_owned",
            DuplicateOffer { .. } => "duplicate_offer",
            OffersSpanAgents { .. } => "offers_span_agents",
            DuplicateTaskId { .. } => "duplicate_task_id",
            ResourcesExceedOffer { .. } => "resources_exceed_offer",
            TaskOnOtherAgent { .. } => "task_on_other_agent",
            TaskTerminal { .. } => "task_terminal",
            StatusRegression { .. } => "status_regression",
            UnexpectedAcknowledgement { .. } => "unexpected_acknowledgement",
            HostInMaintenance { .. } => "host_in_maintenance",
            InvalidHostTransition { .. } => "invalid_host_transition",
            MachineListedTwice { .. } => "machine_listed_twice",
            DownMachineUnscheduled { .. } => "down_machine_unscheduled",
            RemoteRegionNotAllowed { .. } => "remote_region_not_allowed",
            JobExists { .. } => "job_exists",
            MastersChangeInProgress { .. } => "masters_change_in_progress",
            MasterIdRetired { .. } => "master_id_retired",
        }
    }
}
