//! The simulation: one seeded RNG, one clock, one queue of messages and
//! timers, and the nodes they are delivered to.
//!
//! A step takes the earliest item off the queue (ties broken by the order
//! they were queued), advances the clock to it and hands it to its node.
//! Nothing else moves time and nothing else draws randomness, so a seed
//! replays a run exactly. After every step the oracles look (the state
//! oracles every `check_every` steps); the first step that breaks one ends
//! the run with a report that names the seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;

use orrery_events::command::Command;
use orrery_events::pb;
use orrery_events::{AgentId, Cluster, FrameworkId, TaskId};
use orrery_proto::agent as ap;
use orrery_proto::scheduler as sp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::agent::SimAgent;
use crate::config::{Config, Ms};
use crate::framework::SimFramework;
use crate::net::{Fate, Net, Node};
use crate::oracles::{self, Oracle};
use crate::raft::Replica;
use crate::sabotage::Sabotage;

/// A log entry, shared between the replicas that hold it.
pub type Entry = Rc<pb::Envelope>;

/// What a client asks the master.
#[derive(Clone, Debug)]
pub enum Call {
    /// A command for the core.
    Core(Box<Command>),
    /// An agent's liveness ping on its session.
    Ping { agent_id: AgentId, session: u64 },
    /// A framework's heartbeat on its session.
    Heartbeat {
        framework_id: FrameworkId,
        session: u64,
    },
    /// Mesos' implicit reconciliation: the latest state of every task.
    Reconcile { framework_id: FrameworkId },
    /// A command with the caller's idempotency key: a retry (or a
    /// duplicate the network made) takes effect once.
    Keyed { key: String, cmd: Box<Command> },
}

impl Call {
    pub fn core(cmd: Command) -> Self {
        Call::Core(Box::new(cmd))
    }
}

/// The master's answer to a call.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Committed; the events it produced and, for a (re)registration or a
    /// subscription, the session it opened.
    Done {
        events: Vec<pb::envelope::Payload>,
        session: u64,
    },
    /// Refused: the rejection's name (`agent_gone`, …) and message.
    Rejected(&'static str, String),
    /// Not the leader (or not yet serving); maybe who is.
    NotLeader(Option<usize>),
    /// The session is not (or no longer) open on this leader.
    NoSession,
    /// Reconciliation: (task, state) from the committed state.
    Statuses(Vec<(TaskId, pb::TaskState)>),
}

