//! `orrery agent` and `orrery executor`: flags to `AgentConfig` /
//! `ExecutorArgs`, then the daemon in `orrery_actors::agent`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use orrery_actors::agent::executor::{self, ExecutorArgs};
use orrery_actors::agent::flags;
use orrery_actors::agent::runner::{self, AgentConfig, Recover};

use crate::master::parse_duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RecoverFlag {
    Reconnect,
    Cleanup,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the agent keeps its checkpoint (meta/) and the task sandboxes
    /// (required to run the agent).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The hostname to register (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// The IP to register (default: what the hostname resolves to).
    #[arg(long)]
    ip: Option<String>,
    /// Where to serve `GET /health`, e.g. 127.0.0.1:5051.
    #[arg(long)]
    http: Option<String>,
    /// What this agent offers, Mesos' form:
    /// 'cpus:4;mem:8192;disk:20000;ports:[31000-32000]' (default: detected).
    #[arg(long)]
    resources: Option<String>,
    /// Attributes, 'rack:r1;os:linux'.
    #[arg(long, default_value = "")]
    attributes: String,
    /// The fault domain, Mesos' JSON:
    /// '{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}}'.
    #[arg(long)]
    domain: Option<String>,
    /// reconnect: adopt the previous run's executors; cleanup: kill them,
    /// clear the checkpoint and exit.
    #[arg(long, value_enum, default_value = "reconnect")]
    recover: RecoverFlag,
    /// true: any corrupt checkpoint stops the agent (killing nothing);
    /// false: recover what can be, report the rest LOST.
    #[arg(long, default_value = "true")]
    strict: String,
    /// How long executors wait for a restarting agent before they kill
    /// their task and exit.
    #[arg(long, default_value = "15mins")]
    recovery_timeout: String,
    /// Between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, default_value = "3s")]
    kill_grace: String,
    /// Log format on stderr.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn ip_of(hostname: &str) -> String {
    use std::net::ToSocketAddrs;
    (hostname, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .map_or_else(|| "127.0.0.1".into(), |a| a.ip().to_string())
}

pub fn config(args: &AgentArgs, masters: Option<&str>) -> Result<AgentConfig> {
    let masters = crate::list::parse_masters(masters)?;
    let Some(work_dir) = args.work_dir.clone() else {
        bail!("--work-dir is required: where the agent keeps its checkpoint and sandboxes");
    };
    let strict = match args.strict.as_str() {
        "true" => true,
        "false" => false,
        other => bail!("--strict {other:?} is not true or false"),
    };
    let recovery_timeout = parse_duration("--recovery-timeout", &args.recovery_timeout)?;
    if recovery_timeout.is_zero() {
        bail!("--recovery-timeout must be longer than zero");
    }
    let kill_grace = parse_duration("--kill-grace", &args.kill_grace)?;
    let hostname = args.hostname.clone().unwrap_or_else(this_hostname);
    let ip = match &args.ip {
        Some(ip) => {
            ip.parse::<std::net::IpAddr>()
                .with_context(|| format!("--ip {ip:?} is not an IP address"))?;
            ip.clone()
        }
        None => ip_of(&hostname),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("--work-dir {}: cannot create it", work_dir.display()))?;
    let resources = match &args.resources {
        Some(r) => flags::resources(r).map_err(|e| anyhow!(e))?,
        None => flags::detect(&work_dir),
    };
    let http = match &args.http {
        Some(h) => Some(
            h.parse()
                .with_context(|| format!("--http {h:?} is not IP:PORT"))?,
        ),
        None => None,
    };
    let transport = match crate::creds::flags().tls()? {
        None => orrery_actors::client::Transport::Plain,
        Some(tls) => {
            if tls.principal() != &orrery_storage::security::Principal::Agent(hostname.clone()) {
                bail!(
                    "--cert is the certificate of {}; this agent (hostname {hostname:?}) needs the certificate of agent:{hostname} (orrery certs agent --host {hostname})",
                    tls.principal()
                );
            }
            orrery_actors::client::Transport::Tls(tls)
        }
    };
    Ok(AgentConfig {
        masters,
        transport,
        work_dir,
        hostname,
        ip,
        resources,
        attributes: flags::attributes(&args.attributes).map_err(|e| anyhow!(e))?,
        domain: match &args.domain {
            Some(d) => Some(flags::domain(d).map_err(|e| anyhow!(e))?),
            None => None,
        },
        recover: match args.recover {
            RecoverFlag::Reconnect => Recover::Reconnect,
            RecoverFlag::Cleanup => Recover::Cleanup,
        },
        strict,
        recovery_timeout,
        kill_grace,
        http,
        executor_bin: std::env::current_exe().context("finding the orrery binary for executors")?,
    })
}

pub fn run(args: &AgentArgs, masters: Option<&str>) -> Result<()> {
    crate::logging::init(&args.log_format)?;
    let cfg = config(args, masters)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(runner::run(cfg, crate::master::shutdown_signal()))
        .map_err(|e| anyhow!("agent: {e}"))
}

/// `orrery executor` (started by the agent, not by hand).
#[derive(Debug, Args)]
pub struct ExecutorFlags {
    #[arg(long)]
    task_dir: PathBuf,
    #[arg(long)]
    sandbox: PathBuf,
    #[arg(long)]
    heartbeat: PathBuf,
    #[arg(long)]
    recovery_timeout_ms: u64,
    #[arg(long, default_value_t = 3000)]
    kill_grace_ms: u64,
}

pub fn run_executor(f: &ExecutorFlags) -> Result<()> {
    executor::run(ExecutorArgs {
        task_dir: f.task_dir.clone(),
        sandbox: f.sandbox.clone(),
        heartbeat: f.heartbeat.clone(),
        recovery_timeout: Duration::from_millis(f.recovery_timeout_ms),
        kill_grace: Duration::from_millis(f.kill_grace_ms),
    })
    .map_err(|e| anyhow!("executor: {e}"))
}
