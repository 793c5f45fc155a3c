//! A simulated framework (a Mesos scheduler): it subscribes, fails over
//! with its id after its stream breaks and then reconciles, accepts some
//! offers with small tasks and declines the rest, acknowledges every
//! update, kills a task now and then, and answers inverse offers.
//!
//! What it receives is written down for the status-order oracle: every
//! stream message's sequence number and every update.

use std::collections::{BTreeMap, BTreeSet};

use orrery_events::command::{Command, FrameworkSubscription, TaskSpec};
use orrery_events::pb::{envelope::Payload, CommandInfo, TaskState};
use orrery_events::{FrameworkId, OfferId, Resources, TaskId};
use orrery_proto::scheduler as sp;
use rand::Rng;

use crate::config::{Config, Ms};
use crate::net::Node;
use crate::sim::{Call, Msg, Outcome, Sim, Timer};

pub const TICK_MS: Ms = 1_000;
const SUBSCRIBE_RETRY_MS: Ms = 2_000;

/// What a framework saw, for the oracles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A stream message: (session, sequence number).
    Stream { session: u64, seq: u64 },
    /// A status update on the stream.
    Update {
        task: TaskId,
        uuid: String,
        state: TaskState,
    },
    /// A reconciliation answer (the committed state when asked).
    Reconciled { task: TaskId, state: TaskState },
}

#[derive(Clone, Debug)]
enum Inflight {
    Subscribe,
    Heartbeat,
    Reconcile(u64),
    Other,
}

#[derive(Debug)]
pub struct SimFramework {
    pub idx: usize,
    pub name: String,
    pub role: String,
    pub region_aware: bool,
    pub framework_id: Option<FrameworkId>,
    pub session: u64,
    pub master: usize,
    subscribing_since: Option<Ms>,
    /// The latest state it knows of each of its tasks.
    pub tasks: BTreeMap<TaskId, TaskState>,
    calls: BTreeMap<u64, Inflight>,
    next_call: u64,
    next_task: u64,
    /// The session it last reconciled in (it asks again until answered).
    reconciled: u64,
    /// Whether it asked the master to stop sending offers (at its target).
    suppressed: bool,
    target: usize,
    /// Observations not yet taken by the oracles.
    pub seen: Vec<Seen>,
    /// Offers it holds: the oracles check none is for a host in maintenance.
    pub inverse: BTreeSet<OfferId>,
    /// Keyed calls without an answer yet: call id → (key, command, sent
    /// at, attempts).
    keyed: BTreeMap<u64, (String, Command, Ms, u32)>,
    next_key: u64,
    /// Keyed calls refused although an attempt of them committed (the
    /// idempotency oracle takes them).
    pub refused_after_effect: Vec<String>,
}

/// A keyed call without an answer is sent again after this long, at most
/// this many times in all.
const KEYED_RETRY_MS: Ms = 3_000;
const KEYED_ATTEMPTS_MAX: u32 = 4;

impl SimFramework {
    pub fn new(idx: usize, cfg: &Config) -> Self {
        SimFramework {
            idx,
            name: format!("fw-{idx}"),
            role: format!("role-{}", idx % 2),
            region_aware: idx % 3 == 2,
            framework_id: None,
            session: 0,
            master: 0,
            subscribing_since: None,
            tasks: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            next_task: 0,
            reconciled: 0,
            suppressed: false,
            target: cfg.tasks_per_framework,
            seen: Vec::new(),
            inverse: BTreeSet::new(),
            keyed: BTreeMap::new(),
            next_key: 0,
            refused_after_effect: Vec::new(),
        }
    }

    pub fn live_tasks(&self) -> usize {
        self.tasks
            .values()
            .filter(|s| !orrery_events::state::task::is_terminal(**s))
            .count()
    }
}

impl Sim {
    fn fw_call(&mut self, f: usize, call: Call, kind: Inflight) {
        let fw = &mut self.frameworks[f];
        fw.next_call += 1;
        let id = fw.next_call;
        fw.calls.insert(id, kind);
        let to = Node::Master(fw.master);
        self.send(
            Node::Framework(f),
            to,
            Msg::Request {
                from: Node::Framework(f),
                id,
                call,
            },
        );
    }