#[derive(Clone, Debug)]
pub enum Msg {
    Append {
        from: usize,
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    AppendReply {
        from: usize,
        term: u64,
        ok: bool,
        index: u64,
    },
    Vote {
        from: usize,
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    VoteReply {
        from: usize,
        term: u64,
        granted: bool,
    },
    Request {
        from: Node,
        id: u64,
        call: Call,
    },
    Reply {
        id: u64,
        outcome: Outcome,
    },
    ToAgent {
        session: u64,
        /// Boxed: a launch is far larger than the other messages.
        msg: Box<ap::master_message::Message>,
    },
    ToFramework {
        session: u64,
        seq: u64,
        event: sp::event::Event,
    },
    Timer(Timer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Election {
        epoch: u64,
    },
    Replicate,
    LeaderTick,
    /// Offers reached the leader's job scheduler.
    JobOffers,
    AgentTick,
    AgentRestart,
    TaskEnds {
        seq: u64,
    },
    FrameworkTick,
    MasterRestart,
    Faults,
    Operator,
}

/// One run's counters (the scale run reports them).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub decided: u64,
    pub rejected: u64,
    pub committed: u64,
    pub elections: u64,
    pub agent_crashes: u64,
    pub agent_wipes: u64,
    pub master_crashes: u64,
    pub partitions: u64,
    /// Of the partitions: rack blips (a zone cut off as the leader crashes).
    pub rack_blips: u64,
    pub clock_jumps: u64,
    pub drains: u64,
    pub bad_inputs: u64,
    pub stream_breaks: u64,
    pub launched: u64,
    /// Keyed calls sent again after no answer came.
    pub retries: u64,
    /// Keyed calls answered from their key, with no second decision.
    pub idempotent_replays: u64,
    /// Leader ticks at which agent removals were held by the removal limit.
    pub removals_held: u64,
    /// Agents the operator retired while removals were held.
    pub marked_gone: u64,
    /// Changes of the masters' group committed.
    pub membership_changes: u64,
    /// Elections won by a master that was not among the bootstrap voters.
    pub joined_leaders: u64,
    /// Masters frozen (SIGSTOP) for a while, links open.
    pub master_freezes: u64,
    /// Times an agent's master went silent past its ping timeout and the
    /// agent looked for the leader elsewhere.
    pub agent_ping_timeouts: u64,
    /// Wall time the leader spent in the core: decide, and apply (with
    /// effects) of what it decided. Measured only; it never steers a run.
    pub core_ns: u64,
}

/// An oracle's finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub oracle: &'static str,
    pub detail: String,
}

/// The cluster as the log's committed prefix makes it: every entry any
/// leader ever reported committed, applied in order. The oracles judge
/// against it; a replica that disagrees with it is wrong.
#[derive(Debug, Default)]
pub struct Truth {
    pub log: Vec<Entry>,
    pub cluster: Cluster,
    /// Digests of `cluster` at indexes divisible by `digest_every`.
    pub digests: BTreeMap<u64, orrery_events::StateDigest>,
}

pub struct Sim {
    pub seed: u64,
    pub cfg: Config,
    pub rng: ChaCha8Rng,
    pub now: Ms,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    items: BTreeMap<u64, (Node, Msg)>,
    next_item: u64,
    pub net: Net,
    pub masters: Vec<Replica>,
    pub agents: Vec<SimAgent>,
    pub frameworks: Vec<SimFramework>,
    pub operator: crate::operator::Operator,
    pub truth: Truth,
    pub stats: Stats,
    pub sabotage: Option<Sabotage>,
    pub violations: Vec<Violation>,
    /// Faults run until then; the liveness phase follows.
    pub faults_until: Ms,
    /// Print committed events and deliveries whose text contains this.
    pub trace: Option<String>,
    /// Print a progress line to stderr every this many simulated ms (the
    /// scale run); it never changes what the run does.
    pub progress_ms: Option<Ms>,
    oracles: Vec<Box<dyn Oracle>>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub stats: Stats,
    pub sim_ms: Ms,
    /// Empty when every oracle held and the cluster converged.
    pub violations: Vec<Violation>,
    /// The final committed index, and the digest of the state there.
    pub last_index: u64,
    pub digest: String,
    pub tasks: usize,
    pub agents: usize,
    /// Each master at the end: up, role, term, commit, last index.
    pub masters: Vec<String>,
    /// Run with [`Config::valves`] (the replay command says so).
    pub valves: bool,
    /// Run with [`Config::membership`].
    pub membership: bool,
    /// Run with [`Config::liveness`].
    pub liveness: bool,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that replays this run.
    pub fn reproduce(&self) -> String {
        format!(
            "cargo run -p orrery-simtests -- --seed {}{}{}{}",
            self.seed,
            if self.valves { " --valves" } else { "" },
            if self.membership { " --membership" } else { "" },
            if self.liveness { " --liveness" } else { "" }
        )
    }
}

/// Simulated time starts here (a plausible Unix time in ms, so decide's
/// clock arithmetic sees realistic values).
pub const EPOCH_MS: Ms = 1_790_000_000_000;

impl Sim {
    pub fn new(seed: u64, cfg: Config, sabotage: Option<Sabotage>) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let faults_until = EPOCH_MS + cfg.fault_ms;
        let mut sim = Sim {
            seed,
            rng,
            now: EPOCH_MS,
            queue: BinaryHeap::new(),
            items: BTreeMap::new(),
            next_item: 0,
            net: Net::new(),
            masters: (0..cfg.masters)
                .map(|m| {
                    let mut r = Replica::new(m);
                    r.initial_voters = (0..cfg.voters.clamp(1, cfg.masters)).collect();
                    r
                })
                .collect(),
            agents: (0..cfg.agents).map(|i| SimAgent::new(i, &cfg)).collect(),
            frameworks: (0..cfg.frameworks)
                .map(|i| SimFramework::new(i, &cfg))
                .collect(),
            operator: crate::operator::Operator::default(),
            truth: Truth::default(),
            stats: Stats::default(),
            sabotage,
            violations: Vec::new(),
            faults_until,
            trace: None,
            progress_ms: None,
            oracles: oracles::all(&cfg),
            cfg,
        };
        for m in 0..sim.masters.len() {
            sim.reset_election_timer(m);
        }
        for a in 0..sim.agents.len() {
            let at = sim.rng.random_range(0..2_000);
            sim.schedule(at, Node::Agent(a), Msg::Timer(Timer::AgentTick));
        }
        for f in 0..sim.frameworks.len() {
            let at = sim.rng.random_range(0..2_000);
            sim.schedule(at, Node::Framework(f), Msg::Timer(Timer::FrameworkTick));
        }
        sim.schedule(1_000, Node::Operator, Msg::Timer(Timer::Faults));
        sim.schedule(1_500, Node::Operator, Msg::Timer(Timer::Operator));
        sim
    }

