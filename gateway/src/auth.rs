//! Authentication, authorization and limits at the front door.
//!
//! Default-deny. Every request to the master's gRPC services and HTTP admin
//! endpoints is first **authenticated**: the principal of the client
//! certificate the TLS handshake verified (`orrery://ROLE/NAME`, see
//! `orrery_storage::security`), or a bearer token (`authorization: Bearer
//! T`) whose SHA-256 is listed in the tokens file. Nothing else gets in
//! (UNAUTHENTICATED / 401).
//!
//! Then **authorized** by role and the policy file (PERMISSION_DENIED /
//! 403 otherwise):
//! - raft and the log service: masters only (enforced in storage);
//! - the agent API: agents only, and each only for its own host (the
//!   handlers compare the hostname, see [`Caller::agent_host`]);
//! - the scheduler API: clients granted a framework role; a framework's
//!   principal is bound at registration and every call must come from it;
//! - the operator API and HTTP endpoints: `view` to read, `operator` for
//!   maintenance, machines down/up, schedules and weights, `jobs` for jobs.
//!   `/health` and `/metrics` are open (load balancers, Prometheus).
//!
//! Each client principal is held to a **request rate** (token bucket). Every
//! refusal is logged with the principal, the method and the reason, and
//! counted in `orrery_requests_denied_total`.
//!
//! Tokens are hashed at rest with SHA-256: they are 256-bit random values
//! (`orrery certs token`), so a slow password hash would add nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orrery_storage::security::{peer_principal, Principal, Tls};
use orrery_storage::Fatal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a client principal may be granted in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Read the cluster: state, hosts, jobs, schedules, the log.
    View,
    /// Maintenance, drains, machines down/up, schedules, role weights.
    Operator,
    /// Create, update and kill jobs.
    Jobs,
}

impl Permission {
    fn parse(s: &str) -> Result<Permission, String> {
        match s {
            "view" => Ok(Permission::View),
            "operator" => Ok(Permission::Operator),
            "jobs" => Ok(Permission::Jobs),
            other => Err(format!(
                "{other:?} is not a permission (view, operator, jobs)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::Operator => "operator",
            Permission::Jobs => "jobs",
        }
    }
}

/// Reads the `what` file at `path` and parses it; errors name the file.
fn load_file<T>(
    what: &str,
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, Fatal> {
    let text = std::fs::read_to_string(path).map_err(|e| Fatal::Io {
        what: format!("the {what} file {}", path.display()),
        detail: e.to_string(),
    })?;
    parse(&text).map_err(|e| Fatal::Refused(format!("the {what} file {}: {e}", path.display())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    grant: Vec<GrantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    principal: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    framework_roles: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Grant {
    allow: BTreeSet<Permission>,
    /// Roles its frameworks may register in; "*" is any.
    framework_roles: BTreeSet<String>,
}

/// Who may do what: the policy file (`--policy`), TOML:
///
/// ```toml
/// [[grant]]
/// principal = "alice"            # a client certificate's or token's name
/// allow = ["view", "operator", "jobs"]
///
/// [[grant]]
/// principal = "spark"
/// framework_roles = ["analytics"] # "*" for any role
/// ```
///
/// Anything not granted is denied. Masters and agents are not listed:
/// their rights come from their certificate's role.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    grants: BTreeMap<String, Grant>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, Fatal> {
        load_file("policy", path, Policy::parse)
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut grants: BTreeMap<String, Grant> = BTreeMap::new();
        for g in file.grant {
            Principal::new("client", &g.principal).map_err(|e| format!("principal {e}"))?;
            let entry = grants.entry(g.principal.clone()).or_default();
            for a in &g.allow {
                entry.allow.insert(
                    Permission::parse(a).map_err(|e| format!("grant to {}: {e}", g.principal))?,
                );
            }
            for r in g.framework_roles {
                if r.is_empty() {
                    return Err(format!(
                        "grant to {}: a framework role is empty",
                        g.principal
                    ));
                }
                entry.framework_roles.insert(r);
            }
        }
        Ok(Policy { grants })
    }

    /// Everything, for `name`: `orrery dev`'s operator.
    pub fn allow_all(mut self, name: &str) -> Policy {
        self.grants.insert(
            name.to_owned(),
            Grant {
                allow: [Permission::View, Permission::Operator, Permission::Jobs].into(),
                framework_roles: ["*".to_owned()].into(),
            },
        );
        self
    }

    /// `view` only, for `name`: `orrery dev`'s web UI token.
    pub fn allow_view(mut self, name: &str) -> Policy {
        self.grants
            .entry(name.to_owned())
            .or_default()
            .allow
            .insert(Permission::View);
        self
    }

    pub fn allows(&self, principal: &Principal, p: Permission) -> bool {
        matches!(principal, Principal::Client(n) if self.grants.get(n).is_some_and(|g| g.allow.contains(&p)))
    }

    /// Whether `principal` may register a framework in `role`.
    pub fn may_register(&self, principal: &Principal, role: &str) -> bool {
        matches!(principal, Principal::Client(n) if self.grants.get(n).is_some_and(|g| {
            g.framework_roles.contains("*") || g.framework_roles.contains(role)
        }))
    }

    fn runs_frameworks(&self, principal: &Principal) -> bool {
        matches!(principal, Principal::Client(n) if self.grants.get(n).is_some_and(|g| !g.framework_roles.is_empty()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    principal: String,
    sha256: String,
}

/// Bearer tokens, by the SHA-256 of the token (`--tokens`), TOML:
///
/// ```toml
/// [[token]]
/// principal = "ci-bot"
/// sha256 = "<64 hex digits>"   # `orrery certs token` prints both
/// ```
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], String>,
}

/// The SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, Fatal> {
        load_file("tokens", path, Tokens::parse)
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        for t in file.token {
            Principal::new("client", &t.principal).map_err(|e| format!("principal {e}"))?;
            let h = t.sha256.to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "the token of {} has sha256 {:?}, not 64 hex digits",
                    t.principal, t.sha256
                ));
            }
            let mut key = [0u8; 32];
            for (i, k) in key.iter_mut().enumerate() {
                *k = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
            }
            if by_hash.insert(key, t.principal.clone()).is_some() {
                return Err(format!("the token of {} is listed twice", t.principal));
            }
        }
        Ok(Tokens { by_hash })
    }

