//! Property tests over random command streams (proptest).
//!
//! Each case drives a cluster through a few hundred random commands — valid
//! ones, stale ones and hostile ones — and checks:
//! (a) replaying the same log from scratch gives the same digest;
//! (b) snapshot at a random point + replay of the tail == full replay;
//! (c) the invariants hold after every step;
//! (d) decide never panics, whatever the input.
//! The test counts the commands it decides and fails below 10,000 per run
//! (PROPTEST_CASES raises the number of cases).

use orrery_events::command::{Command, ElectLeader, ReportedTask, StatusUpdate};
use orrery_events::pb::{self, StatusSource, TaskReason, TaskState};
use orrery_events::state::{Domain, MachineId, Unavailability, Window};
use orrery_events::testkit::{default_config, Scenario};
use orrery_events::{
    apply, codec, decide, digest, invariants, snapshot, Cluster, FrameworkId, OfferId, Resources,
    TaskId,
};
use proptest::prelude::*;

const CASES: u32 = 160;
const STEPS_MAX: usize = 240;

#[derive(Clone, Debug)]
enum Op {
    Elect {
        region: u8,
    },
    Register {
        host: u8,
        cpus: u8,
        region: u8,
        zone: u8,
    },
    Reregister {
        agent: u8,
        report_all: bool,
    },
    Disconnect {
        agent: u8,
    },
    Unreachable {
        agent: u8,
    },
    Gone {
        agent: u8,
    },
    Subscribe {
        role: u8,
        region_aware: bool,
        partition_aware: bool,
    },
    Failover {
        fw: u8,
    },
    DisconnectFw {
        fw: u8,
    },
    ExpireFw {
        fw: u8,
    },
    Teardown {
        fw: u8,
    },
    Suppress {
        fw: u8,
    },
    Revive {
        fw: u8,
    },
    Allocate,
    ExpireOffers,
    Accept {
        offer: u8,
        tasks: u8,
        cpus_tenths: u8,
        ports: u8,
        refuse: Option<u8>,
    },
    AcceptForeign {
        offer: u8,
        fw: u8,
    },
    Decline {
        offer: u8,
        refuse: u8,
    },
    Status {
        task: u8,
        state: u8,
        dup: bool,
    },
    Ack {
        task: u8,
        stale: bool,
    },
    Kill {
        task: u8,
    },
    Schedule {
        hosts: Vec<u8>,
        start: u8,
    },
    StartMaintenance {
        host: u8,
    },
    Down {
        host: u8,
    },
    Complete {
        host: u8,
    },
    AnswerInverse {
        offer: u8,
        accept: bool,
        foreign: Option<u8>,
    },
    DrainHosts,
    Advance {
        ms: u32,
    },
    Garbage {
        which: u8,
        text: String,
        number: f64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => any::<u8>().prop_map(|region| Op::Elect { region }),
        2 => (0u8..12, 1u8..16, 0u8..3, 0u8..3).prop_map(|(host, cpus, region, zone)| Op::Register { host, cpus, region, zone }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(agent, report_all)| Op::Reregister { agent, report_all }),
        1 => any::<u8>().prop_map(|agent| Op::Disconnect { agent }),
        1 => any::<u8>().prop_map(|agent| Op::Unreachable { agent }),
        1 => any::<u8>().prop_map(|agent| Op::Gone { agent }),
        2 => (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(role, region_aware, partition_aware)| Op::Subscribe { role, region_aware, partition_aware }),
        1 => any::<u8>().prop_map(|fw| Op::Failover { fw }),
        1 => any::<u8>().prop_map(|fw| Op::DisconnectFw { fw }),
        1 => any::<u8>().prop_map(|fw| Op::ExpireFw { fw }),
        1 => any::<u8>().prop_map(|fw| Op::Teardown { fw }),
        1 => any::<u8>().prop_map(|fw| Op::Suppress { fw }),
        1 => any::<u8>().prop_map(|fw| Op::Revive { fw }),
        6 => Just(Op::Allocate),
        1 => Just(Op::ExpireOffers),
        10 => (any::<u8>(), 0u8..4, 1u8..30, 0u8..3, proptest::option::of(0u8..20)).prop_map(|(offer, tasks, cpus_tenths, ports, refuse)| Op::Accept { offer, tasks, cpus_tenths, ports, refuse }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(offer, fw)| Op::AcceptForeign { offer, fw }),
        2 => (any::<u8>(), 0u8..30).prop_map(|(offer, refuse)| Op::Decline { offer, refuse }),
        14 => (any::<u8>(), 0u8..14, any::<bool>()).prop_map(|(task, state, dup)| Op::Status { task, state, dup }),
        4 => (any::<u8>(), any::<bool>()).prop_map(|(task, stale)| Op::Ack { task, stale }),
        2 => any::<u8>().prop_map(|task| Op::Kill { task }),
        3 => (proptest::collection::vec(0u8..14, 0..4), any::<u8>()).prop_map(|(hosts, start)| Op::Schedule { hosts, start }),
        1 => (0u8..12).prop_map(|host| Op::StartMaintenance { host }),
        1 => (0u8..12).prop_map(|host| Op::Down { host }),
        1 => (0u8..12).prop_map(|host| Op::Complete { host }),
        4 => (any::<u8>(), any::<bool>(), proptest::option::weighted(0.2, any::<u8>())).prop_map(|(offer, accept, foreign)| Op::AnswerInverse { offer, accept, foreign }),
        2 => Just(Op::DrainHosts),
        4 => (0u32..20_000).prop_map(|ms| Op::Advance { ms }),
        2 => (any::<u8>(), ".{0,40}", any::<f64>()).prop_map(|(which, text, number)| Op::Garbage { which, text, number }),
    ]
}

