//! The UI's HTML, rendered from one `Cluster` (now or at a past event) with
//! maud: every value is escaped by construction.

use maud::{html, Markup, DOCTYPE};
use orrery_events::projections::maintenance::live_tasks_on_host;
use orrery_events::replay::Change;
use orrery_events::state::{JobKey, Task};
use orrery_events::{pb, Cluster, Resources};

use super::travel::Point;

/// What the header needs: where the page is in the log.
pub struct Frame<'a> {
    /// `/ui/overview`, `/ui/maintenance`, …
    pub path: &'a str,
    /// What a live page refetches on a commit (its path and query).
    pub refresh: &'a str,
    pub title: &'a str,
    pub point: Point,
    /// The last committed event (the slider's end).
    pub last: u64,
    /// The oldest event whose state this master can rebuild.
    pub first: u64,
    /// `proposed_at` of the page's point, when known.
    pub at_ms: u64,
}

pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn link(path: &str, point: Point) -> String {
    match point {
        Point::Live => path.to_owned(),
        Point::At(i) => format!("{path}?at={i}"),
    }
}

/// The page around `body`: navigation, the timeline slider, live updates.
pub fn layout(f: &Frame, body: Markup) -> Markup {
    frame(f, body, true)
}

/// `layout`; with `refresh` false the live page does not reload itself on
/// a commit (an error page: the reload would replace the error with the
/// page it could not show).
fn frame(f: &Frame, body: Markup, refresh: bool) -> Markup {
    let live = f.point == Point::Live;
    let refreshing = live && refresh;
    let at = f.point.index().unwrap_or(f.last);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Orrery — " (f.title) }
                link rel="stylesheet" href="/ui/assets/orrery.css";
                script src="/ui/assets/htmx.min.js" {}
                script src="/ui/assets/orrery.js" {}
            }
            body hx-boost="true" {
                header {
                    span.brand { "Orrery" }
                    nav {
                        @for (p, name) in [("/ui/overview", "Overview"), ("/ui/maintenance", "Maintenance"), ("/ui/timeline", "Timeline")] {
                            a href=(link(p, f.point)) class=[(p == f.path).then_some("current")] { (name) }
                        }
                    }
                    form #travel action=(f.path) method="get" {
                        label for="at-slider" { "Time travel" }
                        input #at-slider type="range" min=(f.first) max=(f.last) value=(at) aria-label="event";
                        input #at type="number" name="at" min=(f.first) max=(f.last) value=(at) aria-label="event index";
                        button type="submit" { "Go" }
                        a #live-link href=(f.path) { "Live" }
                    }
                    @if live {
                        span #position.live data-at=(at) { "live · event " span #last { (f.last) } }
                    } @else {
                        span #position.past data-at=(at) {
                            "at event " (at) " of " span #last { (f.last) } " · " (time(f.at_ms))
                        }
                    }
                }
                main #main data-live=(live) data-at=(at)
                    hx-get=[refreshing.then_some(f.refresh)]
                    hx-trigger=[refreshing.then_some("orrery-commit from:body")]
                    hx-select="#main" hx-swap="outerHTML" {
                    (body)
                }
            }
        }
    }
}

pub fn error_page(f: &Frame, message: &str) -> Markup {
    frame(
        f,
        html! { section { h2 { "Cannot show this" } p.error #error { (message) } } },
        false,
    )
}

fn res(used: &Resources, total: &Resources) -> Markup {
    let cpus = |r: &Resources| r.cpus_milli as f64 / 1000.0;
    html! {
        span.res {
            (format!("{:.2}/{:.2} cpus", cpus(used), cpus(total))) " · "
            (used.mem_mb) "/" (total.mem_mb) " MB mem"
            @if total.disk_mb > 0 { " · " (used.disk_mb) "/" (total.disk_mb) " MB disk" }
            @for (name, t) in &total.named_scalars {
                " · " (format!("{:.2}/{:.2} {name}", *used.named_scalars.get(name).unwrap_or(&0) as f64 / 1000.0, *t as f64 / 1000.0))
            }
        }
    }
}

fn state_class(s: &str) -> &'static str {
    match s {
        "TASK_RUNNING" | "REGISTERED" | "CONNECTED" | "HOST_STATE_UP" | "ACCEPT" => "ok",
        "TASK_STAGING"
        | "TASK_STARTING"
        | "TASK_KILLING"
        | "DISCONNECTED"
        | "HOST_STATE_DRAINING"
        | "HOST_STATE_DRAINED"
        | "UNKNOWN" => "warn",
        "TASK_FINISHED" | "TASK_KILLED" | "GONE" | "HOST_STATE_DOWN" => "done",
        _ => "bad",
    }
}

fn badge(s: &str) -> Markup {
    html! { span class=(format!("state {}", state_class(s))) { (s) } }
}

fn task_state(t: &Task) -> &'static str {
    t.state.as_str_name()
}

/// Where the agent keeps a task's sandbox, under its `--work-dir`.
fn sandbox(t: &Task) -> String {
    format!("sandboxes/{}/{}", t.key.framework_id, t.key.task_id)
}

