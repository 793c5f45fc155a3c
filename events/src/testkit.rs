//! Given/when/then helpers for the core's tests and for simtests.
//!
//! A `Scenario` holds a cluster and the log that built it; `given` commits a
//! command that must succeed, `when` tries one and returns its outcome, and
//! the helpers name the common steps (elect, register, subscribe, offer,
//! launch) so tests read as the rule they check.

use orrery_proto::events::{self as pb, CommandInfo, StatusSource, TaskReason, TaskState};

use crate::command::{
    AgentRegistration, Command, ElectLeader, FrameworkSubscription, StatusUpdate, TaskSpec,
};
use crate::decide::{decide, Event};
use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::rejection::Rejection;
use crate::resources::Resources;
use crate::state::{Cluster, Domain, MasterConfig};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub cluster: Cluster,
    /// Every envelope applied, in order (the log).
    pub log: Vec<pb::Envelope>,
    pub now_ms: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

pub fn default_config() -> MasterConfig {
    MasterConfig {
        offer_timeout_ms: 0,
        default_refuse_ms: 5_000,
        agent_reregister_timeout_ms: 600_000,
        drain_grace_ms: 60_000,
        offers_per_framework_max: 0,
    }
}

pub fn shell(cmd: &str) -> CommandInfo {
    CommandInfo {
        shell: cmd.to_owned(),
        ..Default::default()
    }
}

impl Scenario {
    /// An empty cluster at t = 1,000,000 ms.
    pub fn new() -> Self {
        Scenario {
            cluster: Cluster::new(),
            log: Vec::new(),
            now_ms: 1_000_000,
        }
    }

    /// A cluster with a leader (term 1) in region `r1`.
    pub fn with_leader() -> Self {
        let mut s = Self::new();
        s.elect(1, Some(("r1", "z1")));
        s
    }

    pub fn elect(&mut self, term: u64, domain: Option<(&str, &str)>) {
        self.elect_with(term, domain, default_config());
    }

