//! The active master, as the real one behaves (actors/src/master.rs):
//! decide against the speculative state, append, send effects and replies
//! only once the log commits; open agent and framework sessions at the
//! commit of their registration; run the leader's timers (allocation,
//! drains, offer and framework expiry, reregistration deadline, ping
//! budget, DRAINED → DOWN) and the built-in job scheduler (`jobs::plan`).
//!
//! Effects come from the real `orrery_actors::effects::effects_of`, so what
//! a committed event sends to whom is the production rule, not a copy.

use std::collections::{BTreeMap, BTreeSet};

use orrery_actors::effects::{effects_of, Effect};
use orrery_events::command::{Command, ElectLeader};
use orrery_events::pb::envelope::Payload;
use orrery_events::state::{AgentState, Domain, HostState, MasterConfig};
use orrery_events::{decide, envelopes, jobs, AgentId, Cluster, FrameworkId, TaskKey};
use orrery_proto::agent as ap;
use orrery_proto::scheduler as sp;

use crate::config::Ms;
use crate::net::Node;
use crate::raft::Role;
use crate::sabotage::Sabotage;
use crate::sim::{Call, Msg, Outcome, Sim, Timer};

pub const LEADER_TICK_MS: Ms = 1_000;
/// Silence after which the leader marks an agent unreachable (the ping
/// budget: 5 pings, 1 s apart).
pub const AGENT_SILENCE_MS: Ms = 5_000;
pub const REREGISTER_TIMEOUT_MS: Ms = 20_000;
pub const DRAIN_GRACE_MS: Ms = 10_000;

/// Sent once the entry at its index commits.
#[derive(Clone, Debug)]
pub enum Pending {
    Effect(Box<Effect>),
    Reply {
        to: Node,
        id: u64,
        outcome: Outcome,
    },
    OpenAgent {
        id: u64,
        agent: usize,
        agent_id: Option<AgentId>,
        reported: Option<BTreeSet<TaskKey>>,
        events: Vec<Payload>,
    },
    OpenFramework {
        id: u64,
        framework: usize,
        events: Vec<Payload>,
    },
    CloseSession {
        agent_id: AgentId,
        session: u64,
    },
}

/// The leader's volatile state.
#[derive(Debug)]
pub struct Shell {
    /// The committed state plus every appended entry (decide's view).
    pub spec: Cluster,
    pub next: Vec<u64>,
    pub matched: Vec<u64>,
    pub elected: bool,
    pub waiting: BTreeMap<u64, Vec<Pending>>,
    pub agent_sessions: BTreeMap<AgentId, (usize, u64)>,
    /// (framework node, session, last stream sequence number).
    pub fw_sessions: BTreeMap<FrameworkId, (usize, u64, u64)>,
    pub last_heard: BTreeMap<AgentId, Ms>,
    pub jobs_fw: Option<FrameworkId>,
    pub next_session: u64,
    pub elected_at: Ms,
    /// Offers reached the job scheduler and it has not planned since.
    jobs_offered: bool,
    skipped_update: bool,
    duplicated_launch: bool,
    /// The removal limit and rate, as the real master keeps them
    /// (`orrery_actors::removals`), on simulated time.
    pub removals: orrery_actors::removals::Gate,
}

impl Shell {
    pub fn new(sim: &Sim, m: usize) -> Self {
        let r = &sim.masters[m];
        let mut spec = r.state.clone();
        for entry in &r.log[r.commit as usize..] {
            // The log held by a replica always applies (the oracles check
            // that separately); a failure here would show as a digest
            // mismatch later.
            let _ = orrery_events::try_apply(&mut spec, entry);
        }
        let n = sim.masters.len();
        Shell {
            spec,
            next: vec![r.last_index() + 1; n],
            matched: vec![0; n],
            elected: false,
            waiting: BTreeMap::new(),
            agent_sessions: BTreeMap::new(),
            fw_sessions: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            jobs_fw: None,
            next_session: (m as u64 + 1) << 40 | r.term << 20,
            elected_at: sim.now,
            jobs_offered: false,
            skipped_update: false,
            duplicated_launch: false,
            removals: orrery_actors::removals::Gate::new(
                sim.cfg.removal_limit_pct,
                sim.cfg
                    .removal_rate
                    .map(|(count, ms)| orrery_actors::removals::RateLimit {
                        count,
                        per: std::time::Duration::from_millis(ms),
                    }),
            ),
        }
    }
}

