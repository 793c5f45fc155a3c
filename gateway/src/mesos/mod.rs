//! Mesos' v1 HTTP APIs on the master's `--http` listener, so that existing
//! Mesos frameworks (pymesos, the Mesos Java/C++ HTTP scheduler libraries)
//! and tools run against Orrery unmodified.
//!
//! - `POST /api/v1/scheduler` ([`scheduler`]): the scheduler API.
//! - `POST /api/v1` ([`operator`]): the operator API.
//! - `GET /master/state`, `GET /state.json`: the v0 state document;
//!   `GET /version`: `{"version": "1.11.0", ...}` (clients pick the API
//!   generation from it).
//!
//! Same listener, TLS and policy as the rest of the HTTP admin (plain HTTP
//! only with `--insecure`). Only the JSON media type is spoken; protobuf
//! bodies get 415. Everything here translates: the same `Master` actor and
//! the same pure core decide for the gRPC and the HTTP fronts.

pub mod json;
pub mod operator;
pub mod scheduler;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orrery_actors::master::{MasterError, Serving};

use crate::http::Admin;

/// A refused request: its status and Mesos-style plain-text message.
#[derive(Debug)]
pub struct Failure {
    pub code: StatusCode,
    pub message: String,
    pub location: Option<String>,
}

impl Failure {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            location: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

/// `Retry-After` on a 429 (`orrery_actors::master::RETRY_AFTER`).
pub const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = (self.code, self.message).into_response();
        if let Some(l) = self.location.and_then(|l| l.parse().ok()) {
            r.headers_mut().insert(header::LOCATION, l);
        }
        if self.code == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        r
    }
}

/// Mesos' media-type checks of a call's body.
pub fn media_type_error(headers: &HeaderMap) -> Result<(), Failure> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(Failure::bad("Expecting 'Content-Type' to be present"));
    };
    let ct = ct.to_str().unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim() {
        "application/json" => Ok(()),
        "application/x-protobuf" => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Orrery speaks the JSON media type only: send 'Content-Type: application/json'",
        )),
        other => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Expecting 'Content-Type' of application/json or application/x-protobuf (got {other:?})"),
        )),
    }
}

/// The answer for a master that does not serve: a follower redirects to
/// the leader (`//HOST:PORT/PATH`, as Mesos writes it); no leader: 503.
pub fn status(e: MasterError, a: &Admin, path: &str) -> Failure {
    match e {
        MasterError::NotLeader { .. } => match crate::http::leader_http_addr(a) {
            Some(h) => Failure {
                code: StatusCode::TEMPORARY_REDIRECT,
                message: format!("the leading master is at {h}"),
                location: Some(format!("//{h}{path}")),
            },
            None => Failure::unavailable("No leader elected"),
        },
        MasterError::Rejected(r) => Failure::bad(r.to_string()),
        e @ MasterError::Overloaded { .. } => {
            Failure::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        other => Failure::unavailable(other.to_string()),
    }
}

/// Ok when this replica leads and serves.
pub async fn not_serving(a: &Admin, path: &str) -> Result<(), Failure> {
    match a.master.send(Serving).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(status(e, a, path)),
        Err(e) => Err(Failure::unavailable(format!(
            "the master actor is not running: {e}"
        ))),
    }
}
