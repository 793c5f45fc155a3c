//! `POST /api/v1`: Mesos' v1 operator API, and the v0 `GET /master/state`
//! (`/state.json`) and `GET /version`.
//!
//! Answered from the leader's committed state (a follower redirects, 307,
//! as Mesos does; GET_HEALTH and GET_VERSION answer anywhere). Reads need
//! the `view` permission, maintenance changes `operator`. Supported calls:
//! GET_HEALTH, GET_VERSION, GET_MASTER, GET_STATE, GET_AGENTS,
//! GET_FRAMEWORKS, GET_TASKS, GET_MAINTENANCE_SCHEDULE,
//! GET_MAINTENANCE_STATUS, UPDATE_MAINTENANCE_SCHEDULE, START_MAINTENANCE,
//! STOP_MAINTENANCE and SUBSCRIBE (a RecordIO stream: SUBSCRIBED with the
//! whole state, then TASK_ADDED, TASK_UPDATED, AGENT_ADDED, AGENT_REMOVED,
//! FRAMEWORK_ADDED, FRAMEWORK_UPDATED, FRAMEWORK_REMOVED and HEARTBEAT).
//! Any other Mesos call answers 501 naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use orrery_events::command::Command;
use orrery_events::pb;
use orrery_events::Cluster;
use orrery_storage::{EventLog, StateAccess};
use serde_json::{json, Value};

use super::json::{self as mj, obj, req, req_string};
use super::{media_type_error, not_serving, Failure};
use crate::auth::{Caller, Permission};
use crate::http::Admin;

/// How often a SUBSCRIBE stream looks for newly committed changes, and
/// how often it sends a heartbeat.
const POLL: Duration = Duration::from_millis(200);
const HEARTBEAT: Duration = Duration::from_secs(15);

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub async fn version() -> Response {
    ok_json(json!({
        "version": mj::MESOS_VERSION,
        "build_user": "orrery",
        "git_tag": format!("orrery-{}", env!("CARGO_PKG_VERSION")),
    }))
}

/// `GET /master/state`, `GET /state.json`.
pub async fn master_state(State(a): State<Admin>) -> Response {
    if let Err(f) = not_serving(&a, "/master/state").await {
        return f.into_response();
    }
    ok_json(a.log.with_state(|m| mj::master_state(&m.cluster)))
}