impl Shell {
    /// A session number no other session of this leader had.
    fn new_session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }
}

/// Where a submitted command came from.
#[derive(Clone, Debug)]
pub enum Origin {
    Internal,
    Client { to: Node, id: u64 },
}

impl Sim {
    fn shell(&mut self, m: usize) -> Option<&mut Shell> {
        self.masters[m].shell()
    }

    pub(crate) fn on_master(&mut self, m: usize, msg: Msg) {
        if !self.masters[m].up {
            if let Msg::Timer(Timer::MasterRestart) = msg {
                self.master_restart(m);
            }
            return;
        }
        match msg {
            Msg::Timer(Timer::LeaderTick) => self.leader_tick(m),
            Msg::Timer(Timer::JobOffers) => self.job_offers(m),
            Msg::Timer(Timer::MasterRestart) => {}
            Msg::Request { from, id, call } => self.on_request(m, from, id, call),
            other => self.on_raft(m, other),
        }
    }

    pub(crate) fn on_elected(&mut self, m: usize) {
        let term = self.masters[m].term;
        let cmd = Command::ElectLeader(ElectLeader {
            term,
            leader_id: m as u64 + 1,
            leader_addr: format!("master-{m}:7000"),
            http_addr: String::new(),
            domain: Some(Domain {
                region: "r1".into(),
                zone: "z0".into(),
            }),
            config: MasterConfig {
                offer_timeout_ms: 0,
                default_refuse_ms: 5_000,
                agent_reregister_timeout_ms: REREGISTER_TIMEOUT_MS,
                drain_grace_ms: DRAIN_GRACE_MS,
                offers_per_framework_max: 0,
            },
        });
        self.submit(m, cmd, Origin::Internal);
    }

    /// Decides `cmd` on the leader's speculative state and appends what it
    /// decided; the reply waits for the commit.
    pub(crate) fn submit(&mut self, m: usize, cmd: Command, origin: Origin) {
        self.submit_keyed(m, cmd, origin, None);
    }