    pub fn in_fault_phase(&self) -> bool {
        self.now < self.faults_until
    }

    pub fn schedule(&mut self, after: Ms, to: Node, msg: Msg) {
        let id = self.next_item;
        self.next_item += 1;
        self.queue.push(Reverse((self.now + after, id)));
        self.items.insert(id, (to, msg));
    }

    /// Sends a unary call or reply through the network.
    pub fn send(&mut self, from: Node, to: Node, msg: Msg) {
        match self
            .net
            .unary(&mut self.rng, &self.cfg.faults, from, to, self.now)
        {
            Fate::Lost => {}
            Fate::Deliver { delay, twice } => {
                if let Some(d) = twice {
                    self.schedule(d, to, msg.clone());
                }
                self.schedule(delay, to, msg);
            }
        }
    }

    /// Sends a stream message; false if the stream broke.
    pub fn send_stream(&mut self, from: Node, to: Node, msg: Msg) -> bool {
        match self
            .net
            .stream(&mut self.rng, &self.cfg.faults, from, to, self.now)
        {
            Fate::Lost => {
                self.stats.stream_breaks += 1;
                false
            }
            Fate::Deliver { delay, .. } => {
                self.schedule(delay, to, msg);
                true
            }
        }
    }

    /// Runs the fault phase, then the liveness phase, and judges the end.
    pub fn run(self) -> Report {
        self.run_with(|_| ()).0
    }

