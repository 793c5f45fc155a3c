//! A simulated agent, with the real agent's rules (actors/src/agent):
//! it registers, then pings on its session; it runs tasks as executors that
//! outlive it (a crash keeps them, a wiped work dir kills them); status
//! updates wait in a checkpointed queue per task and are sent one at a time,
//! in order, retried until the master commits each one; after a crash it
//! reregisters with the tasks it still runs.

use std::collections::{BTreeMap, VecDeque};

use orrery_events::command::{AgentRegistration, Command, ReportedTask, StatusUpdate};
use orrery_events::pb::{envelope::Payload, StatusSource, TaskReason, TaskState};
use orrery_events::state::Domain;
use orrery_events::{AgentId, Resources, TaskKey};
use orrery_proto::agent as ap;
use rand::Rng;

use crate::config::{Config, Ms};
use crate::net::Node;
use crate::sim::{Call, Msg, Outcome, Sim, Timer};

pub const TICK_MS: Ms = 1_000;
/// An update not committed after this long is sent again.
const UPDATE_RETRY_MS: Ms = 1_000;
const REGISTER_RETRY_MS: Ms = 2_000;

/// A task's executor on this agent.
#[derive(Clone, Debug)]
pub struct Executor {
    pub key: TaskKey,
    pub state: TaskState,
    pub resources: Resources,
    /// The end this task will come to by itself, if any.
    pub end: Option<(u64, TaskState)>,
}

#[derive(Clone, Debug)]
enum Inflight {
    Register,
    Update(TaskKey, String),
    Ping,
}

#[derive(Debug)]
pub struct SimAgent {
    pub idx: usize,
    pub hostname: String,
    pub domain: Domain,
    pub resources: Resources,
    /// Whether the agent process runs.
    pub up: bool,
    /// The id the master gave (checkpointed; a wipe forgets it).
    pub agent_id: Option<AgentId>,
    pub session: u64,
    pub master: usize,
    registering_since: Option<Ms>,
    /// The executors (they outlive the agent process).
    pub executors: BTreeMap<TaskKey, Executor>,
    /// The checkpointed status update streams.
    pub updates: BTreeMap<TaskKey, VecDeque<StatusUpdate>>,
    sent_at: BTreeMap<TaskKey, Ms>,
    /// Calls in flight, with the master each went to.
    calls: BTreeMap<u64, (Inflight, usize)>,
    next_call: u64,
    next_uuid: u64,
    next_end: u64,
    ends: BTreeMap<u64, TaskKey>,
    /// Sabotage: lose one task without a word (and report it anyway).
    pub lost_one: bool,
    ghosts: std::collections::BTreeSet<TaskKey>,
    /// A lost rack: the machine is under repair and comes back (as a new
    /// agent) only once its old agent is out of the cluster, unreachable
    /// or retired by the operator.
    pub repair_of: Option<AgentId>,
    /// When it last heard from its master (a reply or a stream message):
    /// silence past [`PING_TIMEOUT_MS`] sends it to look for the leader
    /// elsewhere, as the real agent's ping timeout does.
    heard_at: Ms,
    /// Until then the agent had a fault of its own (down, or cut off from
    /// the masters in some direction, and the time to come back from it):
    /// losing its tasks is then the fault's doing, not a master's.
    pub excused_until: Ms,
}

/// The agent's ping timeout: the master's ping interval times its budget
/// (the real agent takes it from the registration's answer).
pub const PING_TIMEOUT_MS: Ms = crate::master::AGENT_SILENCE_MS;
/// A cut of an agent's link (either direction) shorter than this never
/// excuses a lost task: the master's budget (5 s) outlasts it with a ping
/// tick and a lost ping to spare.
pub const SHORT_CUT_MS: Ms = 2_000;
/// How long after its own fault ends an agent may still be marked
/// unreachable for it: its ping budget, a reregistration deadline, a margin.
pub const EXCUSE_MS: Ms =
    crate::master::AGENT_SILENCE_MS + crate::master::REREGISTER_TIMEOUT_MS + 10_000;