    /// [`Sim::submit`], the events stamped with the caller's scoped
    /// idempotency key (as the real master stamps them).
    pub(crate) fn submit_keyed(
        &mut self,
        m: usize,
        cmd: Command,
        origin: Origin,
        key: Option<String>,
    ) {
        let now = self.clock(m);
        let term = self.masters[m].term;
        let sabotage = self.sabotage;
        if matches!(cmd, Command::RecordMasters { .. }) && !self.masters[m].config_settled() {
            // One change of the group at a time: the last one must be
            // committed before the next is appended (Raft's single-server
            // changes; the real master holds one change slot).
            if let Origin::Client { to, id } = origin {
                let r = orrery_events::Rejection::MastersChangeInProgress {
                    pending: "the last change of the masters' group is not committed".into(),
                };
                self.send(
                    Node::Master(m),
                    to,
                    Msg::Reply {
                        id,
                        outcome: Outcome::Rejected(r.name(), r.to_string()),
                    },
                );
            }
            return;
        }
        let Some(shell) = self.masters[m].shell() else {
            return;
        };
        let is_elect = matches!(cmd, Command::ElectLeader(_));
        if !shell.elected && !is_elect {
            if let Origin::Client { to, id } = origin {
                self.send(
                    Node::Master(m),
                    to,
                    Msg::Reply {
                        id,
                        outcome: Outcome::NotLeader(Some(m)),
                    },
                );
            }
            return;
        }
        let open = match (&cmd, &origin) {
            (
                Command::RegisterAgent(_),
                Origin::Client {
                    to: Node::Agent(a),
                    id,
                },
            ) => Some((*id, *a, None, None)),
            (
                Command::ReregisterAgent {
                    agent_id, tasks, ..
                },
                Origin::Client {
                    to: Node::Agent(a),
                    id,
                },
            ) => Some((
                *id,
                *a,
                Some(agent_id.clone()),
                Some(
                    tasks
                        .iter()
                        .map(|t| TaskKey::new(t.framework_id.0.clone(), t.task_id.0.clone()))
                        .collect::<BTreeSet<_>>(),
                ),
            )),
            _ => None,
        };
        if let Some((_, _, Some(agent_id), _)) = &open {
            // A reregistration starts the agent's ping budget afresh.
            shell.last_heard.insert(agent_id.clone(), self.now);
        }
        let is_allocate = matches!(cmd, Command::Allocate);
        self.stats.decided += 1;
        let started = std::time::Instant::now();
        let decided = if is_allocate
            && matches!(
                sabotage,
                Some(Sabotage::AllocatorIgnoresMaintenance | Sabotage::AllocatorIgnoresRegions)
            ) {
            // The broken rule: the allocator sees every host UP, or every
            // framework REGION_AWARE.
            let mut view = shell.spec.clone();
            for h in view.hosts.values_mut() {
                if sabotage == Some(Sabotage::AllocatorIgnoresMaintenance) {
                    h.state = HostState::Up;
                }
            }
            for f in view.frameworks.values_mut() {
                if sabotage == Some(Sabotage::AllocatorIgnoresRegions) {
                    f.region_aware = true;
                }
            }
            decide(&view, cmd, now)
        } else {
            decide(&shell.spec, cmd, now)
        };
        self.stats.core_ns += started.elapsed().as_nanos() as u64;
        let mut events = match decided {
            Ok(events) => events,
            Err(rejection) => {
                self.stats.rejected += 1;
                if let Origin::Client { to, id } = origin {
                    self.send(
                        Node::Master(m),
                        to,
                        Msg::Reply {
                            id,
                            outcome: Outcome::Rejected(rejection.name(), rejection.to_string()),
                        },
                    );
                }
                return;
            }
        };
        if sabotage == Some(Sabotage::InflateLaunch) {
            // The broken rule: a launch takes more than its offer held.
            for e in &mut events {
                if let Payload::TaskLaunched(l) = e {
                    if let Some(r) = &mut l.resources {
                        r.cpus_milli = r.cpus_milli.saturating_mul(64);
                    }
                }
            }
        }
        let Some(shell) = self.masters[m].shell() else {
            return;
        };
        let started = std::time::Instant::now();
        let mut pending = Vec::new();
        let mut entries = Vec::new();
        for mut env in envelopes(&shell.spec, term, now, events.clone()) {
            if let Some(k) = &key {
                env.idempotency_key.clone_from(k);
            }
            let payload = env.payload.as_ref().expect("decided events have payloads");
            pending.extend(
                effects_of(&shell.spec, payload)
                    .into_iter()
                    .map(|e| Pending::Effect(Box::new(e))),
            );
            if let Err(e) = orrery_events::try_apply(&mut shell.spec, &env) {
                let detail = format!("decide produced an event apply refuses: {e}");
                self.violation("core", detail);
                return;
            }
            entries.push(std::rc::Rc::new(env));
        }
        let at = shell.spec.applied_index;
        let applied = started.elapsed().as_nanos() as u64;
        if let Some(Payload::FrameworkSubscribed(s)) = events.first() {
            if s.name == jobs::FRAMEWORK_NAME {
                shell.jobs_fw = Some(FrameworkId::from(s.framework_id.as_str()));
            }
        }
        match (open, &origin) {
            (Some((id, agent, agent_id, reported)), _) => pending.push(Pending::OpenAgent {
                id,
                agent,
                agent_id,
                reported,
                events,
            }),
            (
                None,
                Origin::Client {
                    to: Node::Framework(f),
                    id,
                },
            ) if matches!(events.first(), Some(Payload::FrameworkSubscribed(_))) => {
                pending.push(Pending::OpenFramework {
                    id: *id,
                    framework: *f,
                    events,
                })
            }
            (None, Origin::Client { to, id }) => pending.push(Pending::Reply {
                to: *to,
                id: *id,
                outcome: Outcome::Done { events, session: 0 },
            }),
            (None, Origin::Internal) => {}
        }
        shell.waiting.entry(at).or_default().extend(pending);
        self.stats.core_ns += applied;
        for e in entries {
            self.masters[m].push_entry(e);
        }
        let commit = self.masters[m].commit;
        if self.masters.len() == 1 {
            self.leader_commit(m, at);
        } else if at <= commit {
            self.release(m, commit);
        }
    }

