//! Golden encodings: events written by this and every earlier Orrery must
//! keep decoding to the same meaning. Each file under `tests/golden/` holds
//! one encoded envelope (`events/NNN-Name.bin`) or a whole log
//! (`logs/*.log`, length-prefixed envelopes). A file, once committed, is
//! never regenerated: if a test here fails, the schema change broke old
//! logs. New files are written only with `ORRERY_BLESS=1` and only where
//! none exists.

use std::path::{Path, PathBuf};

use orrery_events::command::Command;
use orrery_events::pb::{self, envelope::Payload};
use orrery_events::state::{HostState, MachineId};
use orrery_events::testkit::Scenario;
use orrery_events::{apply, codec, invariants, Cluster, TaskKey};
use prost::Message;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(sub)
}

fn bless() -> bool {
    std::env::var("ORRERY_BLESS").is_ok_and(|v| v == "1")
}

/// One sample of every event, with every field set to something visible.
fn samples() -> Vec<Payload> {
    let res = Some(pb::Resources {
        cpus_milli: 1500,
        mem_mb: 2048,
        disk_mb: 100,
        ports: vec![pb::PortRange {
            begin: 31000,
            end: 31009,
        }],
        ..Default::default()
    });
    let domain = Some(pb::Domain {
        region: "r1".into(),
        zone: "z1".into(),
    });
    let machine = Some(pb::MachineId {
        hostname: "h1".into(),
        ip: "10.0.0.1".into(),
    });
    let unavail = Some(pb::Unavailability {
        start_ns: 1_700_000_000_000_000_000,
        duration_ns: Some(3_600_000_000_000),
    });
    let spec = Some(pb::JobSpec {
        key: Some(pb::JobKey {
            role: "www".into(),
            env: "prod".into(),
            name: "hello".into(),
        }),
        instances: 3,
        command: Some(pb::CommandInfo {
            shell: "echo hi".into(),
            argv: vec![],
            environment: vec![pb::EnvironmentVariable {
                name: "A".into(),
                value: "b".into(),
            }],
        }),
        resources: res.clone(),
        constraints: vec![pb::Constraint {
            field: "@zone".into(),
            operator: "GROUP_BY".into(),
            value: "3".into(),
        }],
        region_aware: true,
        max_unavailable: 1,
        service: true,
        max_task_failures: 4,
        health_check: None,
        update_strategy: None,
        restart_policy: None,
        start_before_kill: false,
        partition_policy: None,
    });
    vec![
        Payload::LeaderElected(pb::LeaderElected {
            http_addr: String::new(),
            term: 3,
            leader_id: 2,
            leader_addr: "127.0.0.1:7002".into(),
            domain: domain.clone(),
            config: Some(pb::MasterConfig {
                offer_timeout_ms: 30_000,
                default_refuse_ms: 5_000,
                agent_reregister_timeout_ms: 600_000,
                // Added later: the golden file predates it.
                drain_grace_ms: 0,
                offers_per_framework_max: 0,
            }),
        }),
        Payload::RoleWeightsSet(pb::RoleWeightsSet {
            weights: vec![pb::RoleWeight {
                role: "prod".into(),
                weight_milli: 3000,
            }],
        }),
        Payload::AgentRegistered(pb::AgentRegistered {
            agent_id: "S1".into(),
            hostname: "h1".into(),
            ip: "10.0.0.1".into(),
            resources: res.clone(),
            attributes: vec![pb::Attribute {
                name: "rack".into(),
                value: "r1".into(),
            }],
            domain: domain.clone(),
        }),
        Payload::AgentReregistered(pb::AgentReregistered {
            agent_id: "S1".into(),
            hostname: "h1".into(),
            ip: "10.0.0.1".into(),
            resources: res.clone(),
            attributes: vec![],
            domain: domain.clone(),
        }),
        Payload::AgentDisconnected(pb::AgentDisconnected {
            agent_id: "S1".into(),
        }),
        Payload::AgentUnreachable(pb::AgentUnreachable {
            agent_id: "S1".into(),
            reason: "ping timeout".into(),
        }),
        Payload::AgentGone(pb::AgentGone {
            agent_id: "S1".into(),
            reason: "decommissioned".into(),
        }),
        Payload::FrameworkSubscribed(pb::FrameworkSubscribed {
            framework_id: "F1".into(),
            name: "web".into(),
            role: "prod".into(),
            capabilities: vec![
                pb::FrameworkCapability::RegionAware as i32,
                pb::FrameworkCapability::PartitionAware as i32,
            ],
            checkpoint: true,
            failover_timeout_ms: 60_000,
            principal: "web".into(),
            failover: true,
        }),
        Payload::FrameworkDisconnected(pb::FrameworkDisconnected {
            framework_id: "F1".into(),
        }),
        Payload::FrameworkRemoved(pb::FrameworkRemoved {
            framework_id: "F1".into(),
            reason: pb::FrameworkRemovalReason::RemovalTeardown as i32,
        }),
        Payload::FrameworkSuppressed(pb::FrameworkSuppressed {
            framework_id: "F1".into(),
        }),
        Payload::FrameworkRevived(pb::FrameworkRevived {
            framework_id: "F1".into(),
        }),
        Payload::OffersMade(pb::OffersMade {
            offers: vec![pb::Offer {
                offer_id: "O1".into(),
                framework_id: "F1".into(),
                agent_id: "S1".into(),
                resources: res.clone(),
                expires_at_ms: 1_700_000_030_000,
                unavailability: unavail,
            }],
        }),
        Payload::OffersRescinded(pb::OffersRescinded {
            offer_ids: vec!["O1".into()],
            reason: pb::RescindReason::RescindOfferTimeout as i32,
        }),
        Payload::OffersDeclined(pb::OffersDeclined {
            framework_id: "F1".into(),
            offer_ids: vec!["O1".into()],
            refuse_until_ms: 1_700_000_005_000,
        }),
        Payload::OffersAccepted(pb::OffersAccepted {
            framework_id: "F1".into(),
            offer_ids: vec!["O1".into()],
            refuse_until_ms: 1_700_000_005_000,
        }),
        Payload::DeclineFiltersExpired(pb::DeclineFiltersExpired {
            filters: vec![pb::DeclineFilterKey {
                framework_id: "F1".into(),
                agent_id: "S1".into(),
            }],
        }),
        Payload::TaskLaunched(pb::TaskLaunched {
            job_version: 0,
            framework_id: "F1".into(),
            task_id: "t1".into(),
            agent_id: "S1".into(),
            name: "hello-0".into(),
            resources: res,
            command: Some(pb::CommandInfo {
                shell: String::new(),
                argv: vec!["sleep".into(), "10".into()],
                environment: vec![],
            }),
            job: Some(pb::JobKey {
                role: "www".into(),
                env: "prod".into(),
                name: "hello".into(),
            }),
            instance: 2,
        }),
        Payload::TaskStatusUpdated(pb::TaskStatusUpdated {
            framework_id: "F1".into(),
            task_id: "t1".into(),
            agent_id: "S1".into(),
            state: pb::TaskState::TaskFailed as i32,
            uuid: "u-1".into(),
            reason: pb::TaskReason::ReasonCommandExited as i32,
            message: "exited with 3".into(),
            source: pb::StatusSource::SourceExecutor as i32,
            exit_code: Some(3),
            healthy: Some(false),
        }),
        Payload::TaskStatusAcknowledged(pb::TaskStatusAcknowledged {
            framework_id: "F1".into(),
            task_id: "t1".into(),
            uuid: "u-1".into(),
        }),
        Payload::TaskKillRequested(pb::TaskKillRequested {
            framework_id: "F1".into(),
            task_id: "t1".into(),
            reason: pb::TaskReason::ReasonKilledByFramework as i32,
        }),
        Payload::MaintenanceScheduleUpdated(pb::MaintenanceScheduleUpdated {
            windows: vec![pb::MaintenanceWindow {
                machines: vec![machine.clone().unwrap()],
                unavailability: unavail,
            }],
        }),
        Payload::HostDrainStarted(pb::HostDrainStarted {
            machine: machine.clone(),
        }),
        Payload::HostDrained(pb::HostDrained {
            machine: machine.clone(),
        }),
        Payload::HostDown(pb::HostDown {
            machine: machine.clone(),
        }),
        Payload::HostUp(pb::HostUp { machine }),
        Payload::JobCreated(pb::JobCreated { spec: spec.clone() }),
        Payload::JobUpdated(pb::JobUpdated {
            spec,
            rollback: false,
        }),
        Payload::JobKilled(pb::JobKilled {
            key: Some(pb::JobKey {
                role: "www".into(),
                env: "prod".into(),
                name: "hello".into(),
            }),
        }),
        Payload::JobUpdateFinished(pb::JobUpdateFinished {
            key: Some(pb::JobKey {
                role: "www".into(),
                env: "prod".into(),
                name: "hello".into(),
            }),
            version: 2,
        }),
        Payload::InverseOffersMade(pb::InverseOffersMade {
            inverse_offers: vec![pb::InverseOffer {
                offer_id: "I9".into(),
                framework_id: "F1".into(),
                agent_id: "S1".into(),
                hostname: "h1".into(),
                unavailability: unavail,
            }],
        }),
        Payload::InverseOffersAnswered(pb::InverseOffersAnswered {
            framework_id: "F1".into(),
            offer_ids: vec!["I9".into()],
            accepted: true,
        }),
        Payload::InverseOffersRescinded(pb::InverseOffersRescinded {
            offer_ids: vec!["I9".into()],
        }),
    ]
}

