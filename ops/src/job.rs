//! `orrery job create|update|kill|status|list`: Aurora-style jobs from TOML
//! files, through the operator API of whichever master leads.
//!
//! Why the `toml` crate with serde: the format users already write for
//! Cargo and Nomad, and `deny_unknown_fields` makes a typo an error naming
//! the key and its line rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use orrery_events::pb;
use orrery_gateway::client::with_leader;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use serde::Deserialize;

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Create a job from a TOML file.
    Create { file: std::path::PathBuf },
    /// Replace a job's spec from a TOML file.
    Update {
        file: std::path::PathBuf,
        #[command(flatten)]
        dry: crate::dryrun::DryRunArgs,
    },
    /// Kill every instance of a job and remove it: ROLE/ENV/NAME.
    Kill { key: String },
    /// Every instance: state, host, zone, and why pending ones wait.
    Status { key: String },
    /// Every job, with running and pending counts.
    List,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    #[serde(default)]
    cpus: f64,
    #[serde(default)]
    mem: u64,
    #[serde(default)]
    disk: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    role: String,
    env: String,
    name: String,
    instances: u32,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    resources: ResourcesFile,
    #[serde(default)]
    constraints: Vec<Vec<String>>,
    #[serde(default = "yes")]
    service: bool,
    #[serde(default)]
    max_task_failures: u32,
    #[serde(default)]
    region_aware: bool,
    #[serde(default)]
    max_unavailable: u32,
    /// Draining a host: replace an instance elsewhere before killing it.
    #[serde(default)]
    start_before_kill: bool,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    #[serde(default)]
    health_check: Option<HealthCheckFile>,
    #[serde(default)]
    update_strategy: Option<UpdateFile>,
    #[serde(default)]
    restart_policy: Option<RestartFile>,
    #[serde(default)]
    partition_policy: Option<PartitionFile>,
}

/// `[partition_policy]`: Aurora's policy for an instance whose agent is
/// unreachable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionFile {
    #[serde(default = "yes")]
    reschedule: bool,
    #[serde(default = "zero_s")]
    delay: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    #[serde(default = "one_s")]
    initial_backoff: String,
    #[serde(default = "sixty_s")]
    max_backoff: String,
}