    /// The leader learned that `commit` is committed.
    pub(crate) fn leader_commit(&mut self, m: usize, commit: u64) {
        let old = self.masters[m].commit;
        for i in old + 1..=commit {
            let entry = self.masters[m].log[i as usize - 1].clone();
            self.committed(&entry);
        }
        self.apply_to(m, commit);
        self.release(m, commit);
    }

    fn release(&mut self, m: usize, commit: u64) {
        let Some(shell) = self.shell(m) else {
            return;
        };
        let later = shell.waiting.split_off(&(commit + 1));
        let due = std::mem::replace(&mut shell.waiting, later);
        for (_, items) in due {
            for p in items {
                self.carry_out(m, p);
            }
        }
        // It serves once its own election is committed.
        let r = &mut self.masters[m];
        let elected = r.state.term() == r.term;
        if let Some(shell) = r.shell() {
            shell.elected |= elected;
        }
    }

    fn carry_out(&mut self, m: usize, p: Pending) {
        let now = self.now;
        match p {
            Pending::Reply { to, id, outcome } => {
                self.send(Node::Master(m), to, Msg::Reply { id, outcome })
            }
            Pending::Effect(e) => self.effect(m, *e),
            Pending::CloseSession { agent_id, session } => {
                if let Some(s) = self.shell(m) {
                    if s.agent_sessions.get(&agent_id).map(|x| x.1) == Some(session) {
                        s.agent_sessions.remove(&agent_id);
                    }
                }
            }
            Pending::OpenAgent {
                id,
                agent,
                agent_id,
                reported,
                events,
            } => {
                let agent_id = agent_id.or_else(|| {
                    events.iter().find_map(|e| match e {
                        Payload::AgentRegistered(r) => Some(AgentId::from(r.agent_id.as_str())),
                        _ => None,
                    })
                });
                let Some(agent_id) = agent_id else {
                    return;
                };
                let Some(shell) = self.shell(m) else {
                    return;
                };
                let session = shell.new_session();
                shell
                    .agent_sessions
                    .insert(agent_id.clone(), (agent, session));
                shell.last_heard.insert(agent_id.clone(), now);
                // The reply opens the session's stream: it comes first.
                self.send_stream(
                    Node::Master(m),
                    Node::Agent(agent),
                    Msg::Reply {
                        id,
                        outcome: Outcome::Done { events, session },
                    },
                );
                if let Some(reported) = reported {
                    self.reconcile_agent(m, &agent_id, &reported);
                }
            }
            Pending::OpenFramework {
                id,
                framework,
                events,
            } => {
                let Some(Payload::FrameworkSubscribed(s)) = events.first() else {
                    return;
                };
                let fw = FrameworkId::from(s.framework_id.as_str());
                let Some(shell) = self.shell(m) else {
                    return;
                };
                let session = shell.new_session();
                shell
                    .fw_sessions
                    .insert(fw.clone(), (framework, session, 0));
                let inverse: Vec<sp::InverseOffer> = shell
                    .spec
                    .inverse_offers
                    .values()
                    .filter(|o| o.framework_id == fw)
                    .map(|o| sp::InverseOffer {
                        offer_id: o.id.0.clone(),
                        framework_id: fw.0.clone(),
                        agent_id: o.agent_id.0.clone(),
                        hostname: String::new(),
                        unavailability: None,
                    })
                    .collect();
                self.send_stream(
                    Node::Master(m),
                    Node::Framework(framework),
                    Msg::Reply {
                        id,
                        outcome: Outcome::Done { events, session },
                    },
                );
                if !inverse.is_empty() {
                    self.send_to_framework(
                        m,
                        &fw,
                        sp::event::Event::InverseOffers(sp::InverseOffers {
                            inverse_offers: inverse,
                        }),
                    );
                }
            }
        }
    }