fn nth<T: Clone>(items: impl Iterator<Item = T>, i: u8) -> Option<T> {
    let v: Vec<T> = items.collect();
    if v.is_empty() {
        None
    } else {
        Some(v[i as usize % v.len()].clone())
    }
}

fn host_name(i: u8) -> String {
    format!("h{i}")
}

/// Turns an op into a command against the current state (indices pick
/// existing entities, so most commands are plausible).
fn command(c: &Cluster, op: &Op) -> Option<Command> {
    let agent = |i| nth(c.agents.keys().cloned(), i);
    let fw = |i| nth(c.frameworks.keys().cloned(), i);
    let offer = |i| nth(c.offers.keys().cloned(), i);
    let task = |i| nth(c.tasks.values().cloned(), i);
    Some(match op.clone() {
        Op::Elect { region } => Command::ElectLeader(ElectLeader {
            term: c.term() + 1,
            leader_id: u64::from(region % 3),
            leader_addr: "m".into(),
            http_addr: String::new(),
            domain: Some(Domain {
                region: "r0".into(),
                zone: "z0".into(),
            }),
            config: default_config(),
        }),
        Op::Register {
            host,
            cpus,
            region,
            zone,
        } => {
            let mut reg = Scenario::registration(
                &host_name(host),
                &format!(
                    "cpus:{cpus};mem:{};disk:100;ports:[31000-31005]",
                    u32::from(cpus) * 256
                ),
                None,
            );
            reg.domain = Some(Domain {
                region: format!("r{region}"),
                zone: format!("z{zone}"),
            });
            Command::RegisterAgent(reg)
        }
        Op::Reregister {
            agent: i,
            report_all,
        } => {
            let id = agent(i)?;
            let a = &c.agents[&id];
            let mut reg = Scenario::registration(&a.hostname, "", None);
            reg.resources = a.total.clone();
            reg.domain = a.domain.clone();
            let tasks = c
                .tasks_on_agent(&id)
                .filter(|t| report_all || t.key.task_id.0.len() % 2 == 0)
                .map(|t| ReportedTask {
                    framework_id: t.key.framework_id.clone(),
                    task_id: t.key.task_id.clone(),
                    state: TaskState::TaskRunning,
                })
                .collect();
            Command::ReregisterAgent {
                agent_id: id,
                registration: reg,
                tasks,
            }
        }
        Op::Disconnect { agent: i } => Command::DisconnectAgent {
            agent_id: agent(i)?,
        },
        Op::Unreachable { agent: i } => Command::MarkAgentUnreachable {
            agent_id: agent(i)?,
            reason: "ping".into(),
        },
        Op::Gone { agent: i } => Command::MarkAgentGone {
            agent_id: agent(i)?,
            reason: "gone".into(),
        },
        Op::Subscribe {
            role,
            region_aware,
            partition_aware,
        } => {
            let mut sub = Scenario::subscription("fw", &format!("role{role}"));
            sub.region_aware = region_aware;
            sub.partition_aware = partition_aware;
            Command::Subscribe(sub)
        }
        Op::Failover { fw: i } => {
            let id = fw(i)?;
            let f = &c.frameworks[&id];
            let mut sub = Scenario::subscription(&f.name, &f.role);
            sub.framework_id = Some(id);
            sub.region_aware = f.region_aware;
            sub.partition_aware = f.partition_aware;
            sub.principal = f.principal.clone();
            Command::Subscribe(sub)
        }
        Op::DisconnectFw { fw: i } => Command::DisconnectFramework {
            framework_id: fw(i)?,
        },
        Op::ExpireFw { fw: i } => Command::ExpireFramework {
            framework_id: fw(i)?,
        },
        Op::Teardown { fw: i } => Command::Teardown {
            framework_id: fw(i)?,
        },
        Op::Suppress { fw: i } => Command::Suppress {
            framework_id: fw(i)?,
        },
        Op::Revive { fw: i } => Command::Revive {
            framework_id: fw(i)?,
        },
        Op::Allocate => Command::Allocate,
        Op::ExpireOffers => Command::ExpireOffers,
        Op::Accept {
            offer: i,
            tasks,
            cpus_tenths,
            ports,
            refuse,
        } => {
            let id = offer(i)?;
            let o = &c.offers[&id];
            let launches = (0..tasks)
                .map(|k| {
                    let mut spec =
                        Scenario::task_spec(&format!("t{}-{k}", c.applied_index), "mem:16");
                    spec.resources.cpus_milli = u64::from(cpus_tenths) * 100;
                    if ports > 0 {
                        if let Some(p) = o.resources.ports.take_first(u64::from(ports)) {
                            // Every task asks for the same first ports: a
                            // second one must be refused, not double-booked.
                            spec.resources.ports = p;
                        }
                    }
                    spec
                })
                .collect();
            Command::Accept {
                framework_id: o.framework_id.clone(),
                offer_ids: vec![id],
                launches,
                refuse_seconds: refuse.map(f64::from),
            }
        }
        Op::AcceptForeign { offer: i, fw: f } => Command::Accept {
            framework_id: fw(f)?,
            offer_ids: vec![offer(i)?],
            launches: vec![Scenario::task_spec("stolen", "cpus:0.1")],
            refuse_seconds: None,
        },
        Op::Decline { offer: i, refuse } => {
            let id = offer(i)?;
            Command::Decline {
                framework_id: c.offers[&id].framework_id.clone(),
                offer_ids: vec![id],
                refuse_seconds: Some(f64::from(refuse)),
            }
        }
        Op::Status {
            task: i,
            state,
            dup,
        } => {
            let t = task(i)?;
            let state = TaskState::try_from(i32::from(state)).unwrap_or(TaskState::TaskRunning);
            Command::UpdateStatus(StatusUpdate {
                agent_id: t.agent_id.clone(),
                framework_id: t.key.framework_id.clone(),
                task_id: t.key.task_id.clone(),
                state,
                uuid: if dup && !t.status_uuid.is_empty() {
                    t.status_uuid.clone()
                } else {
                    format!("u{}", c.applied_index)
                },
                reason: TaskReason::ReasonCommandExited,
                message: String::new(),
                source: StatusSource::SourceExecutor,
                exit_code: Some(0),
                healthy: None,
            })
        }
        Op::Ack { task: i, stale } => {
            let t = task(i)?;
            Command::Acknowledge {
                framework_id: t.key.framework_id.clone(),
                task_id: t.key.task_id.clone(),
                uuid: if stale {
                    "stale".into()
                } else {
                    t.status_uuid.clone()
                },
            }
        }
        Op::Kill { task: i } => {
            let t = task(i)?;
            Command::Kill {
                framework_id: t.key.framework_id.clone(),
                task_id: t.key.task_id.clone(),
            }
        }
        Op::Schedule { hosts, start } => Command::UpdateSchedule {
            windows: vec![Window {
                machines: hosts
                    .iter()
                    .map(|&h| MachineId {
                        hostname: host_name(h),
                        ip: String::new(),
                    })
                    .collect(),
                unavailability: Unavailability {
                    start_ns: u64::from(start) * 1_000_000_000,
                    duration_ns: None,
                },
            }],
        },
        Op::StartMaintenance { host } => Command::StartMaintenance {
            hostnames: vec![host_name(host)],
        },
        Op::Down { host } => Command::MarkMachinesDown {
            machines: vec![MachineId {
                hostname: host_name(host),
                ip: String::new(),
            }],
        },
        Op::Complete { host } => Command::CompleteMaintenance {
            hostnames: vec![host_name(host)],
        },
        Op::AnswerInverse {
            offer: i,
            accept,
            foreign,
        } => {
            let o = nth(c.inverse_offers.values().cloned(), i)?;
            Command::AnswerInverseOffers {
                framework_id: match foreign {
                    Some(f) => fw(f)?,
                    None => o.framework_id.clone(),
                },
                offer_ids: vec![o.id.clone()],
                accepted: accept,
            }
        }
        Op::DrainHosts => Command::DrainHosts,
        Op::Advance { .. } => return None,
        Op::Garbage {
            which,
            text,
            number,
        } => match which % 8 {
            0 => Command::RegisterAgent(orrery_events::command::AgentRegistration {
                hostname: text.clone(),
                ip: text,
                resources: Resources::default(),
                attributes: vec![],
                domain: None,
            }),
            1 => Command::Decline {
                framework_id: FrameworkId::from(text.as_str()),
                offer_ids: vec![OfferId::from(text.as_str())],
                refuse_seconds: Some(number),
            },
            2 => Command::SetRoleWeights {
                weights: vec![(text, number)],
            },
            3 => Command::Accept {
                framework_id: nth(c.frameworks.keys().cloned(), which).unwrap_or_default(),
                offer_ids: nth(c.offers.keys().cloned(), which).into_iter().collect(),
                launches: vec![orrery_events::command::TaskSpec {
                    task_id: TaskId::from(text.as_str()),
                    name: text.clone(),
                    resources: Resources::new(u64::MAX, u64::MAX, 0),
                    command: pb::CommandInfo {
                        shell: text,
                        ..Default::default()
                    },
                    job: None,
                    instance: 0,
                    job_version: 0,
                }],
                refuse_seconds: Some(number),
            },
            4 => Command::UpdateStatus(StatusUpdate {
                agent_id: text.as_str().into(),
                framework_id: text.as_str().into(),
                task_id: text.as_str().into(),
                state: TaskState::Unspecified,
                uuid: text.clone(),
                reason: TaskReason::Unspecified,
                message: text,
                source: StatusSource::Unspecified,
                exit_code: None,
                healthy: None,
            }),
            5 => Command::StartMaintenance {
                hostnames: vec![text.clone(), text],
            },
            6 => Command::CreateJob(pb::JobSpec {
                key: Some(pb::JobKey {
                    role: text.clone(),
                    env: text.clone(),
                    name: text.clone(),
                }),
                instances: number as u32,
                command: Some(pb::CommandInfo {
                    shell: text.clone(),
                    ..Default::default()
                }),
                constraints: vec![pb::Constraint {
                    field: text.clone(),
                    operator: text.clone(),
                    value: text,
                }],
                ..Default::default()
            }),
            _ => Command::Kill {
                framework_id: text.as_str().into(),
                task_id: text.as_str().into(),
            },
        },
    })
}