    /// Accept and Kill: with an idempotency key (and retried without an
    /// answer) when the run asks for it.
    fn fw_effect_call(&mut self, f: usize, cmd: Command) {
        if !self.cfg.keyed_retries {
            self.fw_call(f, Call::core(cmd), Inflight::Other);
            return;
        }
        let fw = &mut self.frameworks[f];
        fw.next_key += 1;
        let key = format!("{}-k{}", fw.name, fw.next_key);
        self.fw_keyed(f, key, cmd, 1);
    }

    fn fw_keyed(&mut self, f: usize, key: String, cmd: Command, attempt: u32) {
        let call = Call::Keyed {
            key: key.clone(),
            cmd: Box::new(cmd.clone()),
        };
        self.fw_call(f, call, Inflight::Other);
        let now = self.now;
        let fw = &mut self.frameworks[f];
        fw.keyed.insert(fw.next_call, (key, cmd, now, attempt));
    }

    /// Keyed calls with no answer for a while: sent again, same key.
    fn retry_keyed(&mut self, f: usize) {
        let now = self.now;
        let fw = &mut self.frameworks[f];
        let due: Vec<u64> = fw
            .keyed
            .iter()
            .filter(|(_, (_, _, sent, _))| now >= sent + KEYED_RETRY_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let fw = &mut self.frameworks[f];
            let Some((key, cmd, _, attempt)) = fw.keyed.remove(&id) else {
                continue;
            };
            fw.calls.remove(&id);
            if attempt < KEYED_ATTEMPTS_MAX {
                self.stats.retries += 1;
                self.fw_keyed(f, key, cmd, attempt + 1);
            }
        }
    }

    /// The answer to a keyed call: a refusal of a call one of whose
    /// attempts committed is the double answer keys exist to prevent.
    fn keyed_answer(&mut self, f: usize, id: u64, outcome: &Outcome) {
        let Some((key, cmd, _, attempt)) = self.frameworks[f].keyed.remove(&id) else {
            return;
        };
        match outcome {
            // Still being committed, or not the leader: try again later.
            Outcome::Rejected("unavailable", _) | Outcome::NotLeader(_)
                if attempt < KEYED_ATTEMPTS_MAX =>
            {
                let now = self.now;
                let fw = &mut self.frameworks[f];
                // Due at the next retry round.
                fw.keyed.insert(id, (key, cmd, now, attempt));
                fw.calls.insert(id, Inflight::Other);
            }
            // Out of attempts: the framework gives this call up.
            Outcome::Rejected("unavailable", _) | Outcome::NotLeader(_) => {}
            Outcome::Rejected(name, message) => {
                let scoped = format!("|{key}");
                if let Some(index) = self.truth.cluster.idempotency.get(&scoped) {
                    self.frameworks[f].refused_after_effect.push(format!(
                        "{key} took effect at index {index}, yet attempt {attempt} was refused ({name}: {message})"
                    ));
                }
            }
            _ => {}
        }
    }

    pub(crate) fn on_framework(&mut self, f: usize, msg: Msg) {
        match msg {
            Msg::Timer(Timer::FrameworkTick) => self.framework_tick(f),
            Msg::Reply { id, outcome } => self.framework_reply(f, id, outcome),
            Msg::ToFramework {
                session,
                seq,
                event,
            } => {
                if session != self.frameworks[f].session || session == 0 {
                    return;
                }
                self.frameworks[f].seen.push(Seen::Stream { session, seq });
                self.framework_event(f, event);
            }
            _ => {}
        }
    }

