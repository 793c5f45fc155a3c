//! `POST /api/v1/scheduler`: Mesos' v1 HTTP scheduler API over the same
//! master actor as the gRPC `Scheduler` service.
//!
//! The HTTP layer translates and the core decides: a Mesos `Call` becomes
//! the `sp::call::Call` the gRPC front sends (`FrameworkCall`), a SUBSCRIBE
//! becomes `SubscribeFramework`, and the framework's event stream is the
//! same stream of `sp::Event`s, written as RecordIO records of Mesos JSON.
//!
//! Mesos' answers, as its `master/http.cpp` gives them:
//! - SUBSCRIBE: 200, chunked, `Mesos-Stream-Id`, a SUBSCRIBED record first;
//!   every other call: 202 Accepted and no body.
//! - A follower: 307 with `Location: //LEADER/api/v1/scheduler`; no leader
//!   known: 503.
//! - A body that is not a valid `Call`: 400 naming the field; no
//!   `Content-Type`: 400; a media type other than JSON: 415 (Orrery speaks
//!   JSON only); SUBSCRIBE whose `Accept` excludes JSON: 406.
//! - A call for a framework the master does not know, or that is not
//!   subscribed: 403; a call without `Mesos-Stream-Id`, or with another
//!   stream's id (a failed-over scheduler instance): 400, as Mesos does.
//! - An ACCEPT the core refuses: 202, then an UPDATE per task on the stream
//!   (TASK_ERROR / REASON_TASK_INVALID for a bad task, else TASK_DROPPED —
//!   TASK_LOST without PARTITION_AWARE — / REASON_INVALID_OFFERS), and the
//!   offers are declined so their resources return, as Mesos does. These
//!   updates carry no uuid: there is nothing to acknowledge.
//! - Other refusals: 400 (invalid), 404 (unknown task or offer), 409 (a
//!   precondition), each with the refusal's message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use orrery_actors::framework_session::{self, EventTx};
use orrery_actors::master::{FrameworkCall, MasterError, SubscribeFramework};
use orrery_events::command::FrameworkSubscription;
use orrery_events::pb;
use orrery_events::{FrameworkId, RejectionClass};
use orrery_proto::scheduler as sp;
use orrery_storage::StateAccess;
use serde_json::Value;
use tokio_stream::StreamExt as _;

use super::json::{self as mj, array, obj, opt, req, req_id, req_string};
use super::{media_type_error, not_serving, status, Failure};
use crate::auth::Caller;
use crate::http::Admin;

/// The HTTP frameworks' streams, for the updates this front itself sends
/// (refused launches). Weak: a stream ends when its session lets go.
#[derive(Clone, Debug, Default)]
pub struct Streams(Arc<Mutex<HashMap<String, Stream>>>);

#[derive(Debug)]
struct Stream {
    stream_id: String,
    tx: tokio::sync::mpsc::WeakSender<Result<sp::Event, tonic::Status>>,
}

impl Streams {
    fn insert(&self, framework_id: &str, stream_id: &str, tx: &EventTx) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the live streams: forget the ended ones.
        m.retain(|_, s| s.tx.strong_count() > 0);
        m.insert(
            framework_id.to_owned(),
            Stream {
                stream_id: stream_id.to_owned(),
                tx: tx.downgrade(),
            },
        );
    }

    fn send(&self, framework_id: &str, stream_id: &str, events: Vec<sp::Event>) {
        let tx = {
            let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            m.get(framework_id)
                .filter(|s| s.stream_id == stream_id)
                .and_then(|s| s.tx.upgrade())
        };
        if let Some(tx) = tx {
            for e in events {
                if tx.try_send(Ok(e)).is_err() {
                    break;
                }
            }
        }
    }
}