impl SimAgent {
    pub fn new(idx: usize, cfg: &Config) -> Self {
        let remote = cfg.remote_every != 0 && idx % cfg.remote_every == cfg.remote_every - 1;
        SimAgent {
            idx,
            hostname: format!("host-{idx}"),
            domain: Domain {
                region: if remote { "r2" } else { "r1" }.into(),
                zone: format!("z{}", idx % cfg.zones.max(1)),
            },
            resources: Resources::new(cfg.agent_cpus * 1_000, cfg.agent_mem_mb, 10_000)
                .with_ports(&[(31_000, 31_099)])
                .expect("valid ports"),
            up: true,
            agent_id: None,
            session: 0,
            master: 0,
            registering_since: None,
            executors: BTreeMap::new(),
            updates: BTreeMap::new(),
            sent_at: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            next_uuid: 0,
            next_end: 0,
            ends: BTreeMap::new(),
            lost_one: false,
            repair_of: None,
            ghosts: Default::default(),
            heard_at: 0,
            excused_until: 0,
        }
    }

    /// The agent has a fault of its own until `until`.
    pub fn excuse(&mut self, until: Ms) {
        self.excused_until = self.excused_until.max(until.saturating_add(EXCUSE_MS));
    }

    pub fn has_queued_updates(&self) -> bool {
        self.updates.values().any(|q| !q.is_empty())
    }

    fn registration(&self) -> AgentRegistration {
        AgentRegistration {
            hostname: self.hostname.clone(),
            ip: format!(
                "10.{}.{}.{}",
                self.idx / 65_536,
                (self.idx / 256) % 256,
                self.idx % 256
            ),
            resources: self.resources.clone(),
            attributes: vec![("rack".into(), format!("rack-{}", self.idx % 7))],
            domain: Some(self.domain.clone()),
        }
    }
}

impl Sim {
    fn agent_call(&mut self, a: usize, call: Call, kind: Inflight) {
        let ag = &mut self.agents[a];
        ag.next_call += 1;
        let id = ag.next_call;
        ag.calls.insert(id, (kind, ag.master));
        let to = Node::Master(ag.master);
        self.send(
            Node::Agent(a),
            to,
            Msg::Request {
                from: Node::Agent(a),
                id,
                call,
            },
        );
    }

    /// Records a status update in the task's checkpointed stream.
    fn queue_update(&mut self, a: usize, key: &TaskKey, state: TaskState, reason: TaskReason) {
        let ag = &mut self.agents[a];
        let Some(agent_id) = ag.agent_id.clone() else {
            return;
        };
        ag.next_uuid += 1;
        let uuid = format!("a{}-{}", a, ag.next_uuid);
        ag.updates
            .entry(key.clone())
            .or_default()
            .push_back(StatusUpdate {
                agent_id,
                framework_id: key.framework_id.clone(),
                task_id: key.task_id.clone(),
                state,
                uuid,
                reason,
                message: String::new(),
                source: StatusSource::SourceExecutor,
                exit_code: matches!(state, TaskState::TaskFinished | TaskState::TaskFailed)
                    .then_some(i32::from(state == TaskState::TaskFailed)),
                healthy: None,
            });
    }

    pub(crate) fn on_agent(&mut self, a: usize, msg: Msg) {
        match msg {
            Msg::Timer(Timer::TaskEnds { seq }) => return self.task_ends(a, seq),
            Msg::Timer(Timer::AgentRestart) => return self.agent_restart(a),
            _ => {}
        }
        if !self.agents[a].up {
            return;
        }
        match msg {
            Msg::Timer(Timer::AgentTick) => self.agent_tick(a),
            Msg::Reply { id, outcome } => self.agent_reply(a, id, outcome),
            Msg::ToAgent { session, msg } if session == self.agents[a].session && session != 0 => {
                self.agents[a].heard_at = self.now;
                self.agent_message(a, *msg);
            }
            _ => {}
        }
    }

