//! `orrery replay`: the event-replay debugger.
//!
//! Reads the committed log from one of three sources and answers from the
//! events alone (the logic is `orrery_events::replay`, pure):
//! - `--data-dir DIR`: a stopped master's data dir (its snapshot and log);
//! - `--log-file FILE`: an exported log (`replay export`), length-prefixed
//!   envelopes (u32 little-endian), as the golden logs are kept;
//! - otherwise `--master ADDRS`: a running master, through `ReadLog`.
//!
//! A point in the log is an event index (`120`) or a time (RFC 3339,
//! `2026-11-21T03:12:00Z`: the last event proposed at or before it).
//! Tables by default, `--json` for tools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use orrery_events::pb::{self, envelope::Payload};
use orrery_events::replay as r;
use orrery_events::{codec, explain, snapshot, Cluster};
use orrery_gateway::client::with_leader;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use serde_json::json;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Read a stopped master's data dir (as given to `orrery master`).
    #[arg(long, conflicts_with = "log_file")]
    data_dir: Option<PathBuf>,
    /// Read an exported log (`orrery replay export FILE`).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Where `state` and `diff` keep their checkpoints (default:
    /// FILE.checkpoints next to a --log-file, DIR.replay-checkpoints next to
    /// a --data-dir), one every --checkpoint-every events.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    #[arg(long, default_value_t = crate::replay_checkpoints::EVERY)]
    checkpoint_every: u64,
    #[command(subcommand)]
    cmd: ReplayCmd,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCmd {
    /// The events, one explained line each.
    Log {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Only events that touch this agent, framework, task, host, job
        /// (ROLE/ENV/NAME) or offer.
        #[arg(long)]
        entity: Option<String>,
        /// Only events of this type (e.g. TaskStatusUpdated).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only events of this API request (its `x-request-id`).
        #[arg(long)]
        request: Option<String>,
    },
    /// The cluster (or one entity) as of a point in the log.
    State {
        #[arg(long)]
        at: String,
        #[arg(long)]
        entity: Option<String>,
    },
    /// Every event that touched an entity.
    History { entity: String },
    /// What changed between two points.
    Diff { a: String, b: String },
    /// Why a job's instances (ROLE/ENV/NAME), or a task, waited.
    WhyPending {
        what: String,
        /// As of this point (default: the end of the log).
        #[arg(long)]
        at: Option<String>,
    },
    /// Replays everything with the invariants after every event; compares
    /// the final digest with the live state's when a master is reachable.
    Check,
    /// Writes the log as a file for `--log-file` (to share or archive).
    Export { file: PathBuf },
}

/// A log as read: an optional starting state (a snapshot) and the events
/// after it.
struct Loaded {
    base: Cluster,
    events: Vec<pb::Envelope>,
    /// The live master's digest at its last applied event, when online.
    live_digest: Option<(u64, Vec<u8>)>,
}

fn decode_events(raw: impl IntoIterator<Item = Vec<u8>>) -> Result<Vec<pb::Envelope>> {
    raw.into_iter()
        .map(|b| codec::decode(&b).map_err(|e| anyhow!("a logged event does not decode: {e}")))
        .collect()
}

async fn load_data_dir(dir: &Path) -> Result<Loaded> {
    let log = orrery_storage::raft::offline::read(dir)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let base = match &log.snapshot {
        Some(s) => snapshot::decode(&s.app_state)
            .map_err(|e| anyhow!("the snapshot in {} does not decode: {e}", dir.display()))?,
        None => Cluster::new(),
    };
    let at: Vec<u64> = log.events.iter().map(|e| e.index).collect();
    let mut events = decode_events(log.events.into_iter().map(|e| e.payload))?;
    // The log assigns each event its index (see `load_online`).
    for (e, at) in events.iter_mut().zip(at) {
        e.index = at;
    }
    // Events the snapshot already holds are history only.
    events.retain(|e| e.index > base.applied_index);
    Ok(Loaded {
        base,
        events,
        live_digest: None,
    })
}