    fn principal(&self, token: &str) -> Option<Principal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash
            .get(&key)
            .map(|name| Principal::Client(name.clone()))
    }
}

/// Requests per second a client principal may make (a token bucket holding
/// `burst`).
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_sec: 500.0,
            burst: 1000.0,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Everything a secured master needs to check a request.
#[derive(Debug)]
pub struct Security {
    pub tls: Arc<Tls>,
    pub policy: Policy,
    pub tokens: Tokens,
    pub rate: RateLimit,
    buckets: Mutex<HashMap<Principal, Bucket>>,
}

impl Security {
    pub fn new(tls: Arc<Tls>, policy: Policy, tokens: Tokens, rate: RateLimit) -> Arc<Security> {
        Arc::new(Security {
            tls,
            policy,
            tokens,
            rate,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Agents, masters and anything beyond 10,000 distinct principals are
    /// not limited here (agents are bounded by their own send window).
    fn within_rate(&self, p: &Principal) -> bool {
        if !matches!(p, Principal::Client(_)) {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 && !buckets.contains_key(p) {
            buckets.retain(|_, b| now.duration_since(b.at).as_secs() < 60);
        }
        let b = buckets.entry(p.clone()).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.rate.per_sec;
        b.tokens = (b.tokens + refill).min(self.rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Authenticates the request, authorizes its principal with
    /// `authorize` (Err: why not), and holds a client to its rate. A refusal
    /// is logged and counted here, under `method`, with whoever asked.
    fn admit(
        &self,
        req: &Request,
        peer: Option<&Result<Principal, String>>,
        method: &str,
        authorize: impl FnOnce(&Principal) -> Result<(), String>,
    ) -> Result<Principal, Refusal> {
        let (refusal, who) = match self.authenticate(req.extensions(), req.headers(), peer) {
            Err(r) => (r, "unauthenticated".to_owned()),
            Ok(p) => match authorize(&p) {
                Err(message) => (
                    Refusal {
                        denial: Denial::Forbidden,
                        message,
                    },
                    p.to_string(),
                ),
                Ok(()) if !self.within_rate(&p) => (
                    Refusal {
                        denial: Denial::Rate,
                        message: format!(
                            "{p} is over its rate of {} requests/s; slow down",
                            self.rate.per_sec
                        ),
                    },
                    p.to_string(),
                ),
                Ok(()) => return Ok(p),
            },
        };
        record_denied(&who, method, refusal.denial.reason(), &refusal.message);
        Err(refusal)
    }

    /// The principal a bearer token names (`/ui/login`).
    pub fn token_principal(&self, token: &str) -> Option<Principal> {
        self.tokens.principal(token.trim())
    }

    /// Who sent the request: its verified client certificate, else a known
    /// bearer token (on `/ui/` paths also the UI's cookie).
    fn authenticate(
        &self,
        extensions: &axum::http::Extensions,
        headers: &axum::http::HeaderMap,
        peer: Option<&Result<Principal, String>>,
    ) -> Result<Principal, Refusal> {
        let from_cert = peer.cloned().or_else(|| peer_principal(extensions));
        match from_cert {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => {
                return Err(Refusal::unauthenticated(format!(
                    "the client certificate is not an Orrery one: {e}"
                )))
            }
            None => {}
        }
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Refusal::unauthenticated(
                "no credentials: present a client certificate or an `authorization: Bearer` token"
                    .into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Refusal::unauthenticated("the authorization header is not `Bearer TOKEN`".into())
            })?;
        self.tokens
            .principal(token.trim())
            .ok_or_else(|| Refusal::unauthenticated("the bearer token is not known".into()))
    }
}

/// The authenticated caller of a request, in its extensions (None on an
/// `--insecure` master).
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Option<Principal>,
    pub security: Option<Arc<Security>>,
}

impl Caller {
    /// The caller of `req`; an `--insecure` master has none.
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions().get::<Caller>().cloned().unwrap_or(Caller {
            principal: None,
            security: None,
        })
    }

    /// Whether the request may act for the agent of `hostname`: any on an
    /// insecure master, else only that host's agent.
    pub fn agent_host(&self, hostname: &str) -> Result<(), tonic::Status> {
        match &self.principal {
            None => Ok(()),
            Some(Principal::Agent(h)) if h == hostname => Ok(()),
            Some(p) => Err(denied(
                p,
                "agent",
                format!("{p} may not act for the agent of host {hostname:?}"),
            )),
        }
    }

    /// Binds a framework's principal: the caller's name, which a principal
    /// given in FrameworkInfo must equal; and the policy must let the
    /// caller register in `role`.
    pub fn framework_principal(&self, given: &str, role: &str) -> Result<String, tonic::Status> {
        let (Some(p), Some(sec)) = (&self.principal, &self.security) else {
            return Ok(given.to_owned());
        };
        if !given.is_empty() && given != p.name() {
            return Err(denied(
                p,
                "Subscribe",
                format!(
                    "the framework names principal {given:?}, but the caller authenticated as {p}"
                ),
            ));
        }
        if !sec.policy.may_register(p, role) {
            return Err(denied(
                p,
                "Subscribe",
                format!("{p} may not register a framework in role {role:?}"),
            ));
        }
        Ok(p.name().to_owned())
    }

    /// Whether the caller holds `need` (any caller on an insecure master).
    pub fn may(&self, need: Permission, what: &str) -> Result<(), String> {
        let (Some(p), Some(sec)) = (&self.principal, &self.security) else {
            return Ok(());
        };
        if sec.policy.allows(p, need) {
            return Ok(());
        }
        let message = format!(
            "{p} may not {what}: it needs the {:?} permission in the policy",
            need.as_str()
        );
        record_denied(&p.to_string(), what, "forbidden", &message);
        Err(message)
    }

    /// Whether the caller is the framework whose bound principal is
    /// `bound` (frameworks act only on their own offers and tasks).
    pub fn framework_owner(&self, framework_id: &str, bound: &str) -> Result<(), tonic::Status> {
        match &self.principal {
            None => Ok(()),
            Some(p) if p.name() == bound && matches!(p, Principal::Client(_)) => Ok(()),
            Some(p) => Err(denied(
                p,
                "Call",
                format!("framework {framework_id} belongs to principal {bound:?}, not to {p}"),
            )),
        }
    }
}

/// Why a request was refused before its handler: each has its gRPC code,
/// HTTP status and `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denial {
    Unauthenticated,
    Forbidden,
    Rate,
}

impl Denial {
    fn reason(self) -> &'static str {
        match self {
            Denial::Unauthenticated => "unauthenticated",
            Denial::Forbidden => "forbidden",
            Denial::Rate => "rate",
        }
    }
}

/// A refusal before the handler.
#[derive(Debug)]
struct Refusal {
    denial: Denial,
    message: String,
}

impl Refusal {
    fn unauthenticated(message: String) -> Refusal {
        Refusal {
            denial: Denial::Unauthenticated,
            message,
        }
    }
}

fn record_denied(who: &str, method: &str, reason: &str, message: &str) {
    tracing::warn!(principal = who, method, reason, "refused: {message}");
    metrics::counter!(orrery_actors::telemetry::REQUESTS_DENIED, "reason" => reason.to_owned())
        .increment(1);
}

/// Logs and counts a refusal a handler makes, and returns its status.
pub fn denied(p: &Principal, method: &str, message: String) -> tonic::Status {
    record_denied(&p.to_string(), method, "forbidden", &message);
    tonic::Status::permission_denied(message)
}

/// The method part of a gRPC path: `/orrery.operator.v1.Operator/GetState`
/// → (`orrery.operator.v1.Operator`, `GetState`).
fn grpc_method(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    p.split_once('/').unwrap_or((p, ""))
}

/// What a gRPC method requires of a client (None: not a client method).
fn operator_permission(method: &str) -> Permission {
    match method {
        "GetState" | "ReadLog" | "ListJobs" | "JobStatus" | "QueryHosts" | "GetSchedule"
        | "ListMasters" => Permission::View,
        "CreateJob" | "UpdateJob" | "KillJob" | "PlanJobUpdate" => Permission::Jobs,
        // UpdateWeights, UpdateSchedule, Start/CompleteMaintenance,
        // MachinesDown, PlanMaintenance (a dry run shows the whole
        // cluster's placement), and any method added later: operators only.
        _ => Permission::Operator,
    }
}

fn authorize_grpc(sec: &Security, p: &Principal, path: &str) -> Result<(), String> {
    let (service, method) = grpc_method(path);
    let ok = match service {
        // Guarded again in storage; here so the gateway's table is whole.
        s if s.starts_with("orrery.raft.v1.") => matches!(p, Principal::Master(_)),
        "orrery.agent.v1.AgentLink" => matches!(p, Principal::Agent(_)),
        "orrery.scheduler.v1.Scheduler" => sec.policy.runs_frameworks(p),
        // Who leads: any caller that proved who it is (the answer is an
        // address and a term, which every caller must find to be served).
        "orrery.operator.v1.Discovery" => true,
        // A new master asks to join with its own certificate.
        "orrery.operator.v1.Operator" if method == "JoinMaster" => {
            matches!(p, Principal::Master(_)) || sec.policy.allows(p, Permission::Operator)
        }
        "orrery.operator.v1.Operator" => sec.policy.allows(p, operator_permission(method)),
        // Reflection, health and unknown services: nothing is granted.
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let need = match service {
            s if s.starts_with("orrery.raft.v1.") => "a master certificate".to_owned(),
            "orrery.agent.v1.AgentLink" => "an agent certificate".to_owned(),
            "orrery.scheduler.v1.Scheduler" => "a policy grant of framework_roles".to_owned(),
            "orrery.operator.v1.Operator" => format!(
                "the {:?} permission in the policy",
                operator_permission(method).as_str()
            ),
            _ => "a service Orrery serves".to_owned(),
        };
        Err(format!(
            "{p} may not call {service}/{method}: it needs {need}"
        ))
    }
}

/// Runs `next` with the caller in the request and its principal in the
/// audit task-local.
async fn admitted(
    mut req: Request,
    next: Next,
    principal: Option<Principal>,
    security: Option<Arc<Security>>,
) -> Response {
    let audit = principal
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    req.extensions_mut().insert(Caller {
        principal,
        security,
    });
    orrery_actors::telemetry::PRINCIPAL
        .scope(audit, next.run(req))
        .await
}

/// The gRPC guard (an axum layer on the master's routes).
pub async fn grpc_guard(
    axum::extract::State(sec): axum::extract::State<Option<Arc<Security>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(sec) = sec else {
        return admitted(req, next, None, None).await;
    };
    let path = req.uri().path().to_owned();
    let (_, method) = grpc_method(&path);
    match sec.admit(&req, None, method, |p| authorize_grpc(&sec, p, &path)) {
        Ok(p) => admitted(req, next, Some(p), Some(sec)).await,
        Err(r) => match r.denial {
            Denial::Unauthenticated => tonic::Status::unauthenticated(r.message),
            Denial::Forbidden => tonic::Status::permission_denied(r.message),
            Denial::Rate => tonic::Status::resource_exhausted(r.message),
        }
        .into_http(),
    }
}

/// The HTTP guard: `/health`, `/metrics` and `/vars.json` are open; reads
/// need `view`, writes `operator`.
pub async fn http_guard(
    axum::extract::State(sec): axum::extract::State<Option<Arc<Security>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(sec) = sec else {
        return admitted(req, next, None, None).await;
    };
    let path = req.uri().path().to_owned();
    if matches!(
        path.as_str(),
        "/health" | "/metrics" | "/vars.json" | "/ui/login"
    ) || path.starts_with("/ui/assets/")
    {
        return next.run(req).await;
    }
    // A browser on the web UI: its `/ui/login` cookie is its bearer token
    // (on `/ui/` paths only; the UI changes nothing).
    let ui = path == "/ui" || path.starts_with("/ui/");
    if ui
        && !req
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION)
    {
        if let Some(v) = ui_cookie(req.headers())
            .and_then(|t| axum::http::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            req.headers_mut()
                .insert(axum::http::header::AUTHORIZATION, v);
        }
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .and_then(|c| c.0.principal.clone());
    // Mesos' v1 APIs carry their verb in the body: the scheduler API is
    // authorized per framework by its handler (roles, ownership), and the
    // operator API's mutating calls ask for `operator` in theirs.
    let need = match (req.method() == axum::http::Method::GET, path.as_str()) {
        (_, "/api/v1/scheduler") => None,
        (_, "/api/v1") | (true, _) => Some(Permission::View),
        (false, _) => Some(Permission::Operator),
    };
    let authorize = |p: &Principal| {
        let Some(need) = need else {
            return if sec.policy.runs_frameworks(p) {
                Ok(())
            } else {
                Err(format!(
                    "{p} may not call {path}: the policy grants it no framework_roles"
                ))
            };
        };
        if sec.policy.allows(p, need) {
            Ok(())
        } else {
            Err(format!(
                "{p} may not {} {path}: it needs the {:?} permission in the policy",
                req.method(),
                need.as_str()
            ))
        }
    };
    match sec.admit(&req, peer.as_ref(), &path, authorize) {
        Ok(p) => admitted(req, next, Some(p), Some(sec)).await,
        Err(r) if ui && r.denial == Denial::Unauthenticated => (
            StatusCode::SEE_OTHER,
            [(axum::http::header::LOCATION, "/ui/login")],
            format!("{}\n", r.message),
        )
            .into_response(),
        Err(r) => {
            let code = match r.denial {
                Denial::Unauthenticated => StatusCode::UNAUTHORIZED,
                Denial::Forbidden => StatusCode::FORBIDDEN,
                Denial::Rate => StatusCode::TOO_MANY_REQUESTS,
            };
            (code, format!("{}\n", r.message)).into_response()
        }
    }
}

/// The web UI's token cookie (`crate::ui::COOKIE`), if the request has one.
fn ui_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(crate::ui::COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

/// An HTTP peer: its address and the principal its certificate names.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub principal: Option<Result<Principal, String>>,
}

/// The HTTP admin listener over TLS, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, tls: &Tls) -> Result<TlsListener, Fatal> {
        let local = listener.local_addr().map_err(|e| Fatal::Io {
            what: "the HTTP socket".into(),
            detail: e.to_string(),
        })?;
        let config = tls.server_config(&[b"http/1.1"])?;
        Ok(TlsListener {
            incoming: orrery_storage::security::tls_incoming(listener, config, "HTTP"),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(stream) = self.incoming.recv().await else {
                // The accept loop ended; serve nothing more.
                std::future::pending::<()>().await;
                continue;
            };
            let (tcp, session) = stream.get_ref();
            let Ok(addr) = tcp.peer_addr() else {
                continue;
            };
            let principal = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| Principal::from_cert(leaf));
            return (stream, Peer { addr, principal });
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            principal: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_parse_and_bad_ones_name_the_problem() {
        let p = Policy::parse(
            r#"
            [[grant]]
            principal = "alice"
            allow = ["view", "operator"]
            [[grant]]
            principal = "spark"
            framework_roles = ["analytics"]
            "#,
        )
        .unwrap();
        let alice = Principal::Client("alice".into());
        let spark = Principal::Client("spark".into());
        assert!(p.allows(&alice, Permission::Operator));
        assert!(!p.allows(&alice, Permission::Jobs));
        assert!(!p.allows(&spark, Permission::View));
        assert!(p.may_register(&spark, "analytics"));
        assert!(!p.may_register(&spark, "prod"));
        assert!(!p.may_register(&alice, "analytics"));
        // A certificate's role is not a client's name.
        assert!(!p.allows(&Principal::Agent("alice".into()), Permission::View));
        let e = Policy::parse("[[grant]]\nprincipal = \"a\"\nallow = [\"root\"]").unwrap_err();
        assert!(e.contains("not a permission"), "{e}");
        let e = Policy::parse("[[grant]]\nprincipal = \"a\"\nalow = []").unwrap_err();
        assert!(e.contains("alow"), "{e}");
        let e = Policy::parse("[[grant]]\nprincipal = \"a b\"").unwrap_err();
        assert!(e.contains("not a principal name"), "{e}");
    }

    #[test]
    fn tokens_are_matched_by_hash_and_bad_files_are_refused() {
        let h = token_hash("s3cret");
        let t = Tokens::parse(&format!("[[token]]\nprincipal = \"ci\"\nsha256 = \"{h}\"")).unwrap();
        assert_eq!(t.principal("s3cret"), Some(Principal::Client("ci".into())));
        assert_eq!(t.principal("s3cret2"), None);
        let e = Tokens::parse("[[token]]\nprincipal = \"ci\"\nsha256 = \"abc\"").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = Tokens::parse(&format!(
            "[[token]]\nprincipal = \"a\"\nsha256 = \"{h}\"\n[[token]]\nprincipal = \"b\"\nsha256 = \"{h}\""
        ))
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn each_operator_method_needs_its_permission() {
        assert_eq!(operator_permission("GetState"), Permission::View);
        assert_eq!(operator_permission("KillJob"), Permission::Jobs);
        assert_eq!(
            operator_permission("StartMaintenance"),
            Permission::Operator
        );
        assert_eq!(operator_permission("MachinesDown"), Permission::Operator);
        assert_eq!(operator_permission("SomethingNew"), Permission::Operator);
        assert_eq!(operator_permission("ListMasters"), Permission::View);
        assert_eq!(operator_permission("AddMaster"), Permission::Operator);
        assert_eq!(operator_permission("RemoveMaster"), Permission::Operator);
    }

    #[test]
    fn a_master_may_ask_to_join_and_nothing_more() {
        let ca = orrery_storage::security::pki::Ca::generate(
            "t",
            orrery_storage::security::pki::Validity::days(1),
        )
        .unwrap();
        let tls = Arc::new(ca.local(&Principal::Master("m".into())).unwrap());
        let policy = Policy::parse(
            "[[grant]]\nprincipal = \"ops\"\nallow = [\"operator\"]\n[[grant]]\nprincipal = \"viewer\"\nallow = [\"view\"]",
        )
        .unwrap();
        let sec = Security::new(tls, policy, Tokens::default(), RateLimit::default());
        let join = "/orrery.operator.v1.Operator/JoinMaster";
        let add = "/orrery.operator.v1.Operator/AddMaster";
        let master = Principal::Master("m4".into());
        assert!(authorize_grpc(&sec, &master, join).is_ok());
        assert!(authorize_grpc(&sec, &master, add).is_err());
        let ops = Principal::Client("ops".into());
        assert!(authorize_grpc(&sec, &ops, join).is_ok());
        assert!(authorize_grpc(&sec, &ops, add).is_ok());
        let viewer = Principal::Client("viewer".into());
        assert!(authorize_grpc(&sec, &viewer, join).is_err());
        assert!(authorize_grpc(&sec, &viewer, add).is_err());
        assert!(authorize_grpc(&sec, &viewer, "/orrery.operator.v1.Operator/ListMasters").is_ok());
        assert!(authorize_grpc(&sec, &Principal::Agent("h".into()), join).is_err());
    }

    #[test]
    fn a_client_over_its_rate_is_held_back() {
        let ca = orrery_storage::security::pki::Ca::generate(
            "t",
            orrery_storage::security::pki::Validity::days(1),
        )
        .unwrap();
        let tls = Arc::new(ca.local(&Principal::Master("m".into())).unwrap());
        let sec = Security::new(
            tls,
            Policy::default(),
            Tokens::default(),
            RateLimit {
                per_sec: 1.0,
                burst: 3.0,
            },
        );
        let c = Principal::Client("c".into());
        assert!((0..3).all(|_| sec.within_rate(&c)));
        assert!(!sec.within_rate(&c));
        assert!(sec.within_rate(&Principal::Client("other".into())));
        assert!(sec.within_rate(&Principal::Agent("h".into())));
    }
}