pub async fn scheduler(
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
    not_serving(a, "/api/v1/scheduler").await?;
    if kind == "SUBSCRIBE" {
        return subscribe(a, caller, headers, &call).await;
    }
    let framework_id = opt(&call, "framework_id")
        .ok_or_else(|| Failure::bad("Expecting 'framework_id' to be present"))
        .and_then(|v| mj::id(v, "framework_id").map_err(Failure::bad))?;
    let inner = translate(&kind, &call)?;
    let known = a.log.with_state(|m| {
        m.cluster
            .frameworks
            .get(&FrameworkId::new(framework_id.clone()))
            .map(|f| {
                (
                    f.connected && !f.removed,
                    f.principal.clone(),
                    f.partition_aware,
                )
            })
    });
    let Some((connected, principal, partition_aware)) = known else {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Framework cannot be found",
        ));
    };
    if !connected {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Framework is not subscribed",
        ));
    }
    let stream_id = headers
        .get("mesos-stream-id")
        .ok_or_else(|| {
            Failure::bad("All non-subscribe calls should include the 'Mesos-Stream-Id' header")
        })?
        .to_str()
        .map_err(|_| Failure::bad("the 'Mesos-Stream-Id' header is not text"))?
        .to_owned();
    caller
        .framework_owner(&framework_id, &principal)
        .map_err(|s| Failure::new(StatusCode::FORBIDDEN, s.message()))?;
    let answer = a
        .master
        .send(FrameworkCall {
            framework_id: FrameworkId::new(framework_id.clone()),
            stream_id: stream_id.clone(),
            call: inner.clone(),
            origin: orrery_actors::telemetry::origin(),
        })
        .await
        .map_err(|e| Failure::unavailable(format!("the master actor is not running: {e}")))?;
    match answer {
        Ok(_) => Ok(StatusCode::ACCEPTED.into_response()),
        Err(MasterError::StaleStream { .. }) => Err(Failure::bad(format!(
            "The stream ID '{stream_id}' included in this request didn't match the stream ID currently associated with framework ID {framework_id}"
        ))),
        Err(MasterError::Rejected(r)) => match inner {
            sp::call::Call::Accept(accept) => {
                refused_launches(a, &framework_id, &stream_id, accept, &r, partition_aware).await;
                Ok(StatusCode::ACCEPTED.into_response())
            }
            _ => Err(Failure::new(
                match r.class() {
                    RejectionClass::Invalid => StatusCode::BAD_REQUEST,
                    RejectionClass::NotFound => StatusCode::NOT_FOUND,
                    RejectionClass::Precondition => StatusCode::CONFLICT,
                },
                r.to_string(),
            )),
        },
        Err(e) => Err(status(e, a, "/api/v1/scheduler")),
    }
}

/// Mesos' way of refusing a launch: an update per task, and the offers'
/// resources back.
async fn refused_launches(
    a: &Admin,
    framework_id: &str,
    stream_id: &str,
    accept: sp::Accept,
    why: &orrery_events::Rejection,
    partition_aware: bool,
) {
    use orrery_events::Rejection as R;
    let task_level = matches!(
        why,
        R::InvalidTask { .. } | R::DuplicateTaskId { .. } | R::ResourcesExceedOffer { .. }
    ) || matches!(why, R::InvalidField { field, .. } if field.starts_with("task"));
    let (state, reason) = if task_level {
        (pb::TaskState::TaskError, pb::TaskReason::ReasonTaskInvalid)
    } else if partition_aware {
        (
            pb::TaskState::TaskDropped,
            pb::TaskReason::ReasonInvalidOffers,
        )
    } else {
        (pb::TaskState::TaskLost, pb::TaskReason::ReasonInvalidOffers)
    };
    let updates = accept
        .launches
        .iter()
        .map(|t| sp::Event {
            event: Some(sp::event::Event::Update(sp::Update {
                status: Some(sp::TaskStatus {
                    task_id: t.task_id.clone(),
                    state: state as i32,
                    reason: reason as i32,
                    message: format!("Task launch refused: {why}"),
                    source: pb::StatusSource::SourceMaster as i32,
                    ..Default::default()
                }),
            })),
        })
        .collect();
    a.mesos.send(framework_id, stream_id, updates);
    // The resources go back to the pool (an unknown offer stays refused).
    let _ = a
        .master
        .send(FrameworkCall {
            framework_id: FrameworkId::new(framework_id.to_owned()),
            stream_id: stream_id.to_owned(),
            call: sp::call::Call::Decline(sp::Decline {
                offer_ids: accept.offer_ids,
                filters: accept.filters,
            }),
            origin: orrery_actors::telemetry::origin(),
        })
        .await;
}

fn filters(v: &Value, path: &str) -> Result<Option<sp::Filters>, Failure> {
    let Some(f) = opt(v, "filters") else {
        return Ok(None);
    };
    let p = mj::at(path, "filters");
    obj(f, &p).map_err(Failure::bad)?;
    let refuse_seconds = opt(f, "refuse_seconds")
        .map(|x| mj::number(x, &mj::at(&p, "refuse_seconds")))
        .transpose()
        .map_err(Failure::bad)?;
    Ok(Some(sp::Filters { refuse_seconds }))
}

fn ids(v: &Value, path: &str, field: &str) -> Result<Vec<String>, Failure> {
    array(v, path, field)
        .map_err(Failure::bad)?
        .iter()
        .enumerate()
        .map(|(i, x)| mj::id(x, &format!("{}[{i}]", mj::at(path, field))).map_err(Failure::bad))
        .collect()
}