    fn agent_tick(&mut self, a: usize) {
        self.schedule(TICK_MS, Node::Agent(a), Msg::Timer(Timer::AgentTick));
        let now = self.now;
        if now >= self.agents[a].heard_at + PING_TIMEOUT_MS
            && self.sabotage != Some(crate::sabotage::Sabotage::AgentIgnoresPingTimeout)
        {
            // Its master is silent (frozen, crashed, cut off): the real
            // agent asks every master at once who leads, each with a short
            // deadline, and the one that serves and can be reached answers
            // first; when none does, it asks again (here: the next one,
            // whose answer may name the leader).
            let n = self.masters.len();
            let serving = self.discover(a);
            let ag = &mut self.agents[a];
            ag.master = serving.unwrap_or((ag.master + 1) % n);
            ag.session = 0;
            ag.registering_since = None;
            ag.heard_at = now;
            self.stats.agent_ping_timeouts += 1;
        }
        if self.agents[a].session == 0 {
            let ag = &self.agents[a];
            if ag
                .registering_since
                .is_some_and(|t| now < t + REGISTER_RETRY_MS)
            {
                return;
            }
            // Every registration attempt asks who leads first (the real
            // agent's `with_leader`: all masters at once, short deadlines),
            // so a retry does not wait on a master that went silent.
            if let Some(m) = self.discover(a) {
                self.agents[a].master = m;
            }
            let ag = &self.agents[a];
            let reg = ag.registration();
            let cmd = match &ag.agent_id {
                None => Command::RegisterAgent(reg),
                Some(id) => Command::ReregisterAgent {
                    agent_id: id.clone(),
                    registration: reg,
                    tasks: ag
                        .executors
                        .values()
                        .map(|e| ReportedTask {
                            framework_id: e.key.framework_id.clone(),
                            task_id: e.key.task_id.clone(),
                            state: e.state,
                        })
                        .chain(ag.ghosts.iter().map(|k| ReportedTask {
                            framework_id: k.framework_id.clone(),
                            task_id: k.task_id.clone(),
                            state: TaskState::TaskRunning,
                        }))
                        .collect(),
                },
            };
            self.agents[a].registering_since = Some(now);
            self.agent_call(a, Call::core(cmd), Inflight::Register);
            return;
        }
        let ag = &self.agents[a];
        let ping = Call::Ping {
            agent_id: ag.agent_id.clone().expect("a session has an id"),
            session: ag.session,
        };
        self.agent_call(a, ping, Inflight::Ping);
        self.send_updates(a);
    }

    /// The master that serves and that agent `a` can reach both ways now,
    /// if any: what asking every master at once finds.
    fn discover(&self, a: usize) -> Option<usize> {
        let now = self.now;
        (0..self.masters.len()).find(|&m| {
            let r = &self.masters[m];
            r.up && r.frozen_until <= now
                && r.is_serving()
                && !self.net.blocked(Node::Agent(a), Node::Master(m), now)
                && !self.net.blocked(Node::Master(m), Node::Agent(a), now)
        })
    }

    /// Sends the head of each task's stream, unless one is in flight.
    fn send_updates(&mut self, a: usize) {
        let now = self.now;
        let ag = &self.agents[a];
        let due: Vec<StatusUpdate> = ag
            .updates
            .iter()
            .filter(|(k, _)| {
                ag.sent_at
                    .get(*k)
                    .is_none_or(|&t| now >= t + UPDATE_RETRY_MS)
            })
            .filter_map(|(_, q)| q.front().cloned())
            .collect();
        for u in due {
            let key = TaskKey::new(u.framework_id.0.clone(), u.task_id.0.clone());
            self.agents[a].sent_at.insert(key.clone(), now);
            let uuid = u.uuid.clone();
            self.agent_call(
                a,
                Call::core(Command::UpdateStatus(u)),
                Inflight::Update(key, uuid),
            );
        }
    }