pub struct Masters {
    /// This replica's view of the log's leader (live only).
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub this_id: u64,
}

pub fn overview(c: &Cluster, point: Point, masters: &Masters) -> Markup {
    let mut tasks: Vec<&Task> = c.tasks.values().collect();
    // Live tasks first, then the most recently changed.
    tasks.sort_by_key(|t| (t.is_terminal(), std::cmp::Reverse(t.updated_at_ms)));
    let ended = tasks.iter().filter(|t| t.is_terminal()).count();
    const ENDED_SHOWN: usize = 50;
    let mut ended_seen = 0;
    html! {
        section #masters {
            h2 { "Masters" }
            table {
                tr { th { "leader" } th { "leader address" } th { "term" } th { "commit index" } th { "elected" } }
                @match &c.leader {
                    Some(l) => tr {
                        td.leader { "master " (l.leader_id) }
                        td { (l.addr) @if !l.http_addr.is_empty() { " · http " (l.http_addr) } }
                        td { (l.term) }
                        td #commit-index { (c.applied_index) }
                        td { (time(l.elected_at_ms)) }
                    },
                    None => tr { td colspan="5" { "no leader elected yet" } },
                }
            }
            @if point == Point::Live {
                p.note {
                    "This page is served by master " (masters.this_id)
                    @match masters.leader_id { Some(l) => { ", which knows master " (l) " as the leader of term " (masters.term) }, None => { ", which knows no leader" } }
                    "; " (masters.commit_index) " events applied here."
                }
            }
        }
        section #agents {
            h2 { "Agents (" (c.agents.len()) ")" }
            table {
                tr { th { "agent" } th { "hostname" } th { "region / zone" } th { "state" } th { "host" } th { "resources used / total" } th { "tasks" } }
                @for a in c.agents.values() {
                    @let host = c.hosts.get(&a.hostname).map_or("HOST_STATE_UP", |h| h.state.as_str());
                    tr.agent data-hostname=(a.hostname) {
                        td { code { (a.id) } }
                        td { (a.hostname) br; small { (a.ip) } }
                        td { @match &a.domain { Some(d) => { (d.region) " / " (d.zone) }, None => { "-" } } }
                        td { (badge(a.state.as_str())) }
                        td { (badge(host)) }
                        td { (res(&a.used, &a.total)) }
                        td { (c.tasks_by_agent.get(&a.id).map_or(0, |t| t.iter().filter(|k| c.task(k).is_some_and(|t| !t.is_terminal())).count())) }
                    }
                }
            }
        }
        section #frameworks {
            h2 { "Frameworks (" (c.frameworks.values().filter(|f| !f.removed).count()) ")" }
            table {
                tr { th { "framework" } th { "name" } th { "role" } th { "state" } th { "allocated" } }
                @for f in c.frameworks.values().filter(|f| !f.removed) {
                    tr {
                        td { code { (f.id) } }
                        td { (f.name) }
                        td { (f.role) }
                        td {
                            @if f.connected { (badge("CONNECTED")) } @else { (badge("DISCONNECTED")) }
                            @if f.suppressed { " " span.state.warn { "SUPPRESSED" } }
                        }
                        td { (f.allocated) }
                    }
                }
            }
        }
        section #jobs {
            h2 { "Jobs (" (c.jobs.len()) ")" }
            table {
                tr { th { "job" } th { "instances" } th { "running" } th { "healthy" } th { "tasks" } th {} }
                @for (key, j) in &c.jobs {
                    @let live: Vec<&Task> = c.tasks.values().filter(|t| t.job.as_ref() == Some(key) && !t.is_terminal()).collect();
                    @let running = live.iter().filter(|t| t.state == pb::TaskState::TaskRunning).count();
                    @let healthy = live.iter().filter(|t| t.healthy == Some(true)).count();
                    tr.job data-job=(key.to_string()) {
                        td { (key.to_string()) }
                        td { (j.spec.instances) }
                        td { (running) }
                        td { (healthy) }
                        td {
                            @for t in &live {
                                span.instance title=(format!("{} on {}", t.key.task_id, agent_host(c, t))) {
                                    "#" (t.instance) " " (badge(task_state(t)))
                                    @if t.healthy == Some(false) { " " span.state.bad { "UNHEALTHY" } }
                                }
                                " "
                            }
                        }
                        td {
                            @if (live.len() as u32) < j.spec.instances {
                                a href=(why_link(key, point)) { "why pending?" }
                            }
                        }
                    }
                }
            }
        }
        section #tasks {
            h2 { "Tasks (" (tasks.len() - ended) " live, " (ended) " ended)" }
            table {
                tr { th { "task" } th { "name" } th { "framework" } th { "state" } th { "agent" } th { "sandbox (under the agent's work dir)" } th { "updated" } }
                @for t in &tasks {
                    @if !t.is_terminal() || { ended_seen += 1; ended_seen <= ENDED_SHOWN } {
                        tr.task data-task=(t.key.task_id) {
                            td { code { (t.key.task_id) } }
                            td { (t.name) }
                            td { code { (t.key.framework_id) } }
                            td { (badge(task_state(t))) @if !t.message.is_empty() { br; small { (t.message) } } }
                            td { (agent_host(c, t)) }
                            td { code { (sandbox(t)) } }
                            td { (time(t.updated_at_ms)) }
                        }
                    }
                }
            }
            @if ended > ENDED_SHOWN { p.note { "The " (ENDED_SHOWN) " most recently ended tasks are shown." } }
        }
    }
}