/// The call's own object (`"accept": {...}`), which Mesos requires for
/// the calls that carry arguments.
fn part<'v>(call: &'v Value, field: &str, kind: &str) -> Result<&'v Value, Failure> {
    opt(call, field).ok_or_else(|| {
        Failure::bad(format!(
            "Expecting '{field}' to be present for a {kind} call"
        ))
    })
}

/// A Mesos call (other than SUBSCRIBE) as the gRPC front's call.
pub fn translate(kind: &str, call: &Value) -> Result<sp::call::Call, Failure> {
    use sp::call::Call as C;
    Ok(match kind {
        "ACCEPT" => {
            let v = part(call, "accept", kind)?;
            let offer_ids = ids(v, "accept", "offer_ids")?;
            let mut launches = Vec::new();
            for (i, op) in array(v, "accept", "operations")
                .map_err(Failure::bad)?
                .iter()
                .enumerate()
            {
                let p = format!("accept.operations[{i}]");
                let t = req_string(op, &p, "type").map_err(Failure::bad)?;
                match t.as_str() {
                    "LAUNCH" => {
                        let l = req(op, &p, "launch").map_err(Failure::bad)?;
                        let lp = mj::at(&p, "launch");
                        for (j, ti) in array(l, &lp, "task_infos")
                            .map_err(Failure::bad)?
                            .iter()
                            .enumerate()
                        {
                            launches.push(task_info(ti, &format!("{lp}.task_infos[{j}]"))?);
                        }
                    }
                    other => {
                        return Err(Failure::new(
                            StatusCode::NOT_IMPLEMENTED,
                            format!("{p}.type: the {other} operation is not supported by Orrery (LAUNCH is)"),
                        ))
                    }
                }
            }
            C::Accept(sp::Accept {
                offer_ids,
                launches,
                filters: filters(v, "accept")?,
            })
        }
        "DECLINE" => {
            let v = part(call, "decline", kind)?;
            C::Decline(sp::Decline {
                offer_ids: ids(v, "decline", "offer_ids")?,
                filters: filters(v, "decline")?,
            })
        }
        "REVIVE" => C::Revive(sp::Revive {}),
        "SUPPRESS" => C::Suppress(sp::Suppress {}),
        "KILL" => {
            let v = part(call, "kill", kind)?;
            C::Kill(sp::Kill {
                task_id: req_id(v, "kill", "task_id").map_err(Failure::bad)?,
            })
        }
        "ACKNOWLEDGE" => {
            let v = part(call, "acknowledge", kind)?;
            req_id(v, "acknowledge", "agent_id").map_err(Failure::bad)?;
            C::Acknowledge(sp::Acknowledge {
                task_id: req_id(v, "acknowledge", "task_id").map_err(Failure::bad)?,
                uuid: mj::parse_uuid(
                    req(v, "acknowledge", "uuid").map_err(Failure::bad)?,
                    "acknowledge.uuid",
                )
                .map_err(Failure::bad)?,
            })
        }
        "RECONCILE" => {
            let v = opt(call, "reconcile").cloned().unwrap_or(Value::Null);
            let mut task_ids = Vec::new();
            for (i, t) in array(&v, "reconcile", "tasks")
                .map_err(Failure::bad)?
                .iter()
                .enumerate()
            {
                task_ids.push(
                    req_id(t, &format!("reconcile.tasks[{i}]"), "task_id").map_err(Failure::bad)?,
                );
            }
            C::Reconcile(sp::Reconcile { task_ids })
        }
        "TEARDOWN" => C::Teardown(sp::Teardown {}),
        "ACCEPT_INVERSE_OFFERS" => {
            let v = part(call, "accept_inverse_offers", kind)?;
            C::AcceptInverseOffers(sp::AcceptInverseOffers {
                inverse_offer_ids: ids(v, "accept_inverse_offers", "inverse_offer_ids")?,
            })
        }
        "DECLINE_INVERSE_OFFERS" => {
            let v = part(call, "decline_inverse_offers", kind)?;
            C::DeclineInverseOffers(sp::DeclineInverseOffers {
                inverse_offer_ids: ids(v, "decline_inverse_offers", "inverse_offer_ids")?,
            })
        }
        "MESSAGE"
        | "REQUEST"
        | "SHUTDOWN"
        | "UPDATE_FRAMEWORK"
        | "ACKNOWLEDGE_OPERATION_STATUS"
        | "RECONCILE_OPERATIONS" => {
            return Err(Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("the {kind} call is not supported by Orrery"),
            ))
        }
        other => {
            return Err(Failure::bad(format!(
                "Failed to validate scheduler::Call: unknown call type {other:?}"
            )))
        }
    })
}