    fn agent_reply(&mut self, a: usize, id: u64, outcome: Outcome) {
        let Some((kind, to)) = self.agents[a].calls.remove(&id) else {
            return;
        };
        let ag = &mut self.agents[a];
        if to != ag.master && matches!(outcome, Outcome::NotLeader(_) | Outcome::NoSession) {
            // A late answer of a master the agent has left (the real
            // agent's call timed out and its connection is gone): it says
            // nothing of the session with the master it has now.
            return;
        }
        if to == ag.master {
            ag.heard_at = self.now;
        }
        if let Outcome::NotLeader(hint) = outcome {
            ag.master = hint.unwrap_or((ag.master + 1) % self.masters.len());
            ag.session = 0;
            ag.registering_since = None;
            return;
        }
        match (kind, outcome) {
            (Inflight::Register, Outcome::Done { events, session }) => {
                if ag.session != 0 {
                    return;
                }
                ag.registering_since = None;
                for e in &events {
                    if let Payload::AgentRegistered(r) = e {
                        ag.agent_id = Some(AgentId::from(r.agent_id.as_str()));
                    }
                }
                ag.session = session;
                ag.sent_at.clear();
                self.send_updates(a);
            }
            (Inflight::Register, Outcome::Rejected(code, _)) => {
                ag.registering_since = None;
                if matches!(code, "agent_gone" | "unknown_agent") {
                    // Retired (its host went DOWN, or replaced): the tasks
                    // went with the old id. Start over as a new agent.
                    self.agent_wipe(a);
                }
            }
            (Inflight::Ping, Outcome::NoSession) => {
                ag.session = 0;
                ag.registering_since = None;
            }
            (Inflight::Update(key, uuid), Outcome::Done { .. } | Outcome::Rejected(..)) => {
                // Committed, or refused for good (the task ended, or the
                // update is older than what the master has): next one.
                if let Some(q) = ag.updates.get_mut(&key) {
                    if q.front().is_some_and(|u| u.uuid == uuid) {
                        q.pop_front();
                        ag.sent_at.remove(&key);
                        if q.is_empty() {
                            ag.updates.remove(&key);
                            if ag
                                .executors
                                .get(&key)
                                .is_some_and(|e| orrery_events::state::task::is_terminal(e.state))
                            {
                                ag.executors.remove(&key);
                            }
                        }
                        self.send_updates(a);
                    }
                }
            }
            _ => {}
        }
    }

    fn agent_message(&mut self, a: usize, msg: ap::master_message::Message) {
        match msg {
            ap::master_message::Message::Launch(l) => {
                let key = TaskKey::new(l.framework_id.clone(), l.task_id.clone());
                if self.agents[a].executors.contains_key(&key) {
                    return;
                }
                let resources = Resources::from_logged(l.resources.as_ref());
                let shell = l.command.as_ref().map(|c| c.shell.as_str()).unwrap_or("");
                // "sim:finish:MS" ends by itself; a service fails now and
                // then while faults run.
                let end = if let Some(ms) = shell.strip_prefix("sim:finish:") {
                    let ms: Ms = ms.parse().unwrap_or(10_000);
                    let state = if self.rng.random_bool(0.2) {
                        TaskState::TaskFailed
                    } else {
                        TaskState::TaskFinished
                    };
                    Some((ms, state))
                } else if self.in_fault_phase() && self.rng.random_bool(0.1) {
                    Some((self.rng.random_range(5_000..120_000), TaskState::TaskFailed))
                } else {
                    None
                };
                self.stats.launched += 1;
                let ag = &mut self.agents[a];
                let end = end.map(|(after, state)| {
                    ag.next_end += 1;
                    ag.ends.insert(ag.next_end, key.clone());
                    (ag.next_end, after, state)
                });
                ag.executors.insert(
                    key.clone(),
                    Executor {
                        key: key.clone(),
                        state: TaskState::TaskRunning,
                        resources,
                        end: end.map(|(seq, _, state)| (seq, state)),
                    },
                );
                if let Some((seq, after, _)) = end {
                    self.schedule(after, Node::Agent(a), Msg::Timer(Timer::TaskEnds { seq }));
                }
                self.queue_update(a, &key, TaskState::TaskRunning, TaskReason::Unspecified);
                if self.sabotage == Some(crate::sabotage::Sabotage::AgentLosesTask)
                    && !self.agents[a].lost_one
                    && self.in_fault_phase()
                {
                    // The broken rule: the task dies, no one is told, and
                    // the agent's recovery still reports it running.
                    let ag = &mut self.agents[a];
                    ag.lost_one = true;
                    ag.executors.remove(&key);
                    ag.updates.remove(&key);
                    ag.ghosts.insert(key);
                    return;
                }
                self.send_updates(a);
            }
            ap::master_message::Message::Kill(k) => {
                let key = TaskKey::new(k.framework_id.clone(), k.task_id.clone());
                let running = self.agents[a]
                    .executors
                    .get(&key)
                    .is_some_and(|e| !orrery_events::state::task::is_terminal(e.state));
                if running {
                    if let Some(e) = self.agents[a].executors.get_mut(&key) {
                        e.state = TaskState::TaskKilled;
                    }
                    self.queue_update(
                        a,
                        &key,
                        TaskState::TaskKilled,
                        TaskReason::ReasonKilledByFramework,
                    );
                    self.send_updates(a);
                }
            }
            _ => {}
        }
    }

