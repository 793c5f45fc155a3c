//! The web UI, on the master's `--http` listener: the cluster now, and the
//! cluster after any event of the log (time travel).
//!
//! - `/ui/overview`: masters (leader, term, commit index), agents (region,
//!   zone, resources used/total, host state), frameworks, jobs with their
//!   instances' health, tasks with state and sandbox path.
//! - `/ui/maintenance`: the schedule, host states, inverse-offer answers
//!   and how many tasks a draining host still has.
//! - `/ui/timeline`: the log, an event per row, each opening the state
//!   right after it; `/ui/diff?a=&b=` what changed between two points;
//!   `/ui/why?job=ROLE/ENV/NAME` why a job's instances wait.
//! - Every page takes `at=` (an event index or an RFC 3339 time) and is
//!   then rendered from the state rebuilt by the replay engine the CLI uses
//!   (`travel`); without it the page is live: `/ui/events` streams each
//!   commit of the log as a server-sent event and the page refreshes its
//!   content in place, no reload.
//!
//! The toolchain is small on purpose: HTML is rendered on the server with
//! maud (compile-time templates, escaped by construction, no template
//! files to ship), and htmx 2.0.11 (0BSD, vendored in `gateway/ui/` with its
//! licence, embedded in the binary: no CDN at run time) swaps fragments:
//! links and forms are boosted, the live page refetches its `#main` on
//! each commit. `gateway/ui/orrery.js` (40 lines) connects the two.
//!
//! Access is the HTTP admin's: `view` for every page. Browsers cannot add a
//! bearer header, so `/ui/login` (open) takes a token in a form, checks it,
//! and sets it as an `HttpOnly`, `SameSite=Strict` cookie for `/ui`, which
//! `auth::http_guard` reads as the bearer token on `/ui/` paths only (the
//! UI is read-only: no page changes anything). A client certificate works
//! as everywhere else. A follower redirects (307) to the leader's page.

mod pages;
pub mod travel;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use orrery_actors::master::{MasterError, Serving};
use orrery_events::{codec, explain, Cluster};
use orrery_storage::{EventLog, ReadError};
use serde::Deserialize;

use crate::http::Admin;
use travel::Point;
pub use travel::Travel;

/// Events the timeline shows per page.
const TIMELINE_ROWS: u64 = 100;
/// The cookie `/ui/login` sets.
pub const COOKIE: &str = "orrery_token";

pub fn routes() -> Router<Admin> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/overview") }))
        .route("/ui/", get(|| async { redirect("/ui/overview") }))
        .route("/ui/overview", get(overview))
        .route("/ui/maintenance", get(maintenance))
        .route("/ui/timeline", get(timeline))
        .route("/ui/diff", get(diff))
        .route("/ui/why", get(why))
        .route("/ui/events", get(events))
        .route("/ui/login", get(login_form).post(login))
        .route(
            "/ui/assets/htmx.min.js",
            get(|| asset(pages::HTMX, "text/javascript")),
        )
        .route(
            "/ui/assets/orrery.js",
            get(|| asset(pages::JS, "text/javascript")),
        )
        .route(
            "/ui/assets/orrery.css",
            get(|| asset(pages::CSS, "text/css")),
        )
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    at: Option<String>,
    a: Option<String>,
    b: Option<String>,
    job: Option<String>,
}

/// Serve on the leader; a follower sends the browser there (307).
async fn leader_only(a: &Admin, uri: &Uri) -> Result<(), Response> {
    match a.master.send(Serving).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(MasterError::NotLeader { .. })) => match crate::http::leader_http_addr(a) {
            Some(http) => {
                let scheme = if a.tls { "https" } else { "http" };
                let to = format!(
                    "{scheme}://{http}{}",
                    uri.path_and_query().map_or("/ui/overview", |p| p.as_str())
                );
                Err((
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, to.clone())],
                    format!("the leader serves the UI at {to}\n"),
                )
                    .into_response())
            }
            None => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader is known yet; try again in a moment\n",
            )
                .into_response()),
        },
        Ok(Err(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()),
        Err(e) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the master actor is not running: {e}\n"),
        )
            .into_response()),
    }
}

/// The oldest event whose state this master can rebuild (its snapshot's,
/// once the events before it are purged).
async fn first_index(a: &Admin) -> u64 {
    match a.log.read(1, 2, 1).await {
        Err(ReadError::Compacted { .. }) => a.log.latest_snapshot().map_or(0, |(i, _)| i),
        _ => 0,
    }
}

/// A page's frame, the state at its point, or the page that says why not.
struct Loaded {
    point: Point,
    last: u64,
    first: u64,
    state: Arc<Cluster>,
}