/// Mesos' `TaskInfo` (command tasks: no custom executor or container).
fn task_info(v: &Value, p: &str) -> Result<sp::TaskInfo, Failure> {
    let f = Failure::bad;
    obj(v, p).map_err(f)?;
    let name = req_string(v, p, "name").map_err(f)?;
    let task_id = req_id(v, p, "task_id").map_err(f)?;
    req_id(v, p, "agent_id").map_err(f)?;
    for unsupported in ["executor", "container", "discovery", "check", "kill_policy"] {
        if opt(v, unsupported).is_some() {
            return Err(Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("{p}.{unsupported} is not supported by Orrery (command tasks only)"),
            ));
        }
    }
    let resources = mj::parse_resources(
        array(v, p, "resources").map_err(f)?,
        &mj::at(p, "resources"),
    )
    .map_err(f)?;
    let cp = mj::at(p, "command");
    let c = req(v, p, "command").map_err(|_| {
        Failure::bad(format!("{p}: Task should have at least one (but not both) of CommandInfo or ExecutorInfo present"))
    })?;
    let shell = mj::boolean(c, &cp, "shell").map_err(f)?.unwrap_or(true);
    let value = mj::opt_string(c, &cp, "value")
        .map_err(f)?
        .unwrap_or_default();
    let arguments: Vec<String> = array(c, &cp, "arguments")
        .map_err(f)?
        .iter()
        .enumerate()
        .map(|(i, x)| mj::string(x, &format!("{cp}.arguments[{i}]")))
        .collect::<Result<_, _>>()
        .map_err(f)?;
    if !array(c, &cp, "uris").map_err(f)?.is_empty() {
        return Err(Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{cp}.uris: fetching URIs is not supported by Orrery"),
        ));
    }
    let mut environment = Vec::new();
    if let Some(env) = opt(c, "environment") {
        let ep = mj::at(&cp, "environment");
        for (i, x) in array(env, &ep, "variables").map_err(f)?.iter().enumerate() {
            let xp = format!("{ep}.variables[{i}]");
            environment.push(pb::EnvironmentVariable {
                name: req_string(x, &xp, "name").map_err(f)?,
                value: mj::opt_string(x, &xp, "value")
                    .map_err(f)?
                    .unwrap_or_default(),
            });
        }
    }
    let command = if shell {
        if value.is_empty() {
            return Err(Failure::bad(format!(
                "{cp}.value: a shell command is empty"
            )));
        }
        pb::CommandInfo {
            shell: value,
            argv: Vec::new(),
            environment,
        }
    } else {
        // Mesos: `value` is the program, `arguments` its argv (argv[0]
        // included).
        let argv = if arguments.is_empty() {
            vec![value]
        } else {
            arguments
        };
        pb::CommandInfo {
            shell: String::new(),
            argv,
            environment,
        }
    };
    Ok(sp::TaskInfo {
        task_id,
        name,
        resources: Some(resources.to_proto()),
        command: Some(command),
    })
}

