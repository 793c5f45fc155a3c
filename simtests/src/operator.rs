//! The operator and the fault injector.
//!
//! Once a second of simulated time, while faults run, each fault is drawn
//! at its configured rate: partitions (both ways or one way) between a
//! group of nodes and the masters, agent crashes (half of them wiping the
//! work dir), master crashes (never more than a minority at once: with a
//! majority down the log rightly stops, which the liveness phase is not
//! about), clock jumps, maintenance (schedule a window, drain a host,
//! complete it once DOWN), and malformed calls from frameworks and the
//! operator. A malformed call must be refused: one that commits is a
//! violation.

use std::collections::BTreeMap;

use orrery_events::command::{Command, TaskSpec};
use orrery_events::pb;
use orrery_events::state::{HostState, MachineId, Unavailability, Window};
use orrery_events::{FrameworkId, OfferId, Resources, TaskId};
use rand::Rng;

use crate::net::Node;
use crate::sim::{Call, Msg, Outcome, Sim, Timer, EPOCH_MS};

const OPERATOR_TICK_MS: u64 = 2_000;

#[derive(Debug, Default)]
pub struct Operator {
    master: usize,
    next_call: u64,
    /// Calls in flight: whether each is malformed (must be refused).
    calls: BTreeMap<u64, (bool, String)>,
    jobs_created: usize,
    /// Hosts put into maintenance, and when they may come back.
    maintenance: BTreeMap<String, u64>,
    /// Since when the leader's `/health` says agent removals are held.
    held_since: Option<u64>,
}

/// How long the operator lets held removals wait, once the faults stopped,
/// before retiring the agents that did not come back (`orrery agents
/// mark-gone --held`).
const HELD_PATIENCE_MS: u64 = 30_000;

impl Sim {
    /// Whether jobs the operator means to create are not created yet.
    pub fn operator_jobs_pending(&self) -> bool {
        self.operator.jobs_created < self.cfg.jobs
    }

    fn operator_call(&mut self, cmd: Command, malformed: bool) {
        let op = &mut self.operator;
        op.next_call += 1;
        let id = op.next_call;
        op.calls.insert(id, (malformed, format!("{cmd:?}")));
        let to = Node::Master(op.master);
        self.send(
            Node::Operator,
            to,
            Msg::Request {
                from: Node::Operator,
                id,
                call: Call::core(cmd),
            },
        );
    }