    /// Like `run`, then hands the final committed state to `after`.
    pub fn run_with<T>(mut self, after: impl FnOnce(&Cluster) -> T) -> (Report, T) {
        let end = self.faults_until + self.cfg.liveness_ms;
        let mut liveness_started = false;
        let mut quiet_since: Option<Ms> = None;
        let mut next_live_check: Ms = 0;
        let started = std::time::Instant::now();
        let mut next_progress = self.now;
        while self.violations.is_empty() {
            let Some(Reverse((at, id))) = self.queue.pop() else {
                self.violations.push(Violation {
                    oracle: "simulator",
                    detail: "the queue ran dry".into(),
                });
                break;
            };
            if !liveness_started && at >= self.faults_until {
                liveness_started = true;
                self.end_faults();
            }
            if at > end {
                let why = crate::oracles::liveness::unconverged(&self);
                self.violations.push(Violation {
                    oracle: "liveness",
                    detail: format!(
                        "not converged {} s after the faults stopped: {}",
                        self.cfg.liveness_ms / 1_000,
                        why.unwrap_or_else(|| "(converged at the deadline)".into())
                    ),
                });
                break;
            }
            self.now = at;
            if let Some(every) = self.progress_ms {
                if self.now >= next_progress {
                    next_progress = self.now + every;
                    eprintln!(
                        "progress: {:.0} s wall, {} s simulated, {} steps, {} events committed, {} tasks",
                        started.elapsed().as_secs_f64(),
                        (self.now - EPOCH_MS) / 1_000,
                        self.stats.steps,
                        self.stats.committed,
                        self.truth.cluster.tasks.len(),
                    );
                }
            }
            let Some((node, msg)) = self.items.remove(&id) else {
                continue;
            };
            self.stats.steps += 1;
            if let Some(needle) = &self.trace {
                let shown = format!("{msg:?}");
                if shown.contains(needle.as_str()) {
                    println!("[{} ms] to {node:?}: {shown}", self.now - EPOCH_MS);
                }
            }
            self.deliver(node, msg);
            if self.stats.steps.is_multiple_of(self.cfg.check_every) {
                self.check_state();
            }
            if liveness_started && self.now >= next_live_check {
                next_live_check = self.now + self.cfg.live_check_ms;
                if crate::oracles::liveness::unconverged(&self).is_none() {
                    // Converged: hold it for a few seconds (messages in
                    // flight land), then judge.
                    let since = *quiet_since.get_or_insert(self.now);
                    if self.now >= since + 5_000 {
                        break;
                    }
                } else {
                    quiet_since = None;
                }
            }
        }
        if self
            .violations
            .iter()
            .all(|v| v.oracle == crate::oracles::liveness::NAME)
        {
            self.check_state();
        }
        // The end's oracles also run when the cluster did not converge:
        // what they find may be why.
        if self
            .violations
            .iter()
            .all(|v| v.oracle == crate::oracles::liveness::NAME)
        {
            let mut oracles = std::mem::take(&mut self.oracles);
            for o in &mut oracles {
                if o.name() == crate::oracles::liveness::NAME && !self.violations.is_empty() {
                    continue;
                }
                if let Err(detail) = o.at_end(&self) {
                    self.violations.push(Violation {
                        oracle: o.name(),
                        detail,
                    });
                }
            }
            self.oracles = oracles;
        }
        let extra = after(&self.truth.cluster);
        let report = Report {
            valves: self.cfg.keyed_retries,
            membership: self.cfg.faults.membership_change_per_s > 0.0,
            liveness: self.cfg.faults.master_freeze_per_s > 0.0,
            seed: self.seed,
            stats: self.stats.clone(),
            sim_ms: self.now - EPOCH_MS,
            violations: self.violations,
            last_index: self.truth.cluster.applied_index,
            digest: orrery_events::digest(&self.truth.cluster).to_string(),
            tasks: self.truth.cluster.tasks.len(),
            agents: self.truth.cluster.agents.len(),
            masters: self
                .masters
                .iter()
                .map(|r| {
                    format!(
                        "master {}: {}, {}, term {}, commit {}, log {}",
                        r.id,
                        if r.up { "up" } else { "down" },
                        match &r.role {
                            crate::raft::Role::Leader(s) if s.elected => "serving",
                            crate::raft::Role::Leader(_) => "leader (election not committed)",
                            crate::raft::Role::Candidate { .. } => "candidate",
                            crate::raft::Role::Follower { .. } => "follower",
                        },
                        r.term,
                        r.commit,
                        r.last_index()
                    )
                })
                .collect(),
        };
        (report, extra)
    }

    /// The faults stop: partitions heal, crashed nodes restart.
    fn end_faults(&mut self) {
        self.net.faulty = false;
        self.net.heal_all();
        for m in 0..self.masters.len() {
            if !self.masters[m].up {
                self.schedule(1, Node::Master(m), Msg::Timer(Timer::MasterRestart));
            }
            self.masters[m].clock_offset_ms = 0;
            if self.masters[m].frozen_until > self.now {
                self.masters[m].frozen_until = self.now;
            }
        }
        for a in 0..self.agents.len() {
            if !self.agents[a].up {
                self.schedule(1, Node::Agent(a), Msg::Timer(Timer::AgentRestart));
            }
        }
    }