fn replay(log: &[pb::Envelope]) -> Cluster {
    let mut c = Cluster::new();
    for env in log {
        apply(&mut c, env);
    }
    c
}

/// Runs one case; returns how many commands it decided.
fn run(ops: &[Op], split: usize) -> Result<usize, TestCaseError> {
    let mut s = Scenario::new();
    s.elect(1, Some(("r0", "z0")));
    let mut steps = 0;
    for op in ops {
        if let Op::Advance { ms } = op {
            s.advance(u64::from(*ms));
            continue;
        }
        let Some(cmd) = command(&s.cluster, op) else {
            continue;
        };
        steps += 1;
        // (d) decide never panics: a panic fails the case.
        if let Ok(events) = decide(&s.cluster, cmd, s.now_ms) {
            s.commit(events);
        }
        // (c) the invariants hold after every step.
        if let Err(v) = invariants::check(&s.cluster) {
            return Err(TestCaseError::fail(format!("after {op:?}: {v}")));
        }
    }
    if let Ok(mut seen) = SEEN.lock() {
        seen.extend(
            s.log
                .iter()
                .filter_map(|e| e.payload.as_ref().map(codec::event_name)),
        );
    }
    // (a) the same log applied again reaches the same digest.
    let live = digest(&s.cluster);
    prop_assert_eq!(digest(&replay(&s.log)), live);
    // (b) snapshot + tail == full replay.
    let k = split % (s.log.len() + 1);
    let prefix = replay(&s.log[..k]);
    let mut restored = snapshot::decode(&snapshot::encode(&prefix)).expect("a snapshot decodes");
    prop_assert_eq!(digest(&restored), digest(&prefix));
    for env in &s.log[k..] {
        apply(&mut restored, env);
    }
    prop_assert_eq!(digest(&restored), live);
    prop_assert_eq!(&restored, &s.cluster);
    Ok(steps)
}