    fn framework_tick(&mut self, f: usize) {
        self.schedule(
            TICK_MS,
            Node::Framework(f),
            Msg::Timer(Timer::FrameworkTick),
        );
        self.retry_keyed(f);
        let now = self.now;
        let fw = &self.frameworks[f];
        if fw.session == 0 {
            if fw
                .subscribing_since
                .is_some_and(|t| now < t + SUBSCRIBE_RETRY_MS)
            {
                return;
            }
            let sub = FrameworkSubscription {
                framework_id: fw.framework_id.clone(),
                name: fw.name.clone(),
                role: fw.role.clone(),
                region_aware: fw.region_aware,
                partition_aware: fw.idx.is_multiple_of(2),
                checkpoint: true,
                failover_timeout_ms: 24 * 3_600_000,
                principal: format!("{}-principal", fw.name),
            };
            self.frameworks[f].subscribing_since = Some(now);
            self.fw_call(f, Call::core(Command::Subscribe(sub)), Inflight::Subscribe);
            return;
        }
        let framework_id = fw.framework_id.clone().expect("a session has an id");
        let session = fw.session;
        self.fw_call(
            f,
            Call::Heartbeat {
                framework_id: framework_id.clone(),
                session,
            },
            Inflight::Heartbeat,
        );
        if self.frameworks[f].reconciled != session {
            let framework_id = framework_id.clone();
            self.fw_call(
                f,
                Call::Reconcile { framework_id },
                Inflight::Reconcile(session),
            );
        }
        // At its target it asks for no offers (Mesos' SUPPRESS); below it,
        // for offers again (REVIVE). Once the faults stop it wants none.
        let fw = &self.frameworks[f];
        let wants = self.in_fault_phase() && fw.live_tasks() < fw.target;
        if wants == fw.suppressed {
            self.frameworks[f].suppressed = !wants;
            let framework_id = framework_id.clone();
            let cmd = if wants {
                Command::Revive { framework_id }
            } else {
                Command::Suppress { framework_id }
            };
            self.fw_call(f, Call::core(cmd), Inflight::Other);
        }
        // Now and then, kill one of its tasks.
        if self.rng.random_bool(0.05) {
            let live: Vec<TaskId> = self.frameworks[f]
                .tasks
                .iter()
                .filter(|(_, s)| !orrery_events::state::task::is_terminal(**s))
                .map(|(t, _)| t.clone())
                .collect();
            if !live.is_empty() {
                let task_id = live[self.pick(live.len())].clone();
                self.fw_effect_call(
                    f,
                    Command::Kill {
                        framework_id,
                        task_id,
                    },
                );
            }
        }
    }

    fn framework_reply(&mut self, f: usize, id: u64, outcome: Outcome) {
        let Some(kind) = self.frameworks[f].calls.remove(&id) else {
            return;
        };
        self.keyed_answer(f, id, &outcome);
        let fw = &mut self.frameworks[f];
        if let Outcome::NotLeader(hint) = outcome {
            fw.master = hint.unwrap_or((fw.master + 1) % self.masters.len());
            fw.session = 0;
            fw.subscribing_since = None;
            return;
        }
        match (kind, outcome) {
            (Inflight::Subscribe, Outcome::Done { events, session }) => {
                if fw.session != 0 {
                    return;
                }
                if let Some(Payload::FrameworkSubscribed(s)) = events.first() {
                    fw.framework_id = Some(FrameworkId::from(s.framework_id.as_str()));
                }
                fw.session = session;
                fw.subscribing_since = None;
                fw.suppressed = false;
                fw.inverse.clear();
                let framework_id = fw.framework_id.clone().expect("subscribed");
                self.fw_call(
                    f,
                    Call::Reconcile { framework_id },
                    Inflight::Reconcile(session),
                );
            }
            (Inflight::Subscribe, Outcome::Rejected(code, _)) => {
                fw.subscribing_since = None;
                if code == "framework_removed" {
                    // Torn down or expired: a new framework from now on.
                    fw.framework_id = None;
                    fw.tasks.clear();
                }
            }
            (Inflight::Heartbeat, Outcome::NoSession) => {
                fw.session = 0;
                fw.subscribing_since = None;
            }
            (Inflight::Reconcile(session), Outcome::Statuses(statuses)) => {
                fw.reconciled = session;
                for (task, state) in statuses {
                    fw.seen.push(Seen::Reconciled {
                        task: task.clone(),
                        state,
                    });
                    let known = fw.tasks.entry(task).or_insert(state);
                    if orrery_events::state::task::rank(state)
                        >= orrery_events::state::task::rank(*known)
                    {
                        *known = state;
                    }
                }
            }
            (Inflight::Other, Outcome::Done { events, .. }) => {
                for e in events {
                    if let Payload::TaskLaunched(l) = e {
                        fw.tasks
                            .entry(TaskId::from(l.task_id.as_str()))
                            .or_insert(TaskState::TaskStaging);
                    }
                }
            }
            _ => {}
        }
    }