fn agent_host(c: &Cluster, t: &Task) -> String {
    c.agents
        .get(&t.agent_id)
        .map_or_else(|| t.agent_id.to_string(), |a| a.hostname.clone())
}

fn why_link(key: &JobKey, point: Point) -> String {
    let job = key.to_string();
    match point {
        Point::Live => format!("/ui/why?job={job}"),
        Point::At(i) => format!("/ui/why?job={job}&at={i}"),
    }
}

pub fn maintenance(c: &Cluster) -> Markup {
    let secs = |ns: u64| ns / 1_000_000_000;
    html! {
        section #schedule {
            h2 { "Schedule (" (c.schedule.len()) " windows)" }
            table {
                tr { th { "machines" } th { "starts" } th { "lasts" } }
                @for w in &c.schedule {
                    tr {
                        td { @for m in &w.machines { (m.hostname) " (" (m.ip) ") " } }
                        td { (time(w.unavailability.start_ns / 1_000_000)) }
                        td { @match w.unavailability.duration_ns { Some(d) => { (humantime::format_duration(std::time::Duration::from_secs(secs(d)))) }, None => { "until further notice" } } }
                    }
                }
            }
        }
        section #hosts {
            h2 { "Hosts (" (c.hosts.len()) ")" }
            table {
                tr { th { "hostname" } th { "ip" } th { "state" } th { "since" } th { "live tasks (drain progress)" } th { "inverse offers" } }
                @for h in c.hosts.values() {
                    @let live = live_tasks_on_host(c, &h.machine.hostname);
                    tr.host data-hostname=(h.machine.hostname) data-state=(h.state.as_str()) {
                        td { (h.machine.hostname) }
                        td { (h.machine.ip) }
                        td { (badge(h.state.as_str())) }
                        td { (time(h.state_since_ms)) }
                        td {
                            (live)
                            @if h.state.as_str() == "HOST_STATE_DRAINING" { " left to move" }
                        }
                        td {
                            @for o in c.inverse_offers.values().filter(|o| o.hostname == h.machine.hostname) {
                                code { (o.framework_id) } ": " (badge(o.answer.as_str())) " "
                            }
                        }
                    }
                }
            }
            @if c.hosts.is_empty() { p.note { "No host has been scheduled or drained." } }
        }
    }
}

pub struct EventRow {
    pub index: u64,
    pub at_ms: u64,
    pub name: &'static str,
    pub line: String,
    pub principal: String,
}

pub fn timeline(rows: &[EventRow], point: Point, last: u64, note: Option<&str>) -> Markup {
    let at = point.index().unwrap_or(last);
    html! {
        section #timeline {
            h2 { "The log" }
            p.note { "Each row is one committed event; its index opens the cluster as it was right after it." }
            @if let Some(n) = note { p.error { (n) } }
            form.diff action="/ui/diff" method="get" {
                "Compare event " input name="a" type="number" value=(at.saturating_sub(10)) min="0" max=(last);
                " with " input name="b" type="number" value=(at) min="0" max=(last);
                button type="submit" { "Diff" }
            }
            table #events {
                tr { th { "event" } th { "time" } th { "type" } th { "what happened" } th { "by" } }
                @for r in rows.iter().rev() {
                    tr.event class=[(r.index == at).then_some("here")] {
                        td { a href=(format!("/ui/overview?at={}", r.index)) { (r.index) } }
                        td { (time(r.at_ms)) }
                        td { code { (r.name) } }
                        td { (r.line) }
                        td { (r.principal) }
                    }
                }
            }
            @if let Some(first) = rows.first() {
                @if first.index > 1 {
                    p { a href=(format!("/ui/timeline?at={}", first.index - 1)) { "Older events" } }
                }
            }
        }
    }
}

pub fn diff(a: u64, b: u64, changes: &[Change]) -> Markup {
    html! {
        section #diff {
            h2 { "From event " (a) " to event " (b) ": " (changes.len()) " changes" }
            table {
                tr { th { "kind" } th { "id" } th { "at " (a) } th { "at " (b) } }
                @for ch in changes {
                    tr { td { (ch.kind) } td { code { (ch.id) } } td { (ch.before) } td { (ch.after) } }
                }
            }
            @if changes.is_empty() { p.note { "Nothing differs." } }
        }
    }
}

pub fn why(job: &str, lines: &[String]) -> Markup {
    html! {
        section #why {
            h2 { "Why " (job) " waits" }
            ul { @for l in lines { li { (l) } } }
            @if lines.is_empty() { p.note { "Every instance is placed." } }
        }
    }
}

pub const CSS: &str = include_str!("../../ui/orrery.css");
pub const JS: &str = include_str!("../../ui/orrery.js");
pub const HTMX: &str = include_str!("../../ui/htmx-2.0.11.min.js");
