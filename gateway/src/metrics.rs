//! `/metrics` (Prometheus text) and `/vars.json` (Aurora's flat map) on a
//! master's HTTP admin port, and the gRPC latency layer.
//!
//! Why `metrics-exporter-prometheus`: it is the exporter of the `metrics`
//! facade the actors record through, renders the text format Prometheus
//! and `promtool` accept, and needs no listener of its own (its HTTP
//! feature is off; axum serves `render()`). One recorder per process,
//! installed on first use.
//!
//! Gauges are set from the committed state at scrape time, so a scrape
//! never reports a projection the log has not committed, and an idle
//! master does no periodic work for them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use orrery_actors::telemetry as t;
use orrery_events::state::{AgentState, HostState};
use orrery_storage::{EventLog, StateAccess};

use crate::http::Admin;

/// The process's recorder (see `orrery_actors::telemetry::prometheus`).
pub fn handle() -> Option<&'static PrometheusHandle> {
    t::prometheus()
}

/// `/metrics` and `/vars.json` when no recorder could be installed.
fn no_recorder() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "another metrics recorder is installed in this process\n",
    )
        .into_response()
}

/// The size of a directory tree in bytes (files only).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Sets every gauge from the replica's committed state.
fn set_gauges(a: &Admin) {
    let leader = a.log.leader();
    metrics::gauge!(t::IS_LEADER).set(if leader.is_leader { 1.0 } else { 0.0 });
    metrics::gauge!(t::RAFT_TERM).set(leader.term as f64);
    metrics::gauge!(t::COMMIT_INDEX).set(a.log.last_applied() as f64);
    if let Some(dir) = a.log.data_dir() {
        metrics::gauge!(t::LOG_SIZE).set(dir_bytes(&dir) as f64);
    }
    a.log.with_state(|m| {
        let c = &m.cluster;
        for state in [
            AgentState::Registered,
            AgentState::Disconnected,
            AgentState::Unreachable,
            AgentState::Gone,
        ] {
            let n = c.agents.values().filter(|x| x.state == state).count();
            metrics::gauge!(t::AGENTS, "state" => state.as_str()).set(n as f64);
        }
        let mut tasks: BTreeMap<&'static str, u64> = BTreeMap::new();
        for task in c.tasks.values() {
            *tasks.entry(task.state.as_str_name()).or_default() += 1;
        }
        for state in [
            orrery_events::pb::TaskState::TaskStaging,
            orrery_events::pb::TaskState::TaskRunning,
        ] {
            tasks.entry(state.as_str_name()).or_default();
        }
        for (state, n) in tasks {
            metrics::gauge!(t::TASKS, "state" => state).set(n as f64);
        }
        for state in [
            HostState::Up,
            HostState::Draining,
            HostState::Drained,
            HostState::Down,
        ] {
            let n = c.hosts.values().filter(|h| h.state == state).count();
            metrics::gauge!(t::HOSTS, "state" => state.as_str()).set(n as f64);
        }
        let fws = c.frameworks.values().filter(|f| !f.removed).count();
        metrics::gauge!(t::FRAMEWORKS).set(fws as f64);
    });
}

pub async fn metrics(State(a): State<Admin>) -> Response {
    let Some(h) = handle() else {
        return no_recorder();
    };
    set_gauges(&a);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}

pub async fn vars(State(a): State<Admin>) -> Response {
    let Some(h) = handle() else {
        return no_recorder();
    };
    set_gauges(&a);
    axum::Json(t::flatten(&h.render())).into_response()
}

/// The header that carries a request id in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's request id when it is sane (1 to 128 printable ASCII
/// characters), else a fresh one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The header (gRPC metadata) that makes a call idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The caller's idempotency key: none, or 1 to 128 printable ASCII
/// characters (anything else is refused, naming the header).
fn idempotency_key(req: &Request) -> Result<String, String> {
    let Some(v) = req.headers().get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(String::new());
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(k.to_owned())
        }
        _ => Err(format!(
            "the {IDEMPOTENCY_KEY_HEADER} header must be 1 to 128 printable ASCII characters"
        )),
    }
}

/// Around every gRPC call and HTTP admin request: a request id (the
/// caller's `x-request-id`, or a new one; returned in the response's
/// `x-request-id`) carried into the commands the handler submits (and so
/// into the log's envelopes) and into its log lines, and the call's
/// latency by method (`Service/Method`).
pub async fn api_latency(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(message) => {
            let grpc = req
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            return if grpc {
                tonic::Status::invalid_argument(message).into_http()
            } else {
                (axum::http::StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
            };
        }
    };
    let method = req
        .uri()
        .path()
        .rsplit('/')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|s| s.rsplit('.').next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join("/");
    let span = tracing::info_span!("request", request_id = %id, method = %method);
    let mut response = t::REQUEST_ID
        .scope(
            id.clone(),
            t::IDEMPOTENCY_KEY.scope(key, tracing::Instrument::instrument(next.run(req), span)),
        )
        .await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    metrics::histogram!(t::API_LATENCY, "method" => method, "outcome" => outcome(&response))
        .record(started.elapsed().as_secs_f64());
    response
}

/// `shed` for a call refused because the master is overloaded (gRPC
/// RESOURCE_EXHAUSTED in the headers, or HTTP 429), else `answered` (a
/// unary gRPC call's own status comes in its trailers, after this).
fn outcome(response: &Response) -> &'static str {
    let grpc_exhausted = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| tonic::Code::from_bytes(v.as_bytes()) == tonic::Code::ResourceExhausted);
    if grpc_exhausted || response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
        "shed"
    } else {
        "answered"
    }
}
