//! Mesos' maintenance endpoints on the master's HTTP admin port, with
//! Mesos' JSON, so that operators' tools (and Peloton) can post to Orrery:
//!
//! - `POST /maintenance/schedule`, `GET /maintenance/schedule`:
//!   `{"windows":[{"machine_ids":[{"hostname":"h1","ip":"10.0.0.1"}],
//!   "unavailability":{"start":{"nanoseconds":N},"duration":{"nanoseconds":N}}}]}`
//!   (posting replaces the whole schedule);
//! - `GET /maintenance/status`: `{"draining_machines":[{"id":{...},
//!   "statuses":[{"framework_id":{"value":..},"agent_id":{..},"status":
//!   "UNKNOWN|ACCEPT|DECLINE","timestamp":{..}}]}],"down_machines":[{...}]}`
//!   (the statuses are the frameworks' answers to inverse offers);
//! - `POST /machine/down`, `POST /machine/up`: a JSON list of machine ids.
//!
//! Malformed JSON is refused with 400 and the path of the bad field; a
//! refused change answers with its rejection (400, 404 or 409) and changes
//! nothing. Followers redirect (307) to the leader.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use orrery_actors::master::{MasterError, Serving, Submit};
use orrery_events::command::Command;
use orrery_events::state::{HostState, MachineId, Unavailability, Window};
use orrery_events::RejectionClass;
use orrery_storage::StateAccess;
use serde_json::{json, Value};

use crate::http::Admin;

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

fn machine(v: &Value, at: &str) -> Result<MachineId, String> {
    let field = |name: &str| match v.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{at}.{name} is not a string")),
    };
    if !v.is_object() {
        return Err(format!("{at} is not an object with hostname and ip"));
    }
    Ok(MachineId {
        hostname: field("hostname")?,
        ip: field("ip")?,
    })
}

fn nanos(v: &Value, at: &str) -> Result<Option<u64>, String> {
    match v.get("nanoseconds") {
        None if v.is_null() => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{at}.nanoseconds is not a non-negative integer")),
        None => Err(format!("{at}.nanoseconds is missing")),
    }
}

/// Mesos' schedule JSON to windows.
pub fn parse_schedule(body: &[u8]) -> Result<Vec<Window>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let windows = v
        .get("windows")
        .and_then(Value::as_array)
        .ok_or("the body needs \"windows\": a list")?;
    let mut out = Vec::with_capacity(windows.len());
    for (i, w) in windows.iter().enumerate() {
        let at = format!("windows[{i}]");
        let ids = w
            .get("machine_ids")
            .and_then(Value::as_array)
            .ok_or(format!("{at}.machine_ids is missing or not a list"))?;
        let machines = ids
            .iter()
            .enumerate()
            .map(|(j, m)| machine(m, &format!("{at}.machine_ids[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let u = w
            .get("unavailability")
            .ok_or(format!("{at}.unavailability is missing"))?;
        let start = nanos(
            u.get("start").unwrap_or(&Value::Null),
            &format!("{at}.unavailability.start"),
        )?
        .ok_or(format!("{at}.unavailability.start is missing"))?;
        let duration = match u.get("duration") {
            None | Some(Value::Null) => None,
            Some(d) => nanos(d, &format!("{at}.unavailability.duration"))?,
        };
        out.push(Window {
            machines,
            unavailability: Unavailability {
                start_ns: start,
                duration_ns: duration,
            },
        });
    }
    Ok(out)
}

fn machines_json(v: &[MachineId]) -> Value {
    Value::from(
        v.iter()
            .map(|m| json!({"hostname": m.hostname, "ip": m.ip}))
            .collect::<Vec<_>>(),
    )
}

pub fn schedule_json(windows: &[Window]) -> Value {
    json!({
        "windows": windows.iter().map(|w| {
            let mut u = json!({"start": {"nanoseconds": w.unavailability.start_ns}});
            if let Some(d) = w.unavailability.duration_ns {
                u["duration"] = json!({"nanoseconds": d});
            }
            json!({"machine_ids": machines_json(&w.machines), "unavailability": u})
        }).collect::<Vec<_>>()
    })
}

pub fn parse_machines(body: &[u8]) -> Result<Vec<MachineId>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let list = v
        .as_array()
        .ok_or("the body must be a JSON list of machine ids")?;
    list.iter()
        .enumerate()
        .map(|(i, m)| machine(m, &format!("[{i}]")))
        .collect()
}

/// Serving, or the answer that says where to go instead.
async fn lead(a: &Admin, path: &str) -> Result<(), Response> {
    match a.master.send(Serving).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(MasterError::NotLeader { .. })) => {
            let target = crate::http::leader_http_addr(a);
            Err(match target {
                Some(h) => (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("http://{h}{path}"))],
                    format!("the leader serves this at http://{h}{path}\n"),
                )
                    .into_response(),
                None => {
                    (StatusCode::SERVICE_UNAVAILABLE, "no leader is known yet\n").into_response()
                }
            })
        }
        Ok(Err(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()),
    }
}