pub async fn operator(
    State(a): State<Admin>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&a, &caller, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn handle(
    a: &Admin,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Failure> {
    media_type_error(headers)?;
    let call: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::bad(format!("Failed to parse body into JSON: {e}")))?;
    obj(&call, "call").map_err(Failure::bad)?;
    let kind = req_string(&call, "", "type").map_err(Failure::bad)?;
    let answer = |field: &str, v: Value| {
        let mut out = json!({"type": kind});
        out[field] = v;
        ok_json(out)
    };
    match kind.as_str() {
        "GET_HEALTH" => {
            let healthy = a.log.stopped().is_none()
                && a.log.unavailable().is_none()
                && a.log.leader().leader_id.is_some();
            return Ok(answer("get_health", json!({"healthy": healthy})));
        }
        "GET_VERSION" => {
            return Ok(answer(
                "get_version",
                json!({"version_info": {"version": mj::MESOS_VERSION, "build_user": "orrery"}}),
            ))
        }
        _ => {}
    }
    not_serving(a, "/api/v1").await?;
    let read = |f: fn(&Cluster) -> Value| a.log.with_state(|m| f(&m.cluster));
    Ok(match kind.as_str() {
        "GET_MASTER" => answer(
            "get_master",
            a.log.with_state(|m| {
                let elected = m.cluster.leader.as_ref().map_or(0, |l| l.elected_at_ms) as f64;
                json!({
                    "master_info": mj::master_info(&m.cluster),
                    "start_time": elected / 1000.0,
                    "elected_time": elected / 1000.0,
                })
            }),
        ),
        "GET_STATE" => answer("get_state", read(mj::get_state)),
        "GET_AGENTS" => answer("get_agents", read(mj::get_agents)),
        "GET_FRAMEWORKS" => answer("get_frameworks", read(mj::get_frameworks)),
        "GET_TASKS" => answer("get_tasks", read(mj::get_tasks)),
        "GET_EXECUTORS" => answer(
            "get_executors",
            json!({"executors": [], "orphan_executors": []}),
        ),
        "GET_MAINTENANCE_SCHEDULE" => answer(
            "get_maintenance_schedule",
            a.log.with_state(
                |m| json!({"schedule": crate::maintenance::schedule_json(&m.cluster.schedule)}),
            ),
        ),
        "GET_MAINTENANCE_STATUS" => answer(
            "get_maintenance_status",
            a.log
                .with_state(|m| json!({"status": crate::maintenance::status_json(&m.cluster)})),
        ),
        "UPDATE_MAINTENANCE_SCHEDULE" => {
            caller
                .may(Permission::Operator, "UPDATE_MAINTENANCE_SCHEDULE")
                .map_err(|m| Failure::new(StatusCode::FORBIDDEN, m))?;
            let v = req(&call, "", "update_maintenance_schedule").map_err(Failure::bad)?;
            let schedule =
                req(v, "update_maintenance_schedule", "schedule").map_err(Failure::bad)?;
            let windows = crate::maintenance::parse_schedule(schedule.to_string().as_bytes())
                .map_err(|e| Failure::bad(format!("update_maintenance_schedule.schedule: {e}")))?;
            crate::maintenance::submit(a, Command::UpdateSchedule { windows }).await
        }
        "START_MAINTENANCE" | "STOP_MAINTENANCE" => {
            caller
                .may(Permission::Operator, &kind)
                .map_err(|m| Failure::new(StatusCode::FORBIDDEN, m))?;
            let field = kind.to_lowercase();
            let v = req(&call, "", &field).map_err(Failure::bad)?;
            let machines = req(v, &field, "machines").map_err(Failure::bad)?;
            let machines = crate::maintenance::parse_machines(machines.to_string().as_bytes())
                .map_err(|e| Failure::bad(format!("{field}.machines: {e}")))?;
            let command = if kind == "START_MAINTENANCE" {
                Command::MarkMachinesDown { machines }
            } else {
                Command::CompleteMaintenance {
                    hostnames: machines.into_iter().map(|m| m.hostname).collect(),
                }
            };
            crate::maintenance::submit(a, command).await
        }
        "SUBSCRIBE" => subscribe(a),
        "GET_FLAGS"
        | "GET_METRICS"
        | "GET_LOGGING_LEVEL"
        | "SET_LOGGING_LEVEL"
        | "LIST_FILES"
        | "READ_FILE"
        | "GET_ROLES"
        | "GET_WEIGHTS"
        | "UPDATE_WEIGHTS"
        | "GET_OPERATIONS"
        | "RESERVE_RESOURCES"
        | "UNRESERVE_RESOURCES"
        | "CREATE_VOLUMES"
        | "DESTROY_VOLUMES"
        | "GET_QUOTA"
        | "UPDATE_QUOTA"
        | "MARK_AGENT_GONE"
        | "DRAIN_AGENT"
        | "DEACTIVATE_AGENT"
        | "REACTIVATE_AGENT"
        | "TEARDOWN" => {
            return Err(Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("the {kind} call is not supported by Orrery's Mesos API"),
            ))
        }
        other => {
            return Err(Failure::bad(format!(
                "Failed to validate master::Call: unknown call type {other:?}"
            )))
        }
    })
}

/// What a SUBSCRIBE stream compares between two looks at the state.
#[derive(Default, PartialEq)]
struct Seen {
    tasks: BTreeMap<(String, String), i32>,
    agents: BTreeMap<String, bool>,
    frameworks: BTreeMap<String, (bool, bool)>,
}