/// Event types the random streams produced (checked for coverage).
static SEEN: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The floor the issue sets: at least this many decided commands per run.
const STEPS_MIN: usize = 10_000;

#[test]
fn random_command_streams_keep_every_property() {
    // PROPTEST_CASES raises the number of cases (never below CASES).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CASES, |n: u32| n.max(CASES));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let steps = std::cell::Cell::new(0usize);
    let strategy = (
        proptest::collection::vec(op(), STEPS_MAX / 2..=STEPS_MAX),
        any::<usize>(),
    );
    if let Err(e) = runner.run(&strategy, |(ops, split)| {
        steps.set(steps.get() + run(&ops, split)?);
        Ok(())
    }) {
        panic!("{e}");
    }
    eprintln!("{} decided commands over {cases} cases", steps.get());
    let seen = SEEN.lock().map(|s| s.clone()).unwrap_or_default();
    // Events the streams reliably reach (rarer ones, like answers to
    // inverse offers, are covered by the rules tests).
    for needed in [
        "InverseOffersMade",
        "TaskKillRequested",
        "HostDrained",
        "HostDown",
    ] {
        assert!(
            seen.contains(needed),
            "the random streams never produced {needed}: {seen:?}"
        );
    }
    assert!(
        steps.get() >= STEPS_MIN,
        "only {} commands ran; the floor is {STEPS_MIN}",
        steps.get()
    );
}