    /// As [`Scenario::elect`], with the leader deciding by `config`.
    pub fn elect_with(&mut self, term: u64, domain: Option<(&str, &str)>, config: MasterConfig) {
        self.given(Command::ElectLeader(ElectLeader {
            term,
            leader_id: term,
            leader_addr: format!("127.0.0.1:{}", 7000 + term),
            http_addr: String::new(),
            domain: domain.map(|(r, z)| Domain {
                region: r.into(),
                zone: z.into(),
            }),
            config,
        }));
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// Applies decided events as one committed batch.
    pub fn commit(&mut self, events: Vec<Event>) {
        let term = self.cluster.term().max(1);
        for env in crate::envelopes(&self.cluster, term, self.now_ms, events) {
            crate::apply(&mut self.cluster, &env);
            self.log.push(env);
        }
    }

    /// Decides and, on success, commits.
    pub fn when(&mut self, cmd: Command) -> Result<Vec<Event>, Rejection> {
        let events = decide(&self.cluster, cmd, self.now_ms)?;
        self.commit(events.clone());
        Ok(events)
    }

    /// Like `when`, but the command must succeed.
    pub fn given(&mut self, cmd: Command) -> Vec<Event> {
        let shown = format!("{cmd:?}");
        match self.when(cmd) {
            Ok(e) => e,
            Err(r) => panic!("given {shown}: rejected: {r}"),
        }
    }

    pub fn registration(
        hostname: &str,
        resources: &str,
        domain: Option<(&str, &str)>,
    ) -> AgentRegistration {
        AgentRegistration {
            hostname: hostname.into(),
            ip: "10.0.0.1".into(),
            resources: Resources::parse(resources).expect("test resources parse"),
            attributes: vec![],
            domain: domain.map(|(r, z)| Domain {
                region: r.into(),
                zone: z.into(),
            }),
        }
    }

    /// Registers an agent and returns its id.
    pub fn agent(
        &mut self,
        hostname: &str,
        resources: &str,
        domain: Option<(&str, &str)>,
    ) -> AgentId {
        let events = self.given(Command::RegisterAgent(Self::registration(
            hostname, resources, domain,
        )));
        events
            .iter()
            .find_map(|e| match e {
                Event::AgentRegistered(r) => Some(AgentId::from(r.agent_id.as_str())),
                _ => None,
            })
            .expect("AgentRegistered")
    }

    pub fn subscription(name: &str, role: &str) -> FrameworkSubscription {
        FrameworkSubscription {
            framework_id: None,
            name: name.into(),
            role: role.into(),
            region_aware: false,
            partition_aware: false,
            checkpoint: true,
            failover_timeout_ms: 60_000,
            principal: format!("{name}-principal"),
        }
    }

    /// Subscribes a framework and returns its id.
    pub fn framework(&mut self, sub: FrameworkSubscription) -> FrameworkId {
        let events = self.given(Command::Subscribe(sub));
        match &events[0] {
            Event::FrameworkSubscribed(s) => FrameworkId::from(s.framework_id.as_str()),
            other => panic!("expected FrameworkSubscribed, got {other:?}"),
        }
    }

    /// Runs an allocation cycle; returns the offers made.
    pub fn allocate(&mut self) -> Vec<pb::Offer> {
        self.given(Command::Allocate)
            .into_iter()
            .flat_map(|e| match e {
                Event::OffersMade(m) => m.offers,
                _ => vec![],
            })
            .collect()
    }

    /// The outstanding offer to `fw` for `agent`, if any.
    pub fn offer_for(&self, fw: &FrameworkId, agent: &AgentId) -> Option<OfferId> {
        self.cluster
            .offers
            .values()
            .find(|o| o.framework_id == *fw && o.agent_id == *agent)
            .map(|o| o.id.clone())
    }

    pub fn task_spec(task_id: &str, resources: &str) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::from(task_id),
            name: String::new(),
            resources: Resources::parse(resources).expect("test resources parse"),
            command: shell("sleep 1000"),
            job: None,
            instance: 0,
            job_version: 0,
        }
    }

    pub fn accept(
        &mut self,
        fw: &FrameworkId,
        offer: &OfferId,
        tasks: Vec<TaskSpec>,
    ) -> Result<Vec<Event>, Rejection> {
        self.when(Command::Accept {
            framework_id: fw.clone(),
            offer_ids: vec![offer.clone()],
            launches: tasks,
            refuse_seconds: None,
        })
    }

    pub fn status(
        &self,
        agent: &AgentId,
        fw: &FrameworkId,
        task: &str,
        state: TaskState,
        uuid: &str,
    ) -> Command {
        Command::UpdateStatus(StatusUpdate {
            agent_id: agent.clone(),
            framework_id: fw.clone(),
            task_id: TaskId::from(task),
            state,
            uuid: uuid.into(),
            reason: TaskReason::Unspecified,
            message: String::new(),
            source: StatusSource::SourceExecutor,
            exit_code: None,
            healthy: None,
        })
    }

    /// The job scheduler's part of the master, by hand, for `rounds` rounds
    /// 2 s apart: offers, `jobs::plan`, its accepts and declines, and every
    /// STAGING task RUNNING (as its agent would report it).
    pub fn run_jobs(&mut self, fw: &FrameworkId, rounds: u32) {
        for _ in 0..rounds {
            self.advance(2_000);
            self.allocate();
            let plan = crate::jobs::plan(&self.cluster, fw, self.now_ms);
            for (offer, launches) in plan.accepts {
                self.given(Command::Accept {
                    framework_id: fw.clone(),
                    offer_ids: vec![offer],
                    launches,
                    refuse_seconds: Some(1.0),
                });
            }
            if !plan.declines.is_empty() {
                self.given(Command::Decline {
                    framework_id: fw.clone(),
                    offer_ids: plan.declines,
                    refuse_seconds: Some(1.0),
                });
            }
            let starting: Vec<_> = self
                .cluster
                .tasks
                .values()
                .filter(|t| t.state == TaskState::TaskStaging)
                .map(|t| {
                    (
                        t.agent_id.clone(),
                        t.key.framework_id.clone(),
                        t.key.task_id.0.clone(),
                    )
                })
                .collect();
            for (a, f, t) in starting {
                let uuid = format!("{t}-running");
                self.given(self.status(&a, &f, &t, TaskState::TaskRunning, &uuid));
            }
        }
    }

    /// A cluster with one agent (`h1`, 4 cpus, 8 GB) and one framework that
    /// holds an offer for it: the starting point of most task tests.
    pub fn one_offer() -> (Scenario, AgentId, FrameworkId, OfferId) {
        let mut s = Scenario::with_leader();
        let agent = s.agent("h1", "cpus:4;mem:8192;disk:1000;ports:[31000-31010]", None);
        let fw = s.framework(Self::subscription("web", "prod"));
        s.allocate();
        let offer = s.offer_for(&fw, &agent).expect("an offer");
        (s, agent, fw, offer)
    }
}