    fn framework_event(&mut self, f: usize, event: sp::event::Event) {
        match event {
            sp::event::Event::Offers(o) => {
                for offer in o.offers {
                    self.answer_offer(f, offer);
                }
            }
            sp::event::Event::Update(u) => {
                let Some(status) = u.status else {
                    return;
                };
                let state = TaskState::try_from(status.state).unwrap_or(TaskState::Unspecified);
                let task = TaskId::from(status.task_id.as_str());
                let fw = &mut self.frameworks[f];
                fw.seen.push(Seen::Update {
                    task: task.clone(),
                    uuid: status.uuid.clone(),
                    state,
                });
                fw.tasks.insert(task.clone(), state);
                if !status.uuid.is_empty() {
                    let framework_id = fw.framework_id.clone().expect("subscribed");
                    self.fw_call(
                        f,
                        Call::core(Command::Acknowledge {
                            framework_id,
                            task_id: task,
                            uuid: status.uuid,
                        }),
                        Inflight::Other,
                    );
                }
            }
            sp::event::Event::InverseOffers(io) => {
                let accepted = self.rng.random_bool(0.5);
                let fw = &mut self.frameworks[f];
                let offer_ids: Vec<OfferId> = io
                    .inverse_offers
                    .iter()
                    .map(|o| OfferId::from(o.offer_id.as_str()))
                    .collect();
                fw.inverse.extend(offer_ids.iter().cloned());
                let framework_id = fw.framework_id.clone().expect("subscribed");
                self.fw_call(
                    f,
                    Call::core(Command::AnswerInverseOffers {
                        framework_id,
                        offer_ids,
                        accepted,
                    }),
                    Inflight::Other,
                );
            }
            _ => {}
        }
    }

    /// Launches a few small tasks on the offer, or declines it.
    fn answer_offer(&mut self, f: usize, offer: sp::Offer) {
        let offer_id = OfferId::from(offer.offer_id.as_str());
        let fw = &self.frameworks[f];
        let framework_id = fw.framework_id.clone().expect("subscribed");
        let want = fw.target.saturating_sub(fw.live_tasks());
        let mut left = Resources::from_logged(offer.resources.as_ref());
        let mut launches = Vec::new();
        // Once the faults stop, frameworks let their tasks run out, so the
        // liveness phase can see the cluster settle.
        if want > 0 && self.in_fault_phase() && self.rng.random_bool(0.7) {
            let n = self.rng.random_range(1..=3usize).min(want);
            for _ in 0..n {
                let cpus = self.rng.random_range(1..=5u64) * 100;
                let mem = self.rng.random_range(1..=8u64) * 32;
                let need = Resources::new(cpus, mem, 0);
                if !left.contains(&need) {
                    break;
                }
                left = left.minus(&need);
                let fw = &mut self.frameworks[f];
                fw.next_task += 1;
                let (lo, hi) = self.cfg.framework_task_ms;
                let ms = self.rng.random_range(lo..hi.max(lo + 1));
                launches.push(TaskSpec {
                    task_id: TaskId::from(format!("{}-t{}", fw.name, fw.next_task).as_str()),
                    name: String::new(),
                    resources: need,
                    command: CommandInfo {
                        shell: format!("sim:finish:{ms}"),
                        ..Default::default()
                    },
                    job: None,
                    instance: 0,
                    job_version: 0,
                });
            }
        }
        if launches.is_empty() {
            let call = Command::Decline {
                framework_id,
                offer_ids: vec![offer_id],
                refuse_seconds: Some(f64::from(self.rng.random_range(1..5u8))),
            };
            self.fw_call(f, Call::core(call), Inflight::Other);
        } else {
            let call = Command::Accept {
                framework_id,
                offer_ids: vec![offer_id],
                launches,
                refuse_seconds: None,
            };
            self.fw_effect_call(f, call);
        }
    }
}