pub async fn submit(a: &Admin, command: Command) -> Response {
    match a
        .master
        .send(Submit {
            command,
            want_events: false,
            origin: orrery_actors::telemetry::origin(),
        })
        .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "").into_response(),
        Ok(Err(MasterError::Rejected(r))) => {
            let code = match r.class() {
                RejectionClass::Invalid => StatusCode::BAD_REQUEST,
                RejectionClass::NotFound => StatusCode::NOT_FOUND,
                RejectionClass::Precondition => StatusCode::CONFLICT,
            };
            (code, format!("{r}\n")).into_response()
        }
        Ok(Err(e @ MasterError::Overloaded { .. })) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, crate::mesos::RETRY_AFTER_SECS)],
            format!("{e}\n"),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

pub async fn post_schedule(State(a): State<Admin>, uri: Uri, body: Bytes) -> Response {
    if let Err(r) = lead(&a, uri.path()).await {
        return r;
    }
    match parse_schedule(&body) {
        Ok(windows) => submit(&a, Command::UpdateSchedule { windows }).await,
        Err(e) => bad(e),
    }
}

pub async fn get_schedule(State(a): State<Admin>, uri: Uri) -> Response {
    if let Err(r) = lead(&a, uri.path()).await {
        return r;
    }
    let v = a.log.with_state(|m| schedule_json(&m.cluster.schedule));
    axum::Json(v).into_response()
}

pub async fn get_status(State(a): State<Admin>, uri: Uri) -> Response {
    if let Err(r) = lead(&a, uri.path()).await {
        return r;
    }
    let v = a.log.with_state(|m| status_json(&m.cluster));
    axum::Json(v).into_response()
}

/// Mesos' maintenance status: each draining machine with the frameworks'
/// answers to its inverse offers, and the machines that are down.
pub fn status_json(c: &orrery_events::Cluster) -> Value {
    let hosts = c.hosts.values();
    let draining: Vec<Value> = hosts
        .clone()
        .filter(|h| matches!(h.state, HostState::Draining | HostState::Drained))
        .map(|h| {
            // Mesos: each framework's answer to the inverse offers.
            let statuses: Vec<Value> = c
                .inverse_offers
                .values()
                .filter(|o| o.hostname == h.machine.hostname)
                .map(|o| {
                    json!({
                        "framework_id": {"value": o.framework_id.0},
                        "agent_id": {"value": o.agent_id.0},
                        "status": o.answer.as_str(),
                        "timestamp": {"nanoseconds": o.answered_at_ms.saturating_mul(1_000_000)},
                    })
                })
                .collect();
            json!({"id": {"hostname": h.machine.hostname, "ip": h.machine.ip}, "statuses": statuses})
        })
        .collect();
    let down: Vec<Value> = hosts
        .filter(|h| h.state == HostState::Down)
        .map(|h| json!({"hostname": h.machine.hostname, "ip": h.machine.ip}))
        .collect();
    json!({"draining_machines": draining, "down_machines": down})
}

pub async fn post_down(State(a): State<Admin>, uri: Uri, body: Bytes) -> Response {
    if let Err(r) = lead(&a, uri.path()).await {
        return r;
    }
    match parse_machines(&body) {
        Ok(machines) => submit(&a, Command::MarkMachinesDown { machines }).await,
        Err(e) => bad(e),
    }
}

pub async fn post_up(State(a): State<Admin>, uri: Uri, body: Bytes) -> Response {
    if let Err(r) = lead(&a, uri.path()).await {
        return r;
    }
    match parse_machines(&body) {
        Ok(machines) => {
            let hostnames = machines.into_iter().map(|m| m.hostname).collect();
            submit(&a, Command::CompleteMaintenance { hostnames }).await
        }
        Err(e) => bad(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesos_schedules_round_trip_and_bad_ones_name_the_field() {
        let body = br#"{"windows":[{"machine_ids":[{"hostname":"h1","ip":"10.0.0.1"}],
            "unavailability":{"start":{"nanoseconds":5},"duration":{"nanoseconds":7}}},
            {"machine_ids":[{"hostname":"h2"}],"unavailability":{"start":{"nanoseconds":9}}}]}"#;
        let w = parse_schedule(body).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].unavailability.duration_ns, Some(7));
        assert_eq!(
            w[1].unavailability.duration_ns, None,
            "no duration: unbounded"
        );
        assert_eq!(
            parse_schedule(schedule_json(&w).to_string().as_bytes()).unwrap(),
            w
        );
        let e = parse_schedule(
            br#"{"windows":[{"machine_ids":[],"unavailability":{"start":{"nanoseconds":-1}}}]}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("windows[0].unavailability.start.nanoseconds"),
            "{e}"
        );
        assert!(parse_schedule(b"{").unwrap_err().contains("not JSON"));
        assert!(parse_schedule(br#"{"windows":[{"machine_ids":[1]}]}"#)
            .unwrap_err()
            .contains("machine_ids[0]"));
        assert!(parse_machines(br#"{"hostname":"h1"}"#)
            .unwrap_err()
            .contains("list"));
    }
}