    fn effect(&mut self, m: usize, e: Effect) {
        match e {
            Effect::ToFramework(fw, event) => {
                let jobs = self.shell(m).and_then(|s| s.jobs_fw.clone());
                if jobs.as_ref() != Some(&fw) {
                    self.send_to_framework(m, &fw, event);
                } else if matches!(event, sp::event::Event::Offers(_)) {
                    // As the real master: the job scheduler plans when
                    // offers reach it (once per batch of commits).
                    let first = self
                        .shell(m)
                        .is_some_and(|s| !std::mem::replace(&mut s.jobs_offered, true));
                    if first {
                        self.schedule(0, Node::Master(m), Msg::Timer(Timer::JobOffers));
                    }
                }
            }
            Effect::ToAgent(agent_id, msg) => {
                let msg = *msg;
                if self.sabotage == Some(Sabotage::DuplicateLaunch) {
                    if let ap::master_message::Message::Launch(_) = &msg {
                        self.duplicate_launch(m, &agent_id, &msg);
                    }
                }
                self.send_to_agent(m, &agent_id, msg);
            }
            Effect::CloseFramework(fw, _) => {
                if let Some(s) = self.shell(m) {
                    s.fw_sessions.remove(&fw);
                }
            }
            Effect::CloseAgent(agent_id) => {
                if let Some(s) = self.shell(m) {
                    s.agent_sessions.remove(&agent_id);
                }
            }
            Effect::JobsChanged => {
                let Some(shell) = self.shell(m) else {
                    return;
                };
                if let Some(fw) = shell.jobs_fw.clone() {
                    if shell.spec.frameworks.get(&fw).is_some_and(|f| f.suppressed) {
                        self.submit(m, Command::Revive { framework_id: fw }, Origin::Internal);
                    }
                }
            }
        }
    }

    /// The broken rule of `Sabotage::DuplicateLaunch`: one launch also goes
    /// to a second agent.
    fn duplicate_launch(
        &mut self,
        m: usize,
        agent_id: &AgentId,
        msg: &ap::master_message::Message,
    ) {
        let Some(shell) = self.shell(m) else {
            return;
        };
        if shell.duplicated_launch {
            return;
        }
        let Some(other) = shell
            .agent_sessions
            .keys()
            .find(|a| *a != agent_id)
            .cloned()
        else {
            return;
        };
        shell.duplicated_launch = true;
        self.send_to_agent(m, &other, msg.clone());
    }