    pub(crate) fn on_operator(&mut self, msg: Msg) {
        match msg {
            Msg::Timer(Timer::Faults) => self.inject_faults(),
            Msg::Timer(Timer::Operator) => self.operator_tick(),
            Msg::Reply { id, outcome } => {
                let Some((malformed, shown)) = self.operator.calls.remove(&id) else {
                    return;
                };
                match outcome {
                    Outcome::NotLeader(hint) => {
                        self.operator.master =
                            hint.unwrap_or((self.operator.master + 1) % self.masters.len());
                    }
                    Outcome::Done { events, .. } if malformed && !events.is_empty() => {
                        let detail = format!("a malformed call was accepted: {shown}");
                        self.violation("bad input refused", detail);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn operator_tick(&mut self) {
        self.schedule(
            OPERATOR_TICK_MS,
            Node::Operator,
            Msg::Timer(Timer::Operator),
        );
        if self.operator.jobs_created < self.cfg.jobs {
            let i = self.operator.jobs_created;
            let spec = pb::JobSpec {
                key: Some(pb::JobKey {
                    role: "www".into(),
                    env: "prod".into(),
                    name: format!("svc-{i}"),
                }),
                instances: self.cfg.instances_per_job,
                command: Some(pb::CommandInfo {
                    shell: "sim:service".into(),
                    ..Default::default()
                }),
                resources: Some(Resources::new(200, 64, 0).to_proto()),
                constraints: if i % 2 == 1 {
                    vec![pb::Constraint {
                        field: "hostname".into(),
                        operator: "UNIQUE".into(),
                        value: String::new(),
                    }]
                } else {
                    vec![]
                },
                region_aware: false,
                max_unavailable: self.cfg.max_unavailable,
                service: true,
                ..Default::default()
            };
            self.operator_call(Command::CreateJob(spec), false);
            // Counted once committed is seen in the state (retried until).
            if self
                .truth
                .cluster
                .jobs
                .keys()
                .any(|k| k.name == format!("svc-{i}"))
            {
                self.operator.jobs_created += 1;
            }
        }
        // Hosts DOWN long enough come back (asked again until they do);
        // a host UP again (or whose drain never took) leaves the list.
        let now = self.now;
        let c = &self.truth.cluster;
        let state = |h: &str| c.hosts.get(h).map_or(HostState::Up, |x| x.state);
        let due: Vec<String> = self
            .operator
            .maintenance
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(h, _)| h.clone())
            .collect();
        let back: Vec<String> = due
            .iter()
            .filter(|h| state(h) == HostState::Down)
            .cloned()
            .collect();
        let done: Vec<String> = due
            .into_iter()
            .filter(|h| state(h) == HostState::Up)
            .collect();
        for h in done {
            self.operator.maintenance.remove(&h);
        }
        if !back.is_empty() {
            self.operator_call(Command::CompleteMaintenance { hostnames: back }, false);
        }
        self.retire_held_agents();
    }

    /// The leader holds agent removals (its `/health` says so): once the
    /// faults are over and the agents that could come back had their
    /// chance, the operator retires the rest.
    fn retire_held_agents(&mut self) {
        let now = self.now;
        let leader = (0..self.masters.len()).find(|&m| self.masters[m].is_leader());
        // Held only after the shell's own election, so its state is in
        // the leader's term.
        let late: Option<Vec<orrery_events::AgentId>> = leader.and_then(|m| {
            let shell = self.masters[m].shell()?;
            shell.removals.held()?;
            Some(orrery_events::projections::recovery::awaiting_reregistration(&shell.spec))
        });
        let Some(late) = late else {
            self.operator.held_since = None;
            return;
        };
        let since = *self.operator.held_since.get_or_insert(now);
        if self.in_fault_phase() || now < since + HELD_PATIENCE_MS {
            return;
        }
        for agent_id in late {
            self.stats.marked_gone += 1;
            self.operator_call(
                Command::MarkAgentGone {
                    agent_id,
                    reason: "retired by the operator while removals were held".into(),
                },
                false,
            );
        }
        self.operator.held_since = None;
    }

    fn inject_faults(&mut self) {
        if !self.in_fault_phase() {
            return;
        }
        self.schedule(1_000, Node::Operator, Msg::Timer(Timer::Faults));
        self.net.expire(self.now);
        let f = self.cfg.faults.clone();
        if self.rng.random_bool(f.partition_per_s) {
            self.partition();
        }
        if f.rack_blip_per_s > 0.0 && self.rng.random_bool(f.rack_blip_per_s) {
            self.rack_blip();
        }
        if self.rng.random_bool(f.agent_crash_per_s.min(1.0)) {
            let a = self.pick(self.agents.len());
            let wipe = self.rng.random_bool(0.5);
            self.agent_crash(a, wipe);
        }
        if self.rng.random_bool(f.master_crash_per_s) && self.may_crash_a_voter() {
            let m = self.pick(self.masters.len());
            self.master_crash(m);
        }
        if self.rng.random_bool(f.clock_jump_per_s) {
            let m = self.pick(self.masters.len());
            let max = f.clock_jump_max_ms as i64;
            let jump = self.rng.random_range(-max..=max);
            self.masters[m].clock_offset_ms += jump;
            self.stats.clock_jumps += 1;
        }
        if self.rng.random_bool(f.maintenance_per_s) {
            self.maintenance();
        }
        if self.rng.random_bool(f.bad_input_per_s.min(1.0)) {
            self.bad_input();
        }
        if f.membership_change_per_s > 0.0 && self.rng.random_bool(f.membership_change_per_s) {
            self.change_masters();
        }
        if f.master_freeze_per_s > 0.0 && self.rng.random_bool(f.master_freeze_per_s) {
            self.master_freeze();
        }
    }

    /// SIGSTOP of a master (the leader, three times in four): it stops
    /// processing without closing its links, then goes on, stale.
    fn master_freeze(&mut self) {
        let leader = (0..self.masters.len()).find(|&m| self.masters[m].is_serving());
        let m = match leader {
            Some(l) if self.rng.random_bool(0.75) => l,
            _ => self.pick(self.masters.len()),
        };
        let (lo, hi) = self.cfg.faults.master_freeze_ms;
        let until = self.now + self.rng.random_range(lo..=hi.max(lo));
        let r = &mut self.masters[m];
        if r.frozen_since == 0 {
            r.frozen_since = self.now;
        }
        r.frozen_until = r.frozen_until.max(until);
        self.stats.master_freezes += 1;
    }

    fn partition(&mut self) {
        self.stats.partitions += 1;
        let (lo, hi) = self.cfg.faults.partition_ms;
        let until = self.now + self.rng.random_range(lo..=hi.max(lo));
        let one_way = self.rng.random_bool(0.5);
        let inbound_only = self.rng.random_bool(0.5);
        let group: Vec<Node> = match self.pick(3) {
            0 => vec![Node::Master(self.pick(self.masters.len()))],
            1 => {
                let n = 1 + self.pick(self.agents.len().div_ceil(4));
                (0..n)
                    .map(|_| Node::Agent(self.pick(self.agents.len())))
                    .collect()
            }
            _ => vec![Node::Framework(self.pick(self.frameworks.len()))],
        };
        let masters: Vec<Node> = (0..self.masters.len()).map(Node::Master).collect();
        for g in group {
            // A cut shorter than a ping budget's worth (with a tick and a
            // lost ping to spare) must cost no task, one way or both: only
            // a longer one excuses the agent.
            if let Node::Agent(a) = g {
                if until - self.now >= crate::agent::SHORT_CUT_MS {
                    self.agents[a].excuse(until);
                }
            }
            for &m in &masters {
                if g == m {
                    continue;
                }
                if !one_way || inbound_only {
                    self.net.block(m, g, until);
                }
                if !one_way || !inbound_only {
                    self.net.block(g, m, until);
                }
            }
        }
    }

    /// A whole zone loses its link to the masters for longer than the
    /// reregistration deadline, and the leader crashes as it happens. One
    /// blip in four is a rack lost for good: its machines come back
    /// wiped, as new agents, and the old ones never reregister (the case
    /// the operator retires by hand once removals are held).
    fn rack_blip(&mut self) {
        let lost = self.rng.random_bool(0.25);
        self.stats.partitions += 1;
        self.stats.rack_blips += 1;
        let until = self.now + self.rng.random_range(30_000..=60_000);
        let zone = self.pick(self.cfg.zones.max(1));
        let masters: Vec<Node> = (0..self.masters.len()).map(Node::Master).collect();
        let rack: Vec<usize> = (0..self.agents.len())
            .filter(|a| a % self.cfg.zones.max(1) == zone)
            .collect();
        for &a in &rack {
            self.agents[a].excuse(until);
            for &m in &masters {
                self.net.block(m, Node::Agent(a), until);
                self.net.block(Node::Agent(a), m, until);
            }
            if lost && self.agents[a].up {
                let old = self.agents[a].agent_id.clone();
                self.agent_crash(a, true);
                self.agents[a].repair_of = old;
            }
        }
        if self.may_crash_a_voter() {
            if let Some(l) = self.masters.iter().position(|m| m.up && m.is_leader()) {
                self.master_crash(l);
            }
        }
    }

    /// Whether one more voter may go down and leave a majority of the
    /// committed voters up (beyond that the log rightly stops).
    fn may_crash_a_voter(&self) -> bool {
        let voters = self.committed_voters();
        let down = voters.iter().filter(|v| !self.masters[**v].up).count();
        down < voters.len() - self.majority()
    }

    /// The operator changes the group by one voter, through the leader
    /// (`orrery masters add|remove`): it promotes a learner or removes a
    /// voter that does not lead, keeping 3 to 5 voters. The leader refuses
    /// while its last change is not committed.
    fn change_masters(&mut self) {
        let Some(l) = (0..self.masters.len()).find(|&m| self.masters[m].is_serving()) else {
            return;
        };
        let mut voters = self.masters[l].voters().clone();
        let learners: Vec<usize> = (0..self.masters.len())
            .filter(|m| !voters.contains(m))
            .collect();
        let others: Vec<usize> = voters.iter().copied().filter(|v| *v != l).collect();
        let grow = match (learners.is_empty(), voters.len()) {
            (true, _) => false,
            (false, n) if n < 3 => true,
            (false, n) if n >= 5 => false,
            _ => self.rng.random_bool(0.5),
        };
        if grow {
            voters.insert(learners[self.pick(learners.len())]);
        } else if voters.len() > 3 {
            voters.remove(&others[self.pick(others.len())]);
        } else {
            return;
        }
        let members = (0..self.masters.len())
            .map(|m| {
                (
                    m as u64 + 1,
                    format!("master-{m}:7000"),
                    voters.contains(&m),
                )
            })
            .collect();
        self.operator.master = l;
        self.operator_call(
            Command::RecordMasters {
                members,
                outcome: String::new(),
            },
            false,
        );
    }

    /// Schedules a window for a host, or drains one, keeping at most two
    /// hosts in maintenance at once (capacity for the jobs to move to).
    fn maintenance(&mut self) {
        let c = &self.truth.cluster;
        let in_maintenance = c
            .hosts
            .values()
            .filter(|h| h.state != HostState::Up)
            .count()
            .max(self.operator.maintenance.len());
        if in_maintenance >= 2.min(self.agents.len() / 4) {
            return;
        }
        let a = self.pick(self.agents.len());
        let c = &self.truth.cluster;
        let host = self.agents[a].hostname.clone();
        if self.operator.maintenance.contains_key(&host)
            || c.hosts.get(&host).is_some_and(|h| h.state != HostState::Up)
        {
            return;
        }
        self.stats.drains += 1;
        let stay = self.rng.random_range(5_000..60_000);
        self.operator
            .maintenance
            .insert(host.clone(), self.now + stay);
        let with_schedule = self.rng.random_bool(0.5);
        let c = &self.truth.cluster;
        if with_schedule {
            // A schedule first (inverse offers go out), then the drain.
            let start_ns = (self.now - EPOCH_MS + 1_000) * 1_000_000;
            let mut windows: Vec<Window> = c.schedule.clone();
            windows.retain(|w| {
                w.machines.iter().all(|m| {
                    c.hosts
                        .get(&m.hostname)
                        .is_some_and(|h| h.state != HostState::Up)
                })
            });
            windows.push(Window {
                machines: vec![MachineId {
                    hostname: host.clone(),
                    ip: String::new(),
                }],
                unavailability: Unavailability {
                    start_ns,
                    duration_ns: Some(3_600_000_000_000),
                },
            });
            self.operator_call(Command::UpdateSchedule { windows }, false);
        }
        self.operator_call(
            Command::StartMaintenance {
                hostnames: vec![host],
            },
            false,
        );
    }

    /// A malformed or hostile call, from a framework or the operator.
    fn bad_input(&mut self) {
        self.stats.bad_inputs += 1;
        let which = self.pick(6);
        let c = &self.truth.cluster;
        let some_fw = c.frameworks.keys().next().cloned().unwrap_or_default();
        let other_task = c
            .tasks
            .values()
            .find(|t| t.key.framework_id != some_fw && !t.is_terminal())
            .map(|t| t.key.task_id.clone());
        let some_offer = c.offers.keys().next().cloned();
        let cmd = match which {
            // Kill another framework's task.
            0 => match other_task {
                Some(task_id) => Command::Kill {
                    framework_id: some_fw,
                    task_id,
                },
                None => return,
            },
            // Accept an offer with far more than it holds.
            1 => Command::Accept {
                framework_id: some_offer
                    .as_ref()
                    .and_then(|o| c.offers.get(o))
                    .map(|o| o.framework_id.clone())
                    .unwrap_or_default(),
                offer_ids: some_offer.into_iter().collect(),
                launches: vec![TaskSpec {
                    task_id: TaskId::from("greedy"),
                    name: String::new(),
                    resources: Resources::new(u64::MAX / 2, u64::MAX / 2, 0),
                    command: pb::CommandInfo {
                        shell: "x".into(),
                        ..Default::default()
                    },
                    job: None,
                    instance: 0,
                    job_version: 0,
                }],
                refuse_seconds: Some(f64::NAN),
            },
            // Decline with a bogus id and a negative filter.
            2 => Command::Decline {
                framework_id: FrameworkId::from("F\u{0}bad"),
                offer_ids: vec![OfferId::from("")],
                refuse_seconds: Some(-1.0),
            },
            // Drain a host that does not exist, twice in one call.
            3 => Command::StartMaintenance {
                hostnames: vec!["no such host!".into(), "no such host!".into()],
            },
            // A schedule listing one machine twice.
            4 => Command::UpdateSchedule {
                windows: vec![
                    Window {
                        machines: vec![MachineId {
                            hostname: "host-0".into(),
                            ip: String::new(),
                        }],
                        unavailability: Unavailability {
                            start_ns: 1,
                            duration_ns: Some(1),
                        },
                    };
                    2
                ],
            },
            // A job with zero-length key parts and a broken constraint; or
            // a job valid but for one field that only its launches would
            // have refused (once they stalled the job scheduler): a name
            // with a space, a LIKE that is no regular expression, an
            // environment variable named `A=B`.
            _ => {
                let good = pb::JobSpec {
                    key: Some(pb::JobKey {
                        role: "www".into(),
                        env: "prod".into(),
                        name: "bad".into(),
                    }),
                    instances: 1,
                    command: Some(pb::CommandInfo {
                        shell: "sim:service".into(),
                        ..Default::default()
                    }),
                    resources: Some(Resources::new(200, 64, 0).to_proto()),
                    service: true,
                    ..Default::default()
                };
                // Taken in turn, not drawn: the run's random draws stay
                // those of the seeds before these cases were added.
                let spec = match self.stats.bad_inputs % 4 {
                    0 => pb::JobSpec {
                        key: Some(pb::JobKey {
                            name: "a b".into(),
                            ..good.key.clone().unwrap_or_default()
                        }),
                        ..good
                    },
                    1 => pb::JobSpec {
                        constraints: vec![pb::Constraint {
                            field: "rack".into(),
                            operator: "LIKE".into(),
                            value: "rack-[".into(),
                        }],
                        ..good
                    },
                    2 => pb::JobSpec {
                        command: Some(pb::CommandInfo {
                            shell: "sim:service".into(),
                            environment: vec![pb::EnvironmentVariable {
                                name: "A=B".into(),
                                value: "v".into(),
                            }],
                            ..Default::default()
                        }),
                        ..good
                    },
                    _ => pb::JobSpec {
                        key: Some(pb::JobKey::default()),
                        instances: u32::MAX,
                        constraints: vec![pb::Constraint {
                            field: "@zone".into(),
                            operator: "LIKE".into(),
                            value: "(".into(),
                        }],
                        ..Default::default()
                    },
                };
                Command::CreateJob(spec)
            }
        };
        self.operator_call(cmd, true);
    }
}