/// `subscribe.framework_info` as Orrery's subscription.
fn subscription(call: &Value, caller: &Caller) -> Result<(FrameworkSubscription, String), Failure> {
    let f = Failure::bad;
    let s = part(call, "subscribe", "SUBSCRIBE")?;
    let info = req(s, "subscribe", "framework_info").map_err(f)?;
    let p = "subscribe.framework_info";
    obj(info, p).map_err(f)?;
    let name = req_string(info, p, "name").map_err(f)?;
    req_string(info, p, "user").map_err(f)?;
    let id = mj::opt_id(info, p, "id").map_err(f)?;
    let top = mj::opt_id(call, "", "framework_id").map_err(f)?;
    if let (Some(a), Some(b)) = (&id, &top) {
        if a != b {
            return Err(f(format!(
                "'framework_id' differs from 'subscribe.framework_info.id' ({b} vs {a})"
            )));
        }
    }
    let roles: Vec<String> = array(info, p, "roles")
        .map_err(f)?
        .iter()
        .enumerate()
        .map(|(i, r)| mj::string(r, &format!("{p}.roles[{i}]")))
        .collect::<Result<_, _>>()
        .map_err(f)?;
    let role = match (roles.as_slice(), mj::opt_string(info, p, "role").map_err(f)?) {
        ([], None) => "*".to_owned(),
        ([], Some(r)) => r,
        ([one], _) => one.clone(),
        _ => {
            return Err(Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("{p}.roles: a framework in more than one role (MULTI_ROLE) is not supported by Orrery"),
            ))
        }
    };
    let mut region_aware = false;
    let mut partition_aware = false;
    for (i, c) in array(info, p, "capabilities")
        .map_err(f)?
        .iter()
        .enumerate()
    {
        let t = req_string(c, &format!("{p}.capabilities[{i}]"), "type").map_err(f)?;
        match t.as_str() {
            "REGION_AWARE" => region_aware = true,
            "PARTITION_AWARE" => partition_aware = true,
            // Known to Mesos; nothing in Orrery depends on them.
            "GPU_RESOURCES"
            | "MULTI_ROLE"
            | "REVOCABLE_RESOURCES"
            | "TASK_KILLING_STATE"
            | "SHARED_RESOURCES"
            | "RESERVATION_REFINEMENT"
            | "AGENT_OPERATION_FEEDBACK" => {}
            other => {
                return Err(f(format!(
                    "{p}.capabilities[{i}].type: {other:?} is not a Mesos framework capability"
                )))
            }
        }
    }
    let failover_timeout_ms = match opt(info, "failover_timeout") {
        None => 0,
        Some(x) => {
            let s = mj::number(x, &format!("{p}.failover_timeout")).map_err(f)?;
            if !(0.0..=365.0 * 86_400.0).contains(&s) {
                return Err(f(format!(
                    "{p}.failover_timeout: {s} is negative or above a year"
                )));
            }
            (s * 1000.0) as u64
        }
    };
    let given = mj::opt_string(info, p, "principal")
        .map_err(f)?
        .unwrap_or_default();
    let principal = caller
        .framework_principal(&given, &role)
        .map_err(|s| Failure::new(StatusCode::FORBIDDEN, s.message()))?;
    Ok((
        FrameworkSubscription {
            framework_id: id.map(FrameworkId::new),
            name,
            role: role.clone(),
            region_aware,
            partition_aware,
            checkpoint: mj::boolean(info, p, "checkpoint")
                .map_err(f)?
                .unwrap_or(false),
            failover_timeout_ms,
            principal,
        },
        role,
    ))
}

async fn subscribe(
    a: &Admin,
    caller: &Caller,
    headers: &HeaderMap,
    call: &Value,
) -> Result<Response, Failure> {
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or("").trim();
            matches!(
                m,
                "application/json" | "application/*" | "*/*" | "application/recordio"
            )
        });
        if !ok {
            return Err(Failure::new(
                StatusCode::NOT_ACCEPTABLE,
                format!("Expecting 'Accept' to allow application/json (got {accept:?}; Orrery speaks JSON only)"),
            ));
        }
    }
    let (subscription, role) = subscription(call, caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel(framework_session::STREAM_BUFFER);
    let keep = tx.clone();
    let subscribed = a
        .master
        .send(SubscribeFramework {
            subscription,
            tx,
            origin: orrery_actors::telemetry::origin(),
        })
        .await
        .map_err(|e| Failure::unavailable(format!("the master actor is not running: {e}")))?;
    let subscribed = match subscribed {
        Ok(s) => s,
        Err(MasterError::Rejected(r)) if r.class() == RejectionClass::Invalid => {
            return Err(Failure::bad(r.to_string()))
        }
        // Mesos answers a framework it will not take (removed, another
        // principal's) on the stream: one ERROR event, then the end.
        Err(MasterError::Rejected(r)) => {
            let record = mj::record_io(
                &serde_json::json!({"type": "ERROR", "error": {"message": r.to_string()}}),
            );
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(tokio_stream::once(Ok::<_, std::convert::Infallible>(
                    Bytes::from(record),
                ))),
            )
                .into_response());
        }
        Err(e) => return Err(status(e, a, "/api/v1/scheduler")),
    };
    a.mesos
        .insert(&subscribed.framework_id, &subscribed.stream_id, &keep);
    drop(keep);
    let master_info = a.log.with_state(|m| mj::master_info(&m.cluster));
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map_while(move |item| {
        // A status (this master stepped down) ends the stream: Mesos
        // closes the connection and the scheduler finds the new leader.
        let event = item.ok()?.event?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let v = mj::event_json(&event, &role, &master_info, now_s);
        Some(Ok::<_, std::convert::Infallible>(Bytes::from(
            mj::record_io(&v),
        )))
    });
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(events),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&subscribed.stream_id) {
        response.headers_mut().insert("mesos-stream-id", v);
    }
    Ok(response)
}