    pub(crate) fn send_to_framework(
        &mut self,
        m: usize,
        fw: &FrameworkId,
        event: sp::event::Event,
    ) {
        let sabotage = self.sabotage;
        let Some(shell) = self.shell(m) else {
            return;
        };
        let Some((node, session, seq)) = shell.fw_sessions.get_mut(fw) else {
            return;
        };
        *seq += 1;
        if sabotage == Some(Sabotage::SkipFrameworkUpdate)
            && !shell.skipped_update
            && matches!(event, sp::event::Event::Update(_))
        {
            // The broken rule: one update is never sent.
            shell.skipped_update = true;
            return;
        }
        let (node, session, seq) = (*node, *session, *seq);
        let ok = self.send_stream(
            Node::Master(m),
            Node::Framework(node),
            Msg::ToFramework {
                session,
                seq,
                event,
            },
        );
        if !ok {
            if let Some(shell) = self.shell(m) {
                shell.fw_sessions.remove(fw);
                if shell.spec.frameworks.get(fw).is_some_and(|f| f.connected) {
                    let framework_id = fw.clone();
                    self.submit(
                        m,
                        Command::DisconnectFramework { framework_id },
                        Origin::Internal,
                    );
                }
            }
        }
    }

    pub(crate) fn send_to_agent(
        &mut self,
        m: usize,
        agent_id: &AgentId,
        msg: ap::master_message::Message,
    ) {
        let Some(shell) = self.shell(m) else {
            return;
        };
        let Some(&(node, session)) = shell.agent_sessions.get(agent_id) else {
            return;
        };
        let ok = self.send_stream(
            Node::Master(m),
            Node::Agent(node),
            Msg::ToAgent {
                session,
                msg: Box::new(msg),
            },
        );
        if !ok {
            let Some(shell) = self.shell(m) else {
                return;
            };
            shell.agent_sessions.remove(agent_id);
            if shell
                .spec
                .agents
                .get(agent_id)
                .is_some_and(|a| a.state == AgentState::Registered)
            {
                let agent_id = agent_id.clone();
                self.submit(m, Command::DisconnectAgent { agent_id }, Origin::Internal);
            }
        }
    }

    /// After a reregistration: the real master's `reconcile_agent`.
    fn reconcile_agent(&mut self, m: usize, agent_id: &AgentId, reported: &BTreeSet<TaskKey>) {
        let Some(shell) = self.shell(m) else {
            return;
        };
        let messages = orrery_actors::effects::reconcile_agent(&shell.spec, agent_id, reported);
        for msg in messages {
            self.send_to_agent(m, agent_id, msg);
        }
    }

    fn on_request(&mut self, m: usize, from: Node, id: u64, call: Call) {
        let r = &self.masters[m];
        let serving = matches!(&r.role, Role::Leader(s) if s.elected);
        if !serving {
            let hint = r.leader_hint().filter(|&h| h != m || r.is_leader());
            self.send(
                Node::Master(m),
                from,
                Msg::Reply {
                    id,
                    outcome: Outcome::NotLeader(hint),
                },
            );
            return;
        }
        let now = self.now;
        let outcome = match call {
            Call::Core(cmd) => {
                self.submit(m, *cmd, Origin::Client { to: from, id });
                return;
            }
            Call::Keyed { key, cmd } => {
                // As the real master (flush_batch): a key it remembers is
                // answered from the log, never decided again.
                let scoped = format!("|{key}");
                let commit = self.masters[m].commit;
                let ignore = self.sabotage == Some(Sabotage::IgnoreIdempotencyKeys);
                let shell = self.shell(m).expect("serving");
                match shell.spec.idempotency.get(&scoped).copied() {
                    Some(index) if !ignore && index <= commit => {
                        self.stats.idempotent_replays += 1;
                        Outcome::Done {
                            events: vec![],
                            session: 0,
                        }
                    }
                    Some(_) if !ignore => Outcome::Rejected(
                        "unavailable",
                        format!("the first call with key {key} is still being committed"),
                    ),
                    _ => {
                        self.submit_keyed(m, *cmd, Origin::Client { to: from, id }, Some(scoped));
                        return;
                    }
                }
            }
            Call::Ping { agent_id, session } => {
                let shell = self.shell(m).expect("serving");
                if shell.agent_sessions.get(&agent_id).map(|s| s.1) == Some(session) {
                    shell.last_heard.insert(agent_id, now);
                    Outcome::Done {
                        events: vec![],
                        session,
                    }
                } else {
                    Outcome::NoSession
                }
            }
            Call::Heartbeat {
                framework_id,
                session,
            } => {
                let shell = self.shell(m).expect("serving");
                if shell.fw_sessions.get(&framework_id).map(|s| s.1) == Some(session) {
                    Outcome::Done {
                        events: vec![],
                        session,
                    }
                } else {
                    Outcome::NoSession
                }
            }
            Call::Reconcile { framework_id } => {
                let c = &self.masters[m].state;
                Outcome::Statuses(
                    c.tasks
                        .of_framework(&framework_id)
                        .map(|t| (t.key.task_id.clone(), t.state))
                        .collect(),
                )
            }
        };
        self.send(Node::Master(m), from, Msg::Reply { id, outcome });
    }