async fn load(a: &Admin, at: Option<&str>) -> (Point, u64, u64, Result<Arc<Cluster>, String>) {
    let last = a.log.last_applied();
    let first = first_index(a).await;
    let point = match travel::parse_point(&a.log, at).await {
        Ok(p) => p,
        Err(e) => return (Point::Live, last, first, Err(e)),
    };
    let state = a.ui.state(&a.log, point).await;
    (point, last, first, state)
}

fn frame<'a>(path: &'a str, refresh: &'a str, title: &'a str, l: &Loaded) -> pages::Frame<'a> {
    pages::Frame {
        path,
        refresh,
        title,
        point: l.point,
        last: l.last,
        first: l.first,
        at_ms: l.state.last_proposed_at_ms,
    }
}

fn html(status: StatusCode, m: maud::Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// Loads the state for `path`'s page and renders it with `body`, or an
/// error page (400) naming what was wrong with `at=`.
async fn render(
    a: &Admin,
    uri: &Uri,
    path: &'static str,
    title: &'static str,
    at: Option<&str>,
    body: impl FnOnce(&Loaded) -> maud::Markup,
) -> Response {
    if let Err(r) = leader_only(a, uri).await {
        return r;
    }
    let (point, last, first, state) = load(a, at).await;
    match state {
        Ok(state) => {
            let l = Loaded {
                point,
                last,
                first,
                state,
            };
            let page = body(&l);
            let refresh = uri.path_and_query().map_or(path, |p| p.as_str());
            html(
                StatusCode::OK,
                pages::layout(&frame(path, refresh, title, &l), page),
            )
        }
        Err(e) => {
            let f = pages::Frame {
                path,
                refresh: path,
                title,
                point: Point::Live,
                last,
                first,
                at_ms: 0,
            };
            html(StatusCode::BAD_REQUEST, pages::error_page(&f, &e))
        }
    }
}

async fn overview(State(a): State<Admin>, uri: Uri, Query(q): Query<Params>) -> Response {
    let info = a.log.leader();
    let masters = pages::Masters {
        leader_id: info.leader_id,
        term: info.term,
        commit_index: a.log.last_applied(),
        this_id: a.node_id,
    };
    render(&a, &uri, "/ui/overview", "Overview", q.at.as_deref(), |l| {
        pages::overview(&l.state, l.point, &masters)
    })
    .await
}

async fn maintenance(State(a): State<Admin>, uri: Uri, Query(q): Query<Params>) -> Response {
    render(
        &a,
        &uri,
        "/ui/maintenance",
        "Maintenance",
        q.at.as_deref(),
        |l| pages::maintenance(&l.state),
    )
    .await
}

async fn timeline(State(a): State<Admin>, uri: Uri, Query(q): Query<Params>) -> Response {
    if let Err(r) = leader_only(&a, &uri).await {
        return r;
    }
    let (point, last, first, state) = load(&a, q.at.as_deref()).await;
    let at = point.index().unwrap_or(last);
    let from = at.saturating_sub(TIMELINE_ROWS - 1).max(first + 1).max(1);
    let (rows, note) = match travel::read(&a.log, from, at + 1).await {
        Ok(events) => (
            events
                .iter()
                .map(|e| pages::EventRow {
                    index: e.index,
                    at_ms: e.proposed_at_ms,
                    name: e.payload.as_ref().map_or("-", codec::event_name),
                    line: e
                        .payload
                        .as_ref()
                        .map_or_else(String::new, explain::explain),
                    principal: e.principal.clone(),
                })
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e)),
    };
    let note = note.or_else(|| state.as_ref().err().cloned());
    let l = Loaded {
        point,
        last,
        first,
        state: state.unwrap_or_default(),
    };
    let body = pages::timeline(&rows, point, last, note.as_deref());
    html(
        StatusCode::OK,
        pages::layout(&frame("/ui/timeline", "/ui/timeline", "Timeline", &l), body),
    )
}