    /// A task comes to its end by itself (the executor runs whether or not
    /// the agent does, and checkpoints the update).
    fn task_ends(&mut self, a: usize, seq: u64) {
        let Some(key) = self.agents[a].ends.remove(&seq) else {
            return;
        };
        let Some(e) = self.agents[a].executors.get_mut(&key) else {
            return;
        };
        if orrery_events::state::task::is_terminal(e.state) || e.end.map(|x| x.0) != Some(seq) {
            return;
        }
        let state = e.end.map_or(TaskState::TaskFinished, |x| x.1);
        e.state = state;
        self.queue_update(a, &key, state, TaskReason::ReasonCommandExited);
        if self.agents[a].up && self.agents[a].session != 0 {
            self.send_updates(a);
        }
    }

    pub(crate) fn agent_crash(&mut self, a: usize, wipe: bool) {
        if !self.agents[a].up {
            return;
        }
        self.stats.agent_crashes += 1;
        let ag = &mut self.agents[a];
        ag.up = false;
        ag.session = 0;
        ag.registering_since = None;
        ag.calls.clear();
        ag.sent_at.clear();
        if wipe {
            self.stats.agent_wipes += 1;
            self.agent_wipe(a);
        }
        let (lo, hi) = self.cfg.faults.agent_down_ms;
        let down = self.rng.random_range(lo..=hi.max(lo));
        self.schedule(down, Node::Agent(a), Msg::Timer(Timer::AgentRestart));
    }

    /// The work dir is gone: executors killed, id and updates forgotten.
    fn agent_wipe(&mut self, a: usize) {
        let ag = &mut self.agents[a];
        ag.executors.clear();
        ag.ghosts.clear();
        ag.updates.clear();
        ag.sent_at.clear();
        ag.ends.clear();
        ag.agent_id = None;
        ag.session = 0;
    }

    fn agent_restart(&mut self, a: usize) {
        if self.agents[a].up {
            return;
        }
        if let Some(old) = &self.agents[a].repair_of {
            let away = self
                .truth
                .cluster
                .agents
                .get(old.as_str())
                .is_some_and(|o| {
                    matches!(
                        o.state,
                        orrery_events::state::AgentState::Registered
                            | orrery_events::state::AgentState::Disconnected
                    )
                });
            if away {
                self.schedule(5_000, Node::Agent(a), Msg::Timer(Timer::AgentRestart));
                return;
            }
            self.agents[a].repair_of = None;
        }
        let ag = &mut self.agents[a];
        ag.up = true;
        ag.heard_at = self.now;
        // Down until now: its ping budget and a reregistration to come
        // back in (while it was down, its own state says so).
        ag.excuse(self.now);
        self.schedule(1, Node::Agent(a), Msg::Timer(Timer::AgentTick));
    }
}