    /// A frozen master goes on. Its clock ran while it was stopped, but it
    /// heard nothing because it listened to nothing: its ping budgets and
    /// its reregistration deadline count only the time it ran (as the real
    /// master's sessions do: a gap between two of its ping ticks restarts
    /// the count).
    fn thaw(&mut self, m: usize) {
        let r = &mut self.masters[m];
        let stopped = self.now.saturating_sub(r.frozen_since);
        r.frozen_since = 0;
        r.frozen_until = 0;
        if let Some(shell) = r.shell() {
            for heard in shell.last_heard.values_mut() {
                *heard = heard.saturating_add(stopped);
            }
            shell.elected_at = shell.elected_at.saturating_add(stopped);
        }
    }

    fn deliver(&mut self, node: Node, msg: Msg) {
        if let Node::Master(m) = node {
            let until = self.masters[m].frozen_until;
            if until > self.now {
                // Frozen: it waits, in order, for the master to go on.
                self.schedule(until - self.now, node, msg);
                return;
            }
            if self.masters[m].frozen_since != 0 {
                self.thaw(m);
            }
        }
        match node {
            Node::Master(m) => self.on_master(m, msg),
            Node::Agent(a) => self.on_agent(a, msg),
            Node::Framework(f) => self.on_framework(f, msg),
            Node::Operator => self.on_operator(msg),
        }
    }

    /// The state oracles, on the current step.
    pub fn check_state(&mut self) {
        let mut oracles = std::mem::take(&mut self.oracles);
        for o in &mut oracles {
            if let Err(detail) = o.after_step(self) {
                self.violations.push(Violation {
                    oracle: o.name(),
                    detail: format!("at {} ms: {detail}", self.now - EPOCH_MS),
                });
            }
        }
        self.oracles = oracles;
    }

    /// Feeds a newly committed entry to the truth and the event oracles.
    pub fn committed(&mut self, entry: &Entry) {
        let index = entry.index;
        let have = self.truth.log.len() as u64;
        if index <= have {
            let known = &self.truth.log[index as usize - 1];
            if known != entry {
                self.violations.push(Violation {
                    oracle: oracles::acked_events::NAME,
                    detail: format!(
                        "index {index} was committed as {} (term {}) and is now reported committed as {} (term {})",
                        orrery_events::codec::event_name(known.payload.as_ref().expect("payload")),
                        known.term,
                        entry.payload.as_ref().map_or("nothing", orrery_events::codec::event_name),
                        entry.term
                    ),
                });
            }
            return;
        }
        if index != have + 1 {
            self.violations.push(Violation {
                oracle: oracles::acked_events::NAME,
                detail: format!("committed index {index} follows {have}: a gap"),
            });
            return;
        }
        let mut oracles = std::mem::take(&mut self.oracles);
        for o in &mut oracles {
            if let Err(detail) = o.on_event(&self.truth.cluster, entry) {
                self.violations.push(Violation {
                    oracle: o.name(),
                    detail: format!("event {index}: {detail}"),
                });
            }
        }
        self.oracles = oracles;
        if let Err(e) = orrery_events::try_apply(&mut self.truth.cluster, entry) {
            self.violations.push(Violation {
                oracle: oracles::acked_events::NAME,
                detail: format!("the committed log does not apply: {e}"),
            });
        }
        if let Some(needle) = &self.trace {
            let shown = format!("{:?}", entry.payload);
            if shown.contains(needle.as_str()) {
                println!("[{} ms] committed {index}: {shown}", self.now - EPOCH_MS);
            }
        }
        self.truth.log.push(entry.clone());
        self.stats.committed += 1;
        if matches!(
            entry.payload,
            Some(orrery_events::pb::envelope::Payload::MastersChanged(_))
        ) {
            self.stats.membership_changes += 1;
        }
        if index.is_multiple_of(self.cfg.digest_every) {
            self.truth
                .digests
                .insert(index, orrery_events::digest(&self.truth.cluster));
        }
    }

    pub fn violation(&mut self, oracle: &'static str, detail: String) {
        self.violations.push(Violation { oracle, detail });
    }

    /// A random element of `0..n`.
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }
}