fn one_s() -> String {
    "1s".into()
}
fn sixty_s() -> String {
    "60s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateFile {
    #[serde(default = "one")]
    batch_size: u32,
    #[serde(default = "zero_s")]
    watch: String,
    #[serde(default = "yes")]
    rollback_on_failure: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFile {
    /// command, http or tcp.
    kind: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    port_index: u32,
    #[serde(default = "ten_s")]
    interval: String,
    #[serde(default = "twenty_s")]
    timeout: String,
    #[serde(default = "zero_s")]
    grace_period: String,
    #[serde(default = "three")]
    consecutive_failures: u32,
}

fn ten_s() -> String {
    "10s".into()
}
fn twenty_s() -> String {
    "20s".into()
}
fn zero_s() -> String {
    "0s".into()
}
fn three() -> u32 {
    3
}

fn yes() -> bool {
    true
}

/// Parses a job file into the spec the master validates.
pub fn parse_job(text: &str, origin: &str) -> Result<pb::JobSpec> {
    let f: JobFile = toml::from_str(text).map_err(|e| anyhow!("{origin}: {e}"))?;
    if f.instances == 0 {
        bail!("{origin}: instances must be at least 1");
    }
    let command = match (&f.command, &f.argv) {
        (Some(c), None) => pb::CommandInfo {
            shell: c.clone(),
            argv: vec![],
            environment: vec![],
        },
        (None, Some(a)) => pb::CommandInfo {
            shell: String::new(),
            argv: a.clone(),
            environment: vec![],
        },
        _ => bail!("{origin}: give exactly one of `command` (a shell line) or `argv` (a list)"),
    };
    let mut command = command;
    command.environment = f
        .env_vars
        .iter()
        .map(|(name, value)| pb::EnvironmentVariable {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    let cpus_milli = orrery_events::resources::cpus_milli_from_f64(f.resources.cpus)
        .map_err(|e| anyhow!("{origin}: resources.cpus: {e}"))?;
    let mut constraints = Vec::new();
    for (i, c) in f.constraints.iter().enumerate() {
        let (field, operator, value) = match c.as_slice() {
            [f, o] => (f, o, String::new()),
            [f, o, v] => (f, o, v.clone()),
            _ => bail!(
                "{origin}: constraint #{}: expected [field, operator] or [field, operator, value], got {} items",
                i + 1,
                c.len()
            ),
        };
        constraints.push(pb::Constraint {
            field: field.clone(),
            operator: operator.clone(),
            value,
        });
    }
    let health_check = match &f.health_check {
        None => None,
        Some(h) => {
            let ms = |field: &str, text: &str| -> Result<u64> {
                humantime::parse_duration(text)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|_| anyhow!("{origin}: health_check.{field} {text:?} is not a duration (like 500ms, 10s)"))
            };
            Some(pb::HealthCheck {
                kind: h.kind.clone(),
                command: h.command.clone(),
                path: h.path.clone(),
                port_index: h.port_index,
                interval_ms: ms("interval", &h.interval)?,
                timeout_ms: ms("timeout", &h.timeout)?,
                grace_period_ms: ms("grace_period", &h.grace_period)?,
                consecutive_failures: h.consecutive_failures,
            })
        }
    };
    let duration = |field: &str, text: &str| -> Result<u64> {
        humantime::parse_duration(text)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| anyhow!("{origin}: {field} {text:?} is not a duration (like 500ms, 10s)"))
    };
    let restart_policy = match &f.restart_policy {
        None => None,
        Some(r) => Some(pb::RestartPolicy {
            initial_backoff_ms: duration("restart_policy.initial_backoff", &r.initial_backoff)?,
            max_backoff_ms: duration("restart_policy.max_backoff", &r.max_backoff)?,
        }),
    };
    let update_strategy = match &f.update_strategy {
        None => None,
        Some(u) => {
            if u.batch_size == 0 {
                bail!("{origin}: update_strategy.batch_size must be at least 1");
            }
            let watch = humantime::parse_duration(&u.watch).map_err(|_| {
                anyhow!(
                    "{origin}: update_strategy.watch {:?} is not a duration (like 30s)",
                    u.watch
                )
            })?;
            Some(pb::UpdateStrategy {
                batch_size: u.batch_size,
                watch_ms: watch.as_millis() as u64,
                rollback_on_failure: u.rollback_on_failure,
            })
        }
    };
    let partition_policy = match &f.partition_policy {
        None => None,
        Some(p) => Some(pb::PartitionPolicy {
            reschedule: p.reschedule,
            delay_ms: duration("partition_policy.delay", &p.delay)?,
        }),
    };
    Ok(pb::JobSpec {
        partition_policy,
        restart_policy,
        update_strategy,
        health_check,
        key: Some(pb::JobKey {
            role: f.role,
            env: f.env,
            name: f.name,
        }),
        instances: f.instances,
        command: Some(command),
        resources: Some(pb::Resources {
            cpus_milli,
            mem_mb: f.resources.mem,
            disk_mb: f.resources.disk,
            ports: vec![],
            ..Default::default()
        }),
        constraints,
        region_aware: f.region_aware,
        max_unavailable: f.max_unavailable,
        service: f.service,
        max_task_failures: f.max_task_failures,
        start_before_kill: f.start_before_kill,
    })
}

pub fn parse_key(text: &str) -> Result<pb::JobKey> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [role, env, name] if !role.is_empty() && !env.is_empty() && !name.is_empty() => {
            Ok(pb::JobKey {
                role: role.to_string(),
                env: env.to_string(),
                name: name.to_string(),
            })
        }
        _ => bail!("{text:?} is not a job key: ROLE/ENV/NAME"),
    }
}

fn key_text(k: &Option<pb::JobKey>) -> String {
    k.as_ref()
        .map(|k| format!("{}/{}/{}", k.role, k.env, k.name))
        .unwrap_or_default()
}

async fn ask<T, F, Fut>(masters: &[String], call: F) -> Result<T>
where
    F: FnMut(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    with_leader(
        &crate::creds::transport()?,
        masters,
        Duration::from_secs(10),
        call,
    )
    .await
    .map(|(v, _)| v)
    .map_err(|e| anyhow!("{}", e.message()))
}