fn load_file(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut raw = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else {
            bail!("{}: a torn length at byte {at}", path.display());
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            bail!("{}: a torn event at byte {at}", path.display());
        };
        raw.push(body.to_vec());
        at += 4 + len;
    }
    Ok(Loaded {
        base: Cluster::new(),
        events: decode_events(raw)?,
        live_digest: None,
    })
}

async fn load_online(masters: &[String]) -> Result<Loaded> {
    let patience = Duration::from_secs(10);
    let mut base: Option<Cluster> = None;
    let mut events = Vec::new();
    let mut from = 1;
    let mut live_digest = None;
    let transport = crate::creds::transport()?;
    loop {
        let (resp, _) = with_leader(&transport, masters, patience, |ch| async move {
            OperatorClient::new(ch)
                .read_log(op::ReadLogRequest { from, max: 10_000 })
                .await
                .map(|r| r.into_inner())
        })
        .await
        .map_err(|e| anyhow!("reading the log: {}", e.message()))?;
        if !resp.snapshot.is_empty() && base.is_none() {
            base = Some(
                snapshot::decode(&resp.snapshot)
                    .map_err(|e| anyhow!("the master's snapshot does not decode: {e}"))?,
            );
        }
        if live_digest.is_none() && !resp.digest.is_empty() {
            live_digest = Some((resp.digest_index, resp.digest.clone()));
        }
        let mut got = decode_events(resp.events)?;
        // The answer is the gap-free run of events from `from`, and the log
        // assigns each its index (as the master's state machine does; what
        // an event says inside was the proposer's guess, 0 for a pre-built
        // one). Going by the run also means a reader can never loop.
        for (i, e) in got.iter_mut().enumerate() {
            e.index = from + i as u64;
        }
        let Some(last) = got.last().map(|e| e.index) else {
            break;
        };
        events.extend(got);
        if last >= resp.last_index {
            break;
        }
        from = last + 1;
        if events.len() > 100_000 && events.len() % 100_000 < 10_000 {
            eprintln!("read {} of {} events", events.len(), resp.last_index);
        }
    }
    let base = base.unwrap_or_default();
    events.retain(|e| e.index > base.applied_index);
    Ok(Loaded {
        base,
        events,
        live_digest,
    })
}