async fn diff(State(a): State<Admin>, uri: Uri, Query(q): Query<Params>) -> Response {
    if let Err(r) = leader_only(&a, &uri).await {
        return r;
    }
    let last = a.log.last_applied();
    let first = first_index(&a).await;
    let bad = |e: String| {
        let f = pages::Frame {
            path: "/ui/timeline",
            refresh: "/ui/timeline",
            title: "Diff",
            point: Point::Live,
            last,
            first,
            at_ms: 0,
        };
        html(StatusCode::BAD_REQUEST, pages::error_page(&f, &e))
    };
    let (Some(qa), Some(qb)) = (q.a.as_deref(), q.b.as_deref()) else {
        return bad("a diff needs two points: /ui/diff?a=EVENT&b=EVENT".into());
    };
    let mut states = Vec::new();
    for text in [qa, qb] {
        let p = match travel::parse_point(&a.log, Some(text)).await {
            Ok(p) => p,
            Err(e) => return bad(e),
        };
        match a.ui.state(&a.log, p).await {
            Ok(s) => states.push((p.index().unwrap_or(last), s)),
            Err(e) => return bad(e),
        }
    }
    let (ia, sa) = states[0].clone();
    let (ib, sb) = states[1].clone();
    let changes = orrery_events::replay::diff(&sa, &sb);
    let l = Loaded {
        point: if ib >= last {
            Point::Live
        } else {
            Point::At(ib)
        },
        last,
        first,
        state: sb,
    };
    html(
        StatusCode::OK,
        pages::layout(
            &frame(
                "/ui/timeline",
                uri.path_and_query().map_or("/ui/diff", |p| p.as_str()),
                "Diff",
                &l,
            ),
            pages::diff(ia, ib, &changes),
        ),
    )
}

async fn why(State(a): State<Admin>, uri: Uri, Query(q): Query<Params>) -> Response {
    let job = q.job.clone().unwrap_or_default();
    render(&a, &uri, "/ui/why", "Why pending", q.at.as_deref(), |l| {
        let Some(key) = l.state.jobs.keys().find(|k| k.to_string() == job) else {
            return pages::why(
                &job,
                &[format!(
                    "there is no job {job:?} at this point (jobs are ROLE/ENV/NAME)"
                )],
            );
        };
        let now = match l.point {
            Point::Live => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Point::At(_) => l.state.last_proposed_at_ms,
        };
        pages::why(
            &job,
            &orrery_events::replay::why_pending_job(&l.state, key, now),
        )
    })
    .await
}

/// Server-sent events: `commit` with the last committed index, at most
/// every 200 ms while the log moves (a burst of commits is one event).
async fn events(State(a): State<Admin>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(4);
    let log = a.log.clone();
    tokio::spawn(async move {
        let mut sent = log.last_applied();
        if tx
            .send(Ok(Event::default().event("commit").data(sent.to_string())))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let mut sub = log.subscribe(sent + 1);
            tokio::select! {
                r = sub.next() => {
                    if r.is_err() {
                        // Purged or unavailable: look again shortly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = tx.closed() => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let last = log.last_applied();
            if last != sent {
                sent = last;
                let e = Event::default().event("commit").data(last.to_string());
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let m = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Orrery — sign in" } link rel="stylesheet" href="/ui/assets/orrery.css"; }
            body {
                main {
                    section {
                        h2 { "Orrery" }
                        @if let Some(m) = message { p.error #error { (m) } }
                        form method="post" action="/ui/login" {
                            label for="token" { "Bearer token (a principal with view)" } " "
                            input #token type="password" name="token" autocomplete="off";
                            " " button type="submit" { "Sign in" }
                        }
                        p.note { "Or present a client certificate signed by the cluster's CA." }
                    }
                }
            }
        }
    };
    html(status, m)
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// `token=…` (form-encoded): checked against `--tokens` and the policy
/// (`view`), then set as the `/ui` cookie.
async fn login(State(a): State<Admin>, body: Bytes) -> Response {
    let Some(sec) = a.security.clone() else {
        // An --insecure master asks nobody to sign in.
        return redirect("/ui/overview");
    };
    let text = String::from_utf8_lossy(&body);
    let token = text
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(form_decode);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return login_page(StatusCode::BAD_REQUEST, Some("the form has no token"));
    };
    match sec.token_principal(&token) {
        Some(p) if sec.policy.allows(&p, crate::auth::Permission::View) => {
            let secure = if a.tls { "; Secure" } else { "" };
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/ui/overview".to_owned()),
                    (
                        header::SET_COOKIE,
                        format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}"),
                    ),
                ],
            )
                .into_response()
        }
        Some(p) => login_page(
            StatusCode::FORBIDDEN,
            Some(&format!(
                "{p} may not view the cluster: the policy does not grant it view"
            )),
        ),
        None => login_page(StatusCode::UNAUTHORIZED, Some("the token is not known")),
    }
}

/// `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::form_decode;

    #[test]
    fn form_values_decode() {
        assert_eq!(form_decode("a+b%2Fc"), "a b/c");
        assert_eq!(form_decode("abc"), "abc");
        assert_eq!(form_decode("bad%zz"), "bad%zz");
        assert_eq!(form_decode("end%4"), "end%4");
    }
}