    /// The leader's timers, once a second (the allocation interval).
    fn leader_tick(&mut self, m: usize) {
        if !self.masters[m].is_leader() {
            return;
        }
        self.schedule(
            LEADER_TICK_MS,
            Node::Master(m),
            Msg::Timer(Timer::LeaderTick),
        );
        let now = self.clock(m);
        let sim_now = self.now;
        let term = self.masters[m].term;
        let sabotage = self.sabotage;
        let Some(shell) = self.masters[m].shell() else {
            return;
        };
        if !shell.elected {
            return;
        }
        let c = &shell.spec;
        let mut cmds = vec![Command::Allocate];
        if c.hosts.values().any(|h| h.state == HostState::Draining) {
            cmds.push(Command::DrainHosts);
        }
        if c.offers
            .values()
            .any(|o| o.expires_at_ms != 0 && o.expires_at_ms <= now)
        {
            cmds.push(Command::ExpireOffers);
        }
        for f in c.frameworks.values() {
            if !f.connected
                && !f.removed
                && f.disconnected_at_ms.saturating_add(f.failover_timeout_ms) <= now
            {
                cmds.push(Command::ExpireFramework {
                    framework_id: f.id.clone(),
                });
            }
        }
        // Agents that did not come back after the leader change, and
        // agents silent past their ping budget.
        let past_deadline = sim_now >= shell.elected_at + REREGISTER_TIMEOUT_MS;
        let known = orrery_events::projections::recovery::known_agents(c);
        // (Elected: the state is in this term.)
        let late = orrery_events::projections::recovery::awaiting_reregistration(c).len();
        // The removal limit (as the real master): more than the limit
        // late after the leader change, and none of them is removed.
        let held = past_deadline
            && sabotage != Some(Sabotage::IgnoreRemovalLimit)
            && matches!(
                shell
                    .removals
                    .recovery(late, known, "--recovery-agent-removal-limit")
                    .0,
                orrery_actors::removals::Verdict::Hold(_)
            );
        let mut turn = || {
            shell
                .removals
                .take_at(std::time::Duration::from_millis(sim_now))
        };
        for a in c.agents.values() {
            if !a.state.is_known() {
                continue;
            }
            if a.reregistered_term < term {
                if past_deadline && !held && turn() {
                    cmds.push(Command::MarkAgentUnreachable {
                        agent_id: a.id.clone(),
                        reason: format!(
                            "it did not reregister within {REREGISTER_TIMEOUT_MS} ms of the leader change"
                        ),
                    });
                }
                continue;
            }
            // No session yet: its registration is on its way to commit.
            let Some(&heard) = shell.last_heard.get(&a.id) else {
                continue;
            };
            if sim_now >= heard + AGENT_SILENCE_MS && turn() {
                cmds.push(Command::MarkAgentUnreachable {
                    agent_id: a.id.clone(),
                    reason: "no answer to 5 pings, 1000 ms apart".into(),
                });
            }
        }
        for h in c.hosts.values() {
            if h.state == HostState::Drained {
                cmds.push(Command::MarkMachinesDown {
                    machines: vec![h.machine.clone()],
                });
            }
        }
        let wants_jobs = !c.jobs.is_empty()
            && shell
                .jobs_fw
                .as_ref()
                .is_none_or(|fw| c.frameworks.get(fw).is_none_or(|f| f.removed));
        if wants_jobs {
            cmds.push(Command::Subscribe(jobs::subscription(c)));
        }
        if held {
            self.stats.removals_held += 1;
        }
        for cmd in cmds {
            let unreachable = match &cmd {
                Command::MarkAgentUnreachable { agent_id, .. } => self.shell(m).and_then(|s| {
                    s.agent_sessions
                        .get(agent_id)
                        .map(|x| (agent_id.clone(), x.1))
                }),
                _ => None,
            };
            self.submit(m, cmd, Origin::Internal);
            // As the real master: once committed, that session ends (the
            // agent must reregister), unless a new one replaced it.
            if let Some((agent_id, session)) = unreachable {
                if let Some(s) = self.shell(m) {
                    let at = s.spec.applied_index;
                    s.waiting
                        .entry(at)
                        .or_default()
                        .push(Pending::CloseSession { agent_id, session });
                }
            }
        }
    }