/// A point: an event index, or a time (the last event at or before it).
fn point(text: &str, l: &Loaded) -> Result<u64> {
    if let Ok(i) = text.parse::<u64>() {
        return Ok(i);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| {
        anyhow!(
            "{text:?} is neither an event index nor a time (RFC 3339, like 2026-11-21T03:12:00Z)"
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow!("{text:?} is before 1970"))?
        .as_millis() as u64;
    Ok(l.events
        .iter()
        .take_while(|e| e.proposed_at_ms <= ms)
        .last()
        .map_or(l.base.applied_index, |e| e.index))
}

/// The state after event `at` (with a progress line on long replays).
fn state_at(l: &Loaded, at: u64) -> Result<Cluster> {
    if at < l.base.applied_index {
        bail!(
            "event {at} is before the snapshot this log starts from (event {}); \
             older states are gone from this source",
            l.base.applied_index
        );
    }
    let last = l.events.last().map_or(l.base.applied_index, |e| e.index);
    if at > last {
        bail!("event {at} is past the end of the log (event {last})");
    }
    let mut c = l.base.clone();
    let todo: Vec<&pb::Envelope> = l.events.iter().take_while(|e| e.index <= at).collect();
    let step = (todo.len() / 10).max(1);
    for (n, env) in todo.iter().enumerate() {
        orrery_events::try_apply(&mut c, env).map_err(|e| anyhow!("event {}: {e}", env.index))?;
        if todo.len() >= 1_000_000 && n % step == 0 {
            eprintln!("replayed {n} of {} events", todo.len());
        }
    }
    Ok(c)
}

fn event_line(e: &pb::Envelope) -> (String, String, String) {
    let payload = e.payload.as_ref();
    (
        e.index.to_string(),
        payload.map_or("-", codec::event_name).to_owned(),
        payload.map_or_else(String::new, explain::explain),
    )
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn print_events(events: &[&pb::Envelope], json: bool) {
    if json {
        let v: Vec<_> = events
            .iter()
            .map(|e| {
                let (index, kind, line) = event_line(e);
                json!({"index": index.parse::<u64>().unwrap_or(0), "term": e.term,
                       "time": time(e.proposed_at_ms), "type": kind, "explained": line,
                       "request_id": e.request_id, "principal": e.principal})
            })
            .collect();
        println!("{}", serde_json::Value::from(v));
    } else {
        print!(
            "{}",
            crate::list::table(
                &["INDEX", "TIME", "BY", "TYPE", "WHAT"],
                events
                    .iter()
                    .map(|e| {
                        let (index, kind, line) = event_line(e);
                        // Who asked (the audit trail); "-" for the
                        // master's own decisions and insecure clusters.
                        let by = if e.principal.is_empty() {
                            "-".to_owned()
                        } else {
                            e.principal.clone()
                        };
                        vec![index, time(e.proposed_at_ms), by, kind, line]
                    })
                    .collect(),
            )
        );
    }
}

/// Events touching `entity`, with the state before each (for host lookups).
fn touching<'a>(l: &'a Loaded, entity: &str) -> Result<Vec<&'a pb::Envelope>> {
    let mut c = l.base.clone();
    let mut out = Vec::new();
    for env in &l.events {
        if let Some(p) = &env.payload {
            if r::touches(&c, p, entity) {
                out.push(env);
            }
        }
        orrery_events::try_apply(&mut c, env).map_err(|e| anyhow!("event {}: {e}", env.index))?;
    }
    Ok(out)
}

fn show_state(c: &Cluster, entity: Option<&str>, json: bool) -> Result<()> {
    let mut s = orrery_actors::views::state(c);
    s.commit_index = c.applied_index;
    if let Some(id) = entity {
        s.agents.retain(|a| a.agent_id == id || a.hostname == id);
        s.frameworks.retain(|f| f.framework_id == id);
        s.tasks.retain(|t| {
            t.task_id == id
                || t.framework_id == id
                || t.agent_id == id
                || t.hostname == id
                || format!("{}/{}", t.framework_id, t.task_id) == id
                || t.name.starts_with(&format!("{id}/"))
        });
        let host = c.hosts.get(id);
        let job = c.jobs.iter().find(|(k, _)| k.to_string() == id);
        if s.agents.is_empty()
            && s.frameworks.is_empty()
            && s.tasks.is_empty()
            && host.is_none()
            && job.is_none()
        {
            bail!("nothing named {id:?} exists at event {}", c.applied_index);
        }
        if json {
            let mut v = orrery_gateway::http::state_json(&s);
            if let Some(h) = host {
                v["host"] = json!({"hostname": h.machine.hostname, "ip": h.machine.ip, "state": h.state.as_str()});
            }
            if let Some((k, j)) = job {
                v["job"] = json!({"key": k.to_string(), "version": j.version, "instances": j.spec.instances});
            }
            println!("{v}");
            return Ok(());
        }
        if let Some(h) = host {
            println!(
                "host {} ({}): {}",
                h.machine.hostname,
                h.machine.ip,
                h.state.as_str()
            );
        }
        if let Some((k, j)) = job {
            println!(
                "job {k}: version {}, {} instance(s)",
                j.version, j.spec.instances
            );
        }
    }
    if json {
        println!("{}", orrery_gateway::http::state_json(&s));
        return Ok(());
    }
    println!(
        "as of event {} (term {}), digest {}",
        c.applied_index,
        c.applied_term,
        hex(&orrery_events::digest(c).0)
    );
    if !s.agents.is_empty() {
        print!(
            "{}",
            crate::list::table(
                &["AGENT", "HOSTNAME", "STATE", "TASKS"],
                s.agents
                    .iter()
                    .map(|a| vec![
                        a.agent_id.clone(),
                        a.hostname.clone(),
                        a.state.clone(),
                        a.tasks.to_string()
                    ])
                    .collect()
            )
        );
    }
    if !s.frameworks.is_empty() {
        print!(
            "{}",
            crate::list::table(
                &["FRAMEWORK", "NAME", "ROLE", "CONNECTED"],
                s.frameworks
                    .iter()
                    .map(|f| vec![
                        f.framework_id.clone(),
                        f.name.clone(),
                        f.role.clone(),
                        f.connected.to_string()
                    ])
                    .collect()
            )
        );
    }
    if !s.tasks.is_empty() {
        print!(
            "{}",
            crate::list::table(
                &["FRAMEWORK", "TASK", "STATE", "HOST"],
                s.tasks
                    .iter()
                    .map(|t| {
                        let state = pb::TaskState::try_from(t.state)
                            .map_or("?".to_owned(), |s| s.as_str_name().to_owned());
                        vec![
                            t.framework_id.clone(),
                            t.task_id.clone(),
                            state,
                            t.hostname.clone(),
                        ]
                    })
                    .collect()
            )
        );
    }
    Ok(())
}

fn print_diff(a: u64, b: u64, changes: &[r::Change], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = changes
            .iter()
            .map(|c| json!({"kind": c.kind, "id": c.id, "before": c.before, "after": c.after}))
            .collect();
        println!("{}", serde_json::Value::from(v));
    } else {
        println!("from event {a} to event {b}: {} change(s)", changes.len());
        print!(
            "{}",
            crate::list::table(
                &["KIND", "ID", "BEFORE", "AFTER"],
                changes
                    .iter()
                    .map(|c| vec![
                        c.kind.to_owned(),
                        c.id.clone(),
                        c.before.clone(),
                        c.after.clone()
                    ])
                    .collect()
            )
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(masters: Option<&str>, args: &ReplayArgs, json: bool) -> Result<()> {
    // A stopped master's data dir or an exported log: states from
    // checkpoints next to the source, not from the start.
    if args.data_dir.is_some() || args.log_file.is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = |i: u64| -> Result<Cluster> {
            let every = args.checkpoint_every;
            let (c, _) = match (&args.data_dir, &args.log_file) {
                (Some(data), _) => {
                    let dir = args
                        .checkpoints
                        .clone()
                        .unwrap_or_else(|| crate::replay_checkpoints::default_dir_for_data(data));
                    rt.block_on(crate::replay_checkpoints::state_at_data_dir_cached(
                        data, i, &dir, every,
                    ))?
                }
                (None, Some(file)) => {
                    let dir = args
                        .checkpoints
                        .clone()
                        .unwrap_or_else(|| crate::replay_checkpoints::default_dir(file));
                    crate::replay_checkpoints::state_at(file, i, &dir, every)?
                }
                (None, None) => bail!("no data dir or log file"),
            };
            Ok(c)
        };
        let at = |p: &str| p.parse::<u64>().ok();
        match &args.cmd {
            ReplayCmd::State { at: p, entity } if at(p).is_some() => {
                return show_state(&state(at(p).unwrap_or(0))?, entity.as_deref(), json);
            }
            ReplayCmd::Diff { a, b } if at(a).is_some() && at(b).is_some() => {
                let (a, b) = (at(a).unwrap_or(0), at(b).unwrap_or(0));
                return print_diff(a, b, &r::diff(&state(a)?, &state(b)?), json);
            }
            _ => {}
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let l = rt.block_on(async {
        match (&args.data_dir, &args.log_file) {
            (Some(dir), _) => load_data_dir(dir).await,
            (None, Some(file)) => load_file(file),
            (None, None) => {
                let masters = crate::list::parse_masters(masters).map_err(|e| {
                    anyhow!("{e} (or read a stopped master's --data-dir, or a --log-file)")
                })?;
                load_online(&masters).await
            }
        }
    })?;
    let last = l.events.last().map_or(l.base.applied_index, |e| e.index);
    match &args.cmd {
        ReplayCmd::Log {
            from,
            to,
            entity,
            kind,
            request,
        } => {
            let from = from
                .as_deref()
                .map(|f| point(f, &l))
                .transpose()?
                .unwrap_or(0);
            let to = to
                .as_deref()
                .map(|t| point(t, &l))
                .transpose()?
                .unwrap_or(u64::MAX);
            let pool: Vec<&pb::Envelope> = match entity {
                Some(e) => touching(&l, e)?,
                None => l.events.iter().collect(),
            };
            let shown: Vec<&pb::Envelope> = pool
                .into_iter()
                .filter(|e| e.index >= from && e.index <= to)
                .filter(|e| request.as_deref().is_none_or(|r| e.request_id == r))
                .filter(|e| {
                    kind.as_deref().is_none_or(|k| {
                        e.payload
                            .as_ref()
                            .is_some_and(|p| codec::event_name(p).eq_ignore_ascii_case(k))
                    })
                })
                .collect();
            print_events(&shown, json);
        }
        ReplayCmd::State { at, entity } => {
            let at = point(at, &l)?;
            show_state(&state_at(&l, at)?, entity.as_deref(), json)?;
        }
        ReplayCmd::History { entity } => {
            let shown = touching(&l, entity)?;
            if shown.is_empty() {
                bail!("no event touched {entity:?}");
            }
            print_events(&shown, json);
        }
        ReplayCmd::Diff { a, b } => {
            let (a, b) = (point(a, &l)?, point(b, &l)?);
            print_diff(a, b, &r::diff(&state_at(&l, a)?, &state_at(&l, b)?), json)?;
        }
        ReplayCmd::WhyPending { what, at } => {
            let at = at
                .as_deref()
                .map(|a| point(a, &l))
                .transpose()?
                .unwrap_or(last);
            let c = state_at(&l, at)?;
            let lines = if what.split('/').count() == 3
                && c.jobs.keys().any(|k| k.to_string() == *what)
            {
                let key = c
                    .jobs
                    .keys()
                    .find(|k| k.to_string() == *what)
                    .cloned()
                    .ok_or_else(|| anyhow!("no job {what}"))?;
                r::why_pending_job(&c, &key, c.last_proposed_at_ms)
            } else {
                // A task: the events that decided its fate, up to `at`.
                let mut lines: Vec<String> = touching(&l, what)?
                    .into_iter()
                    .filter(|e| e.index <= at)
                    .map(|e| {
                        let (index, _, line) = event_line(e);
                        format!("{index}: {line}")
                    })
                    .collect();
                if lines.is_empty() {
                    bail!("neither a job nor a task named {what:?} appears up to event {at}");
                }
                if !l.events.iter().take_while(|e| e.index <= at).any(|e| {
                    matches!(&e.payload, Some(Payload::TaskLaunched(t)) if t.task_id == *what || format!("{}/{}", t.framework_id, t.task_id) == *what)
                }) {
                    lines.push("it was never launched: a framework's task waits on its framework's accept".into());
                }
                lines
            };
            if json {
                println!("{}", serde_json::Value::from(lines));
            } else {
                println!("{what} as of event {at}:");
                for line in lines {
                    println!("  {line}");
                }
            }
        }
        ReplayCmd::Check => {
            let mut c = l.base.clone();
            let n = l.events.len();
            r::check(&mut c, &l.events).map_err(|f| anyhow!("replay check FAILED at {f}"))?;
            let digest = hex(&orrery_events::digest(&c).0);
            let mut compared = String::new();
            if let Some((index, live)) = &l.live_digest {
                if *index <= c.applied_index {
                    let at = state_at(&l, *index)?;
                    let replayed = orrery_events::digest(&at).0.to_vec();
                    if replayed != *live {
                        bail!(
                            "replay check FAILED: at event {index} the replayed digest {} differs from the live state's {}",
                            hex(&replayed),
                            hex(live)
                        );
                    }
                    compared = format!("; equal to the live state's digest at event {index}");
                }
            }
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "events": n, "last_index": c.applied_index, "digest": digest, "live": !compared.is_empty()})
                );
            } else {
                println!(
                    "ok: {n} event(s) replayed through event {} with every invariant after each; digest {digest}{compared}",
                    c.applied_index
                );
            }
        }
        ReplayCmd::Export { file } => {
            if l.base.applied_index > 0 {
                bail!(
                    "this source starts from a snapshot at event {}: an export would not replay from the start",
                    l.base.applied_index
                );
            }
            let mut out = Vec::new();
            for e in &l.events {
                let bytes = codec::encode(e);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            std::fs::write(file, out).with_context(|| format!("writing {}", file.display()))?;
            println!("wrote {} event(s) to {}", l.events.len(), file.display());
        }
    }
    Ok(())
}