/// `msg` with this invocation's idempotency key: the CLI's retries (a
/// leader change, a timeout) of one create, update or kill take effect once.
fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = key.parse() {
        r.metadata_mut().insert("idempotency-key", v);
    }
    r
}

pub fn run(masters: Option<&str>, cmd: &JobCmd, json: bool) -> Result<()> {
    let masters = crate::list::parse_masters(masters)?;
    let idem = orrery_storage::security::random_token().map_err(|e| anyhow!("{e}"))?;
    let idem = idem.as_str();
    let spec_of = |file: &std::path::Path| -> Result<pb::JobSpec> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the job file {}", file.display()))?;
        parse_job(&text, &file.display().to_string())
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cmd {
            JobCmd::Update { file, dry } if dry.dry_run => {
                let req = op::PlanJobUpdateRequest {
                    spec: Some(spec_of(file)?),
                    assumptions: Some(dry.assumptions()?),
                };
                let what = format!(
                    "updating {}",
                    key_text(&req.spec.as_ref().and_then(|s| s.key.clone()))
                );
                let r = ask(&masters, |ch| {
                    let req = req.clone();
                    async move {
                        OperatorClient::new(ch)
                            .plan_job_update(req)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
                print!("{}", crate::dryrun::render(&what, &r, json));
            }
            JobCmd::Create { file } | JobCmd::Update { file, .. } => {
                let spec = spec_of(file)?;
                let create = matches!(cmd, JobCmd::Create { .. });
                let r = ask(&masters, |ch| {
                    let s = keyed(spec.clone(), idem);
                    async move {
                        let mut c = OperatorClient::new(ch);
                        if create {
                            c.create_job(s).await
                        } else {
                            c.update_job(s).await
                        }
                        .map(|r| r.into_inner())
                    }
                })
                .await?;
                println!(
                    "job {} {} (log index {})",
                    key_text(&spec.key),
                    if create { "created" } else { "updated" },
                    r.committed_index
                );
            }
            JobCmd::Kill { key } => {
                let k = parse_key(key)?;
                ask(&masters, |ch| {
                    let k = keyed(k.clone(), idem);
                    async move { OperatorClient::new(ch).kill_job(k).await }
                })
                .await?;
                println!("job {key} killed");
            }
            JobCmd::Status { key } => {
                let k = parse_key(key)?;
                let s = ask(&masters, |ch| {
                    let k = k.clone();
                    async move {
                        OperatorClient::new(ch)
                            .job_status(k)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
                print!("{}", render_status(key, &s, json));
            }
            JobCmd::List => {
                let l = ask(&masters, |ch| async move {
                    OperatorClient::new(ch)
                        .list_jobs(op::ListJobsRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
                print!("{}", render_list(&l, json));
            }
        }
        Ok(())
    })
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub fn render_status(key: &str, s: &op::JobStatusResponse, json: bool) -> String {
    if json {
        let v = serde_json::json!({
            "key": key,
            "version": s.version,
            "updating": s.updating,
            "instances": s.instances.iter().map(|i| serde_json::json!({
                "instance": i.instance, "state": i.state, "task_id": i.task_id,
                "hostname": i.hostname, "region": i.region, "zone": i.zone, "reason": i.reason,
            })).collect::<Vec<_>>(),
        });
        return format!("{v}\n");
    }
    let service = s.spec.as_ref().is_some_and(|x| x.service);
    let mut out = format!(
        "{key}  version {}{}  {}  {} instances\n",
        s.version,
        if s.updating { " (updating)" } else { "" },
        if service { "service" } else { "batch" },
        s.instances.len()
    );
    out.push_str(&crate::list::table(
        &["INSTANCE", "STATE", "TASK", "HOST", "ZONE", "WHY"],
        s.instances
            .iter()
            .map(|i| {
                vec![
                    i.instance.to_string(),
                    i.state.clone(),
                    dash(&i.task_id).to_owned(),
                    dash(&i.hostname).to_owned(),
                    dash(&i.zone).to_owned(),
                    i.reason.clone(),
                ]
            })
            .collect(),
    ));
    out
}

pub fn render_list(l: &op::JobList, json: bool) -> String {
    if json {
        let v: Vec<_> = l
            .jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "key": key_text(&j.key), "instances": j.instances, "running": j.running,
                    "pending": j.pending, "service": j.service, "version": j.version,
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::from(v));
    }
    crate::list::table(
        &["JOB", "KIND", "INSTANCES", "RUNNING", "PENDING", "VERSION"],
        l.jobs
            .iter()
            .map(|j| {
                vec![
                    key_text(&j.key),
                    if j.service { "service" } else { "batch" }.to_owned(),
                    j.instances.to_string(),
                    j.running.to_string(),
                    j.pending.to_string(),
                    j.version.to_string(),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
role = "www"
env = "prod"
name = "hello"
instances = 3
command = "sleep 1000"
constraints = [["@zone", "GROUP_BY", "3"], ["hostname", "UNIQUE"]]

[resources]
cpus = 0.5
mem = 128
"#;

    #[test]
    fn job_files_parse_and_bad_ones_say_where() {
        let s = parse_job(GOOD, "hello.toml").unwrap();
        assert_eq!(s.instances, 3);
        assert!(s.service);
        assert_eq!(s.resources.as_ref().unwrap().cpus_milli, 500);
        assert_eq!(s.constraints.len(), 2);
        assert_eq!(s.constraints[1].value, "");

        let e = parse_job(
            &GOOD.replace("instances = 3", "instances = 0"),
            "hello.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hello.toml") && e.contains("instances"), "{e}");
        let s = parse_job(
            &format!("{GOOD}\n[partition_policy]\ndelay = \"5m\"\n"),
            "f",
        )
        .unwrap();
        let p = s.partition_policy.unwrap();
        assert_eq!((p.reschedule, p.delay_ms), (true, 300_000));
        let e = parse_job(
            &format!("{GOOD}\n[partition_policy]\ndelay = \"later\"\n"),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("partition_policy.delay"), "{e}");
        let typo = GOOD.replace("instances = 3", "instanses = 3");
        let e = parse_job(&typo, "hello.toml").unwrap_err().to_string();
        assert!(e.contains("hello.toml") && e.contains("instanses"), "{e}");
        let e = parse_job(
            &GOOD.replace("[\"hostname\", \"UNIQUE\"]", "[\"hostname\"]"),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("constraint #2"), "{e}");
        let s = parse_job(
            &format!(
                "{GOOD}\n[health_check]\nkind = \"http\"\npath = \"/health\"\ninterval = \"2s\"\n"
            ),
            "f",
        )
        .unwrap();
        let hc = s.health_check.unwrap();
        assert_eq!(
            (hc.kind.as_str(), hc.interval_ms, hc.consecutive_failures),
            ("http", 2000, 3)
        );
        let e = parse_job(
            &format!("{GOOD}\n[health_check]\nkind = \"http\"\ninterval = \"often\"\n"),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("health_check.interval"), "{e}");
        let s = parse_job(
            &format!("{GOOD}\n[update_strategy]\nbatch_size = 2\nwatch = \"5s\"\n"),
            "f",
        )
        .unwrap();
        let u = s.update_strategy.unwrap();
        assert_eq!(
            (u.batch_size, u.watch_ms, u.rollback_on_failure),
            (2, 5000, true)
        );
        let s = parse_job(
            &format!("{GOOD}\n[restart_policy]\ninitial_backoff = \"2s\"\nmax_backoff = \"1m\"\n"),
            "f",
        )
        .unwrap();
        let r = s.restart_policy.unwrap();
        assert_eq!((r.initial_backoff_ms, r.max_backoff_ms), (2_000, 60_000));
        let e = parse_job(
            &format!("{GOOD}\n[restart_policy]\nmax_backoff = \"soon\"\n"),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("restart_policy.max_backoff"), "{e}");
        let e = parse_job(&GOOD.replace("command = \"sleep 1000\"", ""), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of"), "{e}");
        assert!(parse_key("www/prod/hello").is_ok());
        assert!(parse_key("www/prod").is_err());
    }
}