fn seen(c: &Cluster) -> Seen {
    Seen {
        tasks: c
            .tasks
            .iter()
            .map(|(k, t)| {
                (
                    (k.framework_id.0.clone(), k.task_id.0.clone()),
                    t.state as i32,
                )
            })
            .collect(),
        agents: c
            .agents
            .iter()
            .map(|(id, a)| {
                (
                    id.0.clone(),
                    a.state == orrery_events::state::AgentState::Gone,
                )
            })
            .collect(),
        frameworks: c
            .frameworks
            .iter()
            .map(|(id, f)| (id.0.clone(), (f.connected, f.removed)))
            .collect(),
    }
}

/// The events that turn `old` into `new` (`c` is the state of `new`).
fn changes(c: &Cluster, old: &Seen, new: &Seen) -> Vec<Value> {
    let mut out = Vec::new();
    for (id, gone) in &new.agents {
        let agent = c.agents.get(id.as_str());
        match (old.agents.get(id), gone, agent) {
            (None, false, Some(a)) => out
                .push(json!({"type": "AGENT_ADDED", "agent_added": {"agent": mj::agent_json(a)}})),
            (Some(false), true, _) => out.push(
                json!({"type": "AGENT_REMOVED", "agent_removed": {"agent_id": mj::value_id(id)}}),
            ),
            _ => {}
        }
    }
    for (id, now) in &new.frameworks {
        let Some(f) = c.frameworks.get(id.as_str()) else {
            continue;
        };
        match old.frameworks.get(id) {
            None => out.push(json!({"type": "FRAMEWORK_ADDED", "framework_added": {"framework": mj::framework_json(c, f)}})),
            Some(before) if before != now && now.1 => out.push(json!({"type": "FRAMEWORK_REMOVED", "framework_removed": {"framework_info": mj::framework_info(f)}})),
            Some(before) if before != now => out.push(json!({"type": "FRAMEWORK_UPDATED", "framework_updated": {"framework": mj::framework_json(c, f)}})),
            _ => {}
        }
    }
    for ((fw, task), state) in &new.tasks {
        let key = orrery_events::TaskKey::new(
            orrery_events::FrameworkId::new(fw.clone()),
            orrery_events::TaskId::new(task.clone()),
        );
        let Some(t) = c.tasks.get(&key) else {
            continue;
        };
        match old.tasks.get(&(fw.clone(), task.clone())) {
            None => {
                out.push(json!({"type": "TASK_ADDED", "task_added": {"task": mj::task_json(c, t)}}))
            }
            Some(before) if before != state => {
                let s = pb::TaskState::try_from(*state).unwrap_or(pb::TaskState::TaskUnknown);
                out.push(json!({"type": "TASK_UPDATED", "task_updated": {
                    "framework_id": mj::value_id(fw),
                    "state": mj::state_name(s),
                    "status": mj::task_json(c, t)["statuses"][0],
                }}))
            }
            _ => {}
        }
    }
    out
}

fn subscribe(a: &Admin) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let a = a.clone();
    tokio::spawn(async move {
        let (first, mut last, mut applied) = a.log.with_state(|m| {
            (
                json!({"type": "SUBSCRIBED", "subscribed": {
                    "get_state": mj::get_state(&m.cluster),
                    "heartbeat_interval_seconds": HEARTBEAT.as_secs_f64(),
                }}),
                seen(&m.cluster),
                m.cluster.applied_index,
            )
        });
        if tx
            .send(Ok(Bytes::from(mj::record_io(&first))))
            .await
            .is_err()
        {
            return;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = heartbeat.tick() => {
                    if tx.send(Ok(Bytes::from(mj::record_io(&json!({"type": "HEARTBEAT"}))))).await.is_err() {
                        return;
                    }
                }
                _ = poll.tick() => {
                    // A replica that stopped leading ends the stream: the
                    // subscriber reconnects to the new leader.
                    if not_serving(&a, "/api/v1").await.is_err() {
                        return;
                    }
                    let Some((events, now, index)) = a.log.with_state(|m| {
                        (m.cluster.applied_index != applied).then(|| {
                            let now = seen(&m.cluster);
                            (changes(&m.cluster, &last, &now), now, m.cluster.applied_index)
                        })
                    }) else {
                        continue;
                    };
                    last = now;
                    applied = index;
                    for e in events {
                        if tx.send(Ok(Bytes::from(mj::record_io(&e)))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}
