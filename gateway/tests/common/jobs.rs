//! Job helpers for the in-process tests: a job spec, and the operator
//! calls that create one and read its status.

use orrery_events::pb;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

use super::{Masters, PATIENCE};

pub fn spec(name: &str, instances: u32, constraints: &[[&str; 3]]) -> pb::JobSpec {
    pb::JobSpec {
        key: Some(pb::JobKey {
            role: "www".into(),
            env: "prod".into(),
            name: name.into(),
        }),
        instances,
        command: Some(pb::CommandInfo {
            shell: "sleep 1000".into(),
            argv: vec![],
            environment: vec![],
        }),
        resources: Some(pb::Resources {
            cpus_milli: 100,
            mem_mb: 16,
            disk_mb: 0,
            ports: vec![],
            ..Default::default()
        }),
        constraints: constraints
            .iter()
            .map(|[f, o, v]| pb::Constraint {
                field: f.to_string(),
                operator: o.to_string(),
                value: v.to_string(),
            })
            .collect(),
        region_aware: false,
        max_unavailable: 0,
        service: true,
        max_task_failures: 0,
        health_check: None,
        update_strategy: None,
        restart_policy: None,
        start_before_kill: false,
        partition_policy: None,
    }
}

pub fn key(name: &str) -> pb::JobKey {
    pb::JobKey {
        role: "www".into(),
        env: "prod".into(),
        name: name.into(),
    }
}

pub async fn create(m: &Masters, spec: pb::JobSpec) -> Result<(), tonic::Status> {
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &m.addrs(),
        PATIENCE,
        |ch| {
            let s = spec.clone();
            async move { OperatorClient::new(ch).create_job(s).await }
        },
    )
    .await
    .map(|_| ())
}

pub async fn status(m: &Masters, name: &str) -> op::JobStatusResponse {
    let k = key(name);
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &m.addrs(),
        PATIENCE,
        |ch| {
            let k = k.clone();
            async move {
                OperatorClient::new(ch)
                    .job_status(k)
                    .await
                    .map(|r| r.into_inner())
            }
        },
    )
    .await
    .expect("job status")
    .0
}

/// Instances of job `name` with a RUNNING task (a task's name is
/// `KEY/INSTANCE`), from the master's state: while a replacement starts,
/// the instance's old task still counts.
pub async fn instances_running(m: &Masters, name: &str) -> usize {
    let state = m.state().await;
    let part = format!("/{name}/");
    let names: std::collections::BTreeSet<&str> = state
        .tasks
        .iter()
        .filter(|t| t.state == pb::TaskState::TaskRunning as i32 && t.name.contains(&part))
        .map(|t| t.name.as_str())
        .collect();
    names.len()
}

/// The hosts in `states` (all with none), through the leader.
pub async fn hosts(m: &Masters, states: &[&str]) -> Vec<op::HostView> {
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &m.addrs(),
        PATIENCE,
        |ch| {
            let req = op::QueryHostsRequest {
                states: states.iter().map(|s| s.to_string()).collect(),
            };
            async move {
                OperatorClient::new(ch)
                    .query_hosts(req)
                    .await
                    .map(|r| r.into_inner())
            }
        },
    )
    .await
    .expect("hosts")
    .0
    .hosts
}

/// Starts maintenance (a drain) on `hostnames`.
pub async fn start_maintenance(m: &Masters, hostnames: &[&str]) {
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &m.addrs(),
        PATIENCE,
        |ch| {
            let req = op::Hosts {
                hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
            };
            async move { OperatorClient::new(ch).start_maintenance(req).await }
        },
    )
    .await
    .expect("drain started");
}
