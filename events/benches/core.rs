//! Benchmarks of the pure core (`cargo bench -p orrery-events`).
//!
//! - `apply/mix`: apply of a realistic log, status updates dominating
//!   (85% TaskStatusUpdated, 10% TaskStatusAcknowledged, 5% offer traffic),
//!   on a cluster of 1,000 agents and 20,000 tasks. Target ≥ 2,000,000
//!   events/s.
//! - `launch/decide+apply`: one Accept with one task launch, decided and
//!   applied, on a cluster with 1,000 agents. Target ≥ 200,000/s.
//!
//! The logs are built once with the real `decide`; only `apply` (or
//! decide+apply) is timed. Figures go to BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orrery_events::command::{Command, StatusUpdate};
use orrery_events::pb::{self, StatusSource, TaskReason, TaskState};
use orrery_events::testkit::Scenario;
use orrery_events::{apply, decide, envelopes, Cluster, OfferId, TaskId};

const AGENTS: usize = 1_000;
const TASKS_PER_AGENT: usize = 20;
const MIX_EVENTS: usize = 100_000;

/// AGENTS agents, one framework, and an outstanding offer of each agent to it.
fn offered() -> (Scenario, orrery_events::FrameworkId, Vec<OfferId>) {
    let mut s = Scenario::with_leader();
    for i in 0..AGENTS {
        s.agent(
            &format!("h{i}"),
            "cpus:64;mem:262144;disk:100000;ports:[31000-32000]",
            None,
        );
    }
    let fw = s.framework(Scenario::subscription("bench", "prod"));
    let offers: Vec<OfferId> = s
        .allocate()
        .iter()
        .map(|o| OfferId::from(o.offer_id.as_str()))
        .collect();
    (s, fw, offers)
}

/// A cluster with AGENTS agents, one framework, TASKS_PER_AGENT running
/// tasks on each agent.
fn populated() -> Scenario {
    let (mut s, fw, offers) = offered();
    for (a, offer) in offers.iter().enumerate() {
        let tasks = (0..TASKS_PER_AGENT)
            .map(|k| Scenario::task_spec(&format!("t-{a}-{k}"), "cpus:1;mem:1024"))
            .collect();
        s.accept(&fw, offer, tasks).expect("launch");
    }
    let keys: Vec<_> = s
        .cluster
        .tasks
        .values()
        .map(|t| (t.agent_id.clone(), t.key.clone()))
        .collect();
    let mut batch = Vec::new();
    for (agent, key) in &keys {
        batch.extend(
            decide(
                &s.cluster,
                Command::UpdateStatus(StatusUpdate {
                    agent_id: agent.clone(),
                    framework_id: key.framework_id.clone(),
                    task_id: key.task_id.clone(),
                    state: TaskState::TaskRunning,
                    uuid: "r0".into(),
                    reason: TaskReason::Unspecified,
                    message: String::new(),
                    source: StatusSource::SourceExecutor,
                    exit_code: None,
                    healthy: Some(true),
                }),
                s.now_ms,
            )
            .expect("running"),
        );
    }
    s.commit(batch);
    s
}

/// The mix: per 20 events, 17 health/status updates, 2 acks, 1 offer event.
fn mix_log(base: &Scenario) -> Vec<pb::Envelope> {
    let mut s = base.clone();
    s.log.clear();
    let keys: Vec<_> = s
        .cluster
        .tasks
        .values()
        .map(|t| (t.agent_id.clone(), t.key.clone()))
        .collect();
    let fw = keys[0].1.framework_id.clone();
    let mut n = 0usize;
    let mut round = 0u64;
    while s.log.len() < MIX_EVENTS {
        round += 1;
        for (agent, key) in keys.iter().step_by(7) {
            n += 1;
            let uuid = format!("u{round}-{n}");
            s.given(Command::UpdateStatus(StatusUpdate {
                agent_id: agent.clone(),
                framework_id: key.framework_id.clone(),
                task_id: key.task_id.clone(),
                state: TaskState::TaskRunning,
                uuid: uuid.clone(),
                reason: TaskReason::Unspecified,
                message: "health check passed".into(),
                source: StatusSource::SourceExecutor,
                exit_code: None,
                healthy: Some(true),
            }));
            if n % 17 < 2 {
                s.given(Command::Acknowledge {
                    framework_id: key.framework_id.clone(),
                    task_id: key.task_id.clone(),
                    uuid,
                });
            }
            if n.is_multiple_of(17) {
                s.advance(6_000);
                let offers = s.allocate();
                if let Some(o) = offers.first() {
                    s.given(Command::Decline {
                        framework_id: fw.clone(),
                        offer_ids: vec![OfferId::from(o.offer_id.as_str())],
                        refuse_seconds: Some(1.0),
                    });
                }
            }
            if s.log.len() >= MIX_EVENTS {
                break;
            }
        }
    }
    s.log
}

fn bench_apply(c: &mut Criterion) {
    let base = populated();
    let log = mix_log(&base);
    let statuses = log
        .iter()
        .filter(|e| matches!(e.payload, Some(pb::envelope::Payload::TaskStatusUpdated(_))))
        .count();
    eprintln!(
        "apply/mix: {} events, {:.0}% status updates, {} tasks, {} agents",
        log.len(),
        statuses as f64 * 100.0 / log.len() as f64,
        base.cluster.tasks.len(),
        base.cluster.agents.len()
    );
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(log.len() as u64));
    g.sample_size(20);
    g.bench_function("mix", |b| {
        b.iter_batched(
            || base.cluster.clone(),
            |mut cluster: Cluster| {
                for env in &log {
                    apply(&mut cluster, env);
                }
                cluster
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_launch(c: &mut Criterion) {
    let (s, fw, offers) = offered();
    let now = s.now_ms;
    let mut g = c.benchmark_group("launch");
    g.throughput(Throughput::Elements(offers.len() as u64));
    g.sample_size(20);
    // The framework's call (the task specs) is built outside the timed
    // region: only decide + apply are measured.
    let specs: Vec<_> = (0..offers.len())
        .map(|i| {
            let mut spec = Scenario::task_spec("x", "cpus:1;mem:1024");
            spec.task_id = TaskId::from(format!("task-{i}"));
            spec
        })
        .collect();
    g.bench_function("decide+apply", |b| {
        b.iter_batched(
            || (s.cluster.clone(), specs.clone()),
            |(mut cluster, specs): (Cluster, Vec<_>)| {
                for (offer, spec) in offers.iter().zip(specs) {
                    let events = decide(
                        &cluster,
                        Command::Accept {
                            framework_id: fw.clone(),
                            offer_ids: vec![offer.clone()],
                            launches: vec![spec],
                            refuse_seconds: None,
                        },
                        now,
                    )
                    .expect("launch");
                    for env in envelopes(&cluster, 1, now, events) {
                        apply(&mut cluster, &env);
                    }
                }
                cluster
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_apply, bench_launch);
criterion_main!(benches);