    /// Offers reached the job scheduler: it plans.
    fn job_offers(&mut self, m: usize) {
        let Some(shell) = self.shell(m) else {
            return;
        };
        if !std::mem::take(&mut shell.jobs_offered) {
            return;
        }
        let stopped = self.sabotage == Some(Sabotage::JobSchedulerStops) && !self.in_fault_phase();
        if !stopped {
            self.schedule_jobs(m);
        }
    }

    /// The built-in job scheduler answers its offers, as the real one.
    fn schedule_jobs(&mut self, m: usize) {
        let now = self.clock(m);
        let sabotage = self.sabotage;
        let Some(shell) = self.shell(m) else {
            return;
        };
        let Some(fw) = shell.jobs_fw.clone() else {
            return;
        };
        let Some(f) = shell.spec.frameworks.get(&fw) else {
            return;
        };
        // Suppressed with no offer in hand: nothing to place (a revive
        // follows any change that needs the scheduler).
        let has_offers = shell.spec.offers.values().any(|o| o.framework_id == fw);
        if !f.connected || (f.suppressed && !has_offers) {
            return;
        }
        let plan = if sabotage == Some(Sabotage::DrainIgnoresSla) {
            // The broken rule: drains may take every instance down.
            let mut view = shell.spec.clone();
            for j in view.jobs.values_mut() {
                j.spec.max_unavailable = j.spec.instances;
            }
            jobs::plan(&view, &fw, now)
        } else {
            jobs::plan(&shell.spec, &fw, now)
        };
        let idle = plan.accepts.is_empty()
            && plan.pending.is_empty()
            && !plan.updating
            && plan.kills.is_empty();
        let mut cmds = Vec::new();
        for task_id in plan.kills {
            cmds.push(Command::Kill {
                framework_id: fw.clone(),
                task_id,
            });
        }
        for (key, version) in plan.finished {
            cmds.push(Command::FinishJobUpdate { key, version });
        }
        for (key, version) in plan.rollbacks {
            cmds.push(Command::RollbackJob { key, version });
        }
        for (offer_id, launches) in plan.accepts {
            cmds.push(Command::Accept {
                framework_id: fw.clone(),
                offer_ids: vec![offer_id],
                launches,
                refuse_seconds: Some(1.0),
            });
        }
        if !plan.declines.is_empty() {
            cmds.push(Command::Decline {
                framework_id: fw.clone(),
                offer_ids: plan.declines,
                refuse_seconds: Some(1.0),
            });
        }
        if idle {
            cmds.push(Command::Suppress {
                framework_id: fw.clone(),
            });
        }
        for cmd in cmds {
            self.submit(m, cmd, Origin::Internal);
        }
    }
}
