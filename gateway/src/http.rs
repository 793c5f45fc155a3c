//! The HTTP admin endpoints of a master (`--http 127.0.0.1:PORT`).
//!
//! Served over TLS with the master's certificate (plain only with
//! `--insecure`); `crate::auth::http_guard` decides who may call what
//! (`/health`, `/metrics`, `/vars.json` are open).
//!
//! - `GET /health` → 200 `OK\n` while the replica's log runs and a leader
//!   is known, and on the leader once it serves (Aurora's monit check:
//!   `send "GET /health HTTP/1.0\r\n" expect "OK\n"`); 503 and the reason
//!   otherwise (the log stopped, no leader, the leader still recovering).
//! - `GET /metrics` → Prometheus text; `GET /vars.json` → the same as a flat
//!   map (`crate::metrics`).
//! - `GET /state` → the leader's committed view as JSON (`leader_id`,
//!   `term`, `commit_index`, `agents`, `frameworks`, `tasks`). A follower
//!   answers 307 to the leader's `/state` when the log names the leader's
//!   HTTP address, 503 when no leader is known; never its own (possibly
//!   stale) copy presented as current.

use actix::Addr;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use orrery_actors::master::{Log, Master, Serving};
use orrery_actors::views;
use orrery_events::pb;
use orrery_proto::operator as op;
use orrery_storage::{EventLog, StateAccess};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Admin {
    pub master: Addr<Master>,
    pub log: Log,
    /// The Mesos HTTP frameworks' streams (`crate::mesos::scheduler`).
    pub mesos: crate::mesos::scheduler::Streams,
    /// The web UI's time travel (`crate::ui`).
    pub ui: crate::ui::Travel,
    /// This replica's id.
    pub node_id: u64,
    /// Served over TLS (links to the leader say https).
    pub tls: bool,
    /// Tokens and policy (`/ui/login` checks a token itself); None when
    /// `--insecure`.
    pub security: Option<std::sync::Arc<crate::auth::Security>>,
}

pub fn router(admin: Admin, security: Option<std::sync::Arc<crate::auth::Security>>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/state", get(state))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/vars.json", get(crate::metrics::vars))
        .route(
            "/maintenance/schedule",
            get(crate::maintenance::get_schedule).post(crate::maintenance::post_schedule),
        )
        .route("/maintenance/status", get(crate::maintenance::get_status))
        .route(
            "/machine/down",
            axum::routing::post(crate::maintenance::post_down),
        )
        .route(
            "/machine/up",
            axum::routing::post(crate::maintenance::post_up),
        )
        .route(
            "/api/v1/scheduler",
            axum::routing::post(crate::mesos::scheduler::scheduler),
        )
        .route(
            "/api/v1",
            axum::routing::post(crate::mesos::operator::operator),
        )
        .route("/master/state", get(crate::mesos::operator::master_state))
        .route("/state.json", get(crate::mesos::operator::master_state))
        .route(
            "/master/state.json",
            get(crate::mesos::operator::master_state),
        )
        .route("/version", get(crate::mesos::operator::version))
        .merge(crate::ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            security,
            crate::auth::http_guard,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::api_latency))
        .with_state(admin)
}

async fn health(State(a): State<Admin>) -> Response {
    if let Some(e) = a.log.stopped() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the replica's log stopped: {e}\n"),
        )
            .into_response();
    }
    if let Some(why) = a.log.unavailable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the log's store ({}) is unavailable: {why}\n",
                a.log.store()
            ),
        )
            .into_response();
    }
    let leader = a.log.leader();
    if leader.leader_id.is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is unavailable: no leader is known (an election is under way or a quorum is missing)\n",
        )
            .into_response();
    }
    if leader.is_leader {
        // The leader is healthy once it serves: its LeaderElected is
        // committed and its copy of the state is complete.
        match a.master.send(Serving).await {
            Ok(Ok(_)) => {
                if let Ok(Some(why)) = a.master.send(orrery_actors::master::RemovalsHeld).await {
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
                }
            }
            Ok(Err(e)) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("recovering: {e}\n"),
                )
                    .into_response()
            }
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the master actor is not running: {e}\n"),
                )
                    .into_response()
            }
        }
    }
    (StatusCode::OK, "OK\n").into_response()
}

/// The leader's HTTP admin address, when the log names the leader this
/// replica knows and it serves HTTP (followers redirect there).
pub fn leader_http_addr(a: &Admin) -> Option<String> {
    let info = a.log.leader();
    a.log.with_state(|m| {
        m.cluster
            .leader
            .as_ref()
            .filter(|l| Some(l.leader_id) == info.leader_id && !l.http_addr.is_empty())
            .map(|l| l.http_addr.clone())
    })
}

async fn state(State(a): State<Admin>) -> Response {
    match a.master.send(Serving).await {
        Ok(Ok(_)) => {
            let mut s = a.log.with_state(|m| views::state(&m.cluster));
            s.commit_index = a.log.last_applied();
            axum::Json(state_json(&s)).into_response()
        }
        Ok(Err(orrery_actors::master::MasterError::NotLeader { .. })) => {
            let target = leader_http_addr(&a);
            match target {
                Some(http) => (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("http://{http}/state"))],
                    format!("the leader serves /state at http://{http}/state\n"),
                )
                    .into_response(),
                None => {
                    (StatusCode::SERVICE_UNAVAILABLE, "no leader is known yet\n").into_response()
                }
            }
        }
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the master actor is not running: {e}\n"),
        )
            .into_response(),
    }
}

fn resources_json(r: &Option<pb::Resources>) -> Value {
    let r = r.clone().unwrap_or_default();
    json!({
        "cpus": r.cpus_milli as f64 / 1000.0,
        "mem_mb": r.mem_mb,
        "disk_mb": r.disk_mb,
        "ports": r.ports.iter().map(|p| format!("{}-{}", p.begin, p.end)).collect::<Vec<_>>(),
    })
}

fn task_state_name(v: i32) -> String {
    pb::TaskState::try_from(v)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| v.to_string())
}

/// The JSON form of the operator's view.
pub fn state_json(s: &op::State) -> Value {
    json!({
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "commit_index": s.commit_index,
        "agents": s.agents.iter().map(|a| json!({
            "id": a.agent_id,
            "hostname": a.hostname,
            "ip": a.ip,
            "state": a.state,
            "resources": resources_json(&a.total),
            "used": resources_json(&a.used),
            "offered": resources_json(&a.offered),
            "domain": a.domain.as_ref().map(|d| json!({"region": d.region, "zone": d.zone})),
            "attributes": a.attributes.iter().map(|x| (x.name.clone(), Value::from(x.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "tasks": a.tasks,
        })).collect::<Vec<_>>(),
        "frameworks": s.frameworks.iter().map(|f| json!({
            "id": f.framework_id,
            "name": f.name,
            "role": f.role,
            "connected": f.connected,
            "suppressed": f.suppressed,
            "removed": f.removed,
            "allocated": resources_json(&f.allocated),
        })).collect::<Vec<_>>(),
        "tasks": s.tasks.iter().map(|t| json!({
            "framework_id": t.framework_id,
            "id": t.task_id,
            "name": t.name,
            "agent_id": t.agent_id,
            "hostname": t.hostname,
            "state": task_state_name(t.state),
            "resources": resources_json(&t.resources),
            "message": t.message,
        })).collect::<Vec<_>>(),
    })
}
