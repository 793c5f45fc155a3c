//! `--dry-run` for `orrery host maintenance start` and `orrery job update`
//! (Nomad's `job plan`): the flags, and the report the master's dry run
//! returns, as text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use orrery_proto::operator as op;

#[derive(Debug, Args, Clone, Default)]
pub struct DryRunArgs {
    /// Change nothing: run it through the master's core on a copy of the
    /// current state and print which tasks move where, which jobs go below
    /// their SLA, and how long it takes.
    #[arg(long)]
    pub dry_run: bool,
    /// Dry run: how long a new task takes to be RUNNING (and healthy).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", requires = "dry_run")]
    pub task_start: Duration,
    /// Dry run: how far ahead to look (at most 24h).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h", requires = "dry_run")]
    pub horizon: Duration,
    /// Dry run: assume frameworks accept inverse offers at once (otherwise
    /// their tasks wait for the master's drain grace).
    #[arg(long, requires = "dry_run")]
    pub frameworks_accept: bool,
}

impl DryRunArgs {
    pub fn assumptions(&self) -> Result<op::DryRunAssumptions> {
        let day = Duration::from_secs(24 * 3_600);
        for (flag, d) in [
            ("--task-start", self.task_start),
            ("--horizon", self.horizon),
        ] {
            if d > day {
                anyhow::bail!(
                    "{flag} {} is longer than 24h",
                    humantime::format_duration(d)
                );
            }
        }
        if self.horizon.is_zero() {
            anyhow::bail!("--horizon must be more than 0");
        }
        Ok(op::DryRunAssumptions {
            task_start_seconds: self.task_start.as_secs_f64(),
            horizon_seconds: self.horizon.as_secs_f64(),
            frameworks_accept_inverse_offers: self.frameworks_accept,
        })
    }
}

/// Seconds from the start of the dry run ("+1m 5s"; negative: never).
fn at(s: f64) -> String {
    if s < 0.0 {
        "never".to_owned()
    } else {
        format!("+{}", dur(s))
    }
}

fn dur(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0).round() as u64)).to_string()
}

/// The report for a person (`what`: "draining h1, h2", "updating www/prod/web").
pub fn render(what: &str, r: &op::DryRunReport, json: bool) -> String {
    if json {
        return render_json(r);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dry run: {what}, from the state at log index {} (nothing was changed)",
        r.from_index
    );
    let _ = writeln!(out, "\nmoves:");
    if r.moves.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for m in &r.moves {
        let who = if m.job.is_empty() {
            format!("framework {} task {}", m.framework_id, m.task_id)
        } else {
            format!("{} #{} (task {})", m.job, m.instance, m.task_id)
        };
        let to = if m.to_host.is_empty() {
            if m.job.is_empty() {
                "not replaced by Orrery (its framework decides)".to_owned()
            } else {
                "no replacement placed".to_owned()
            }
        } else {
            format!(
                "-> {} (task {}, running {})",
                m.to_host,
                m.to_task_id,
                at(m.running_after_seconds)
            )
        };
        let _ = writeln!(
            out,
            "  {who} on {}: stopped {} ({}); {to}",
            m.from_host,
            at(m.stopped_after_seconds),
            m.why
        );
    }
    let _ = writeln!(out, "\nbelow SLA:");
    if r.below_sla.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for b in &r.below_sla {
        let _ = writeln!(
            out,
            "  {}: {} of {} available at {} (max_unavailable {}){}",
            b.job,
            b.fewest_available,
            b.instances,
            at(b.after_seconds),
            b.max_unavailable,
            if b.already_before {
                "; already below before"
            } else {
                ""
            }
        );
    }
    if !r.hosts.is_empty() {
        let _ = writeln!(out, "\nhosts:");
        for h in &r.hosts {
            let _ = writeln!(
                out,
                "  {}: {} (drained {})",
                h.hostname,
                h.state,
                at(h.drained_after_seconds)
            );
        }
    }
    if !r.outcome.is_empty() {
        let _ = writeln!(out, "\nupdate: {}", r.outcome);
    }
    let _ = writeln!(out);
    if r.done {
        let _ = writeln!(out, "done after {}", dur(r.done_after_seconds));
    } else {
        let _ = writeln!(
            out,
            "not done within {}; still waiting:",
            dur(r.simulated_seconds)
        );
        for w in &r.waiting {
            let _ = writeln!(out, "  {w}");
        }
    }
    if let Some(a) = &r.assumptions {
        let _ = writeln!(
            out,
            "assumed: tasks run {} after launch; frameworks {} inverse offers",
            dur(a.task_start_seconds),
            if a.frameworks_accept_inverse_offers {
                "accept"
            } else {
                "never answer"
            }
        );
    }
    out
}

fn render_json(r: &op::DryRunReport) -> String {
    let moves: Vec<_> = r
        .moves
        .iter()
        .map(|m| {
            serde_json::json!({
                "framework_id": m.framework_id, "task_id": m.task_id,
                "job": m.job, "instance": m.instance,
                "from_host": m.from_host, "to_host": m.to_host, "to_task_id": m.to_task_id,
                "stopped_after_seconds": m.stopped_after_seconds,
                "running_after_seconds": (m.running_after_seconds >= 0.0).then_some(m.running_after_seconds),
                "why": m.why,
            })
        })
        .collect();
    let below: Vec<_> = r
        .below_sla
        .iter()
        .map(|b| {
            serde_json::json!({
                "job": b.job, "instances": b.instances, "max_unavailable": b.max_unavailable,
                "fewest_available": b.fewest_available, "after_seconds": b.after_seconds,
                "already_before": b.already_before,
            })
        })
        .collect();
    let hosts: Vec<_> = r
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "hostname": h.hostname, "state": h.state,
                "drained_after_seconds": (h.drained_after_seconds >= 0.0).then_some(h.drained_after_seconds),
            })
        })
        .collect();
    let v = serde_json::json!({
        "from_index": r.from_index,
        "moves": moves,
        "below_sla": below,
        "hosts": hosts,
        "done": r.done,
        "done_after_seconds": r.done.then_some(r.done_after_seconds),
        "outcome": r.outcome,
        "waiting": r.waiting,
        "simulated_seconds": r.simulated_seconds,
    });
    format!("{v:#}\n")
}