#[test]
fn every_event_has_a_golden_encoding_that_still_decodes() {
    let dir = dir("events");
    std::fs::create_dir_all(&dir).unwrap();
    let mut missing = Vec::new();
    for (i, payload) in samples().into_iter().enumerate() {
        let name = codec::event_name(&payload);
        let env = pb::Envelope {
            index: i as u64 + 1,
            term: 3,
            proposed_at_ms: 1_700_000_000_000,
            request_id: String::new(),
            principal: String::new(),
            idempotency_key: String::new(),
            payload: Some(payload),
        };
        let path = dir.join(format!("{:03}-{name}.bin", i + 1));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let decoded =
                    codec::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    decoded,
                    env,
                    "{} no longer decodes to the same event",
                    path.display()
                );
            }
            Err(_) if bless() => std::fs::write(&path, codec::encode(&env)).unwrap(),
            Err(_) => missing.push(path.display().to_string()),
        }
    }
    assert!(
        missing.is_empty(),
        "missing golden files (run once with ORRERY_BLESS=1): {missing:?}"
    );
}

/// A whole log from a run of the core: must replay, with the invariants,
/// to the same facts. Length-prefixed (u32 LE) envelopes.
fn scenario_log() -> Vec<pb::Envelope> {
    let (mut s, agent, fw, offer) = Scenario::one_offer();
    s.accept(
        &fw,
        &offer,
        vec![Scenario::task_spec(
            "t1",
            "cpus:1;mem:64;ports:[31000-31000]",
        )],
    )
    .unwrap();
    s.given(s.status(&agent, &fw, "t1", pb::TaskState::TaskRunning, "u1"));
    s.given(Command::Acknowledge {
        framework_id: fw.clone(),
        task_id: "t1".into(),
        uuid: "u1".into(),
    });
    s.given(Command::StartMaintenance {
        hostnames: vec!["h1".into()],
    });
    s.given(s.status(&agent, &fw, "t1", pb::TaskState::TaskKilled, "u2"));
    s.given(Command::MarkMachinesDown {
        machines: vec![MachineId {
            hostname: "h1".into(),
            ip: String::new(),
        }],
    });
    s.log
}

#[test]
fn an_old_log_replays_to_the_same_facts() {
    let path = dir("logs").join("drain-v1.log");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(_) if bless() => {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut out = Vec::new();
            for env in scenario_log() {
                let b = env.encode_to_vec();
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(&b);
            }
            std::fs::write(&path, &out).unwrap();
            out
        }
        Err(e) => panic!("{}: {e} (run once with ORRERY_BLESS=1)", path.display()),
    };
    let mut c = Cluster::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let env = codec::decode(&rest[4..4 + len]).unwrap();
        apply(&mut c, &env);
        invariants::check(&c).unwrap();
        rest = &rest[4 + len..];
    }
    let t = &c.tasks[&TaskKey::new("F1", "t1")];
    assert_eq!(t.state, pb::TaskState::TaskKilled);
    assert_eq!(c.hosts["h1"].state, HostState::Down);
    assert_eq!(c.applied_index, 14);
}
