//! # orrery: the command-line entry point
//!
//! Owns argument parsing (clap), exit codes (0 ok, 1 refused, 2 bad usage)
//! and wiring. Business rules live in `orrery-events`; this file only
//! turns flags into calls.
//!
//! # Layout
//! - `master`: one replica of the master group (its share of the log, the
//!   active master's actors when it leads, gRPC and HTTP).
//! - `list`: `agent|task|framework list` against the active master.
//! - `dev`: the first-run experience. Until the master and agent daemons
//!   exist (later issues), it drives the real core in-process against one
//!   simulated agent sized like this machine and prints the event log it
//!   writes, with the state digest checked by a replay.

mod agent;
mod bench_agent;
mod bench_alloc;
mod bench_log;
mod bench_mesos;
mod bench_overload;
mod bench_replay;
mod certs;
mod creds;
mod dev;
mod dryrun;
mod host;
mod job;
mod list;
mod logging;
mod master;
mod masters;
mod replay;
mod replay_checkpoints;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Orrery: a cluster manager. Agents offer resources, frameworks and jobs
/// place work, and every change is an event in one replicated log.
#[derive(Debug, Parser)]
#[command(name = "orrery", version, about, propagate_version = true)]
struct Cli {
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The masters to ask (any of them; the leader is found), as
    /// ADDR[,ADDR...].
    #[arg(long, global = true, env = "ORRERY_MASTER")]
    master: Option<String>,
    /// How long to wait for a master's connection (TCP, TLS, HTTP/2): a
    /// master that is frozen or cut off costs at most this, then the
    /// leader is asked of all masters at once.
    #[arg(long, global = true, env = "ORRERY_CONNECT_TIMEOUT", default_value = "1s", value_parser = positive_duration)]
    connect_timeout: std::time::Duration,
    /// How long to wait for a master's answer to one call before asking
    /// the others who leads.
    #[arg(long, global = true, env = "ORRERY_CALL_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    call_timeout: std::time::Duration,
    #[command(flatten)]
    creds: creds::CredFlags,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run Orrery on this machine for a first look (see README: what `dev`
    /// runs today, and what it will run).
    Dev(dev::DevArgs),
    /// Run one replica of the master group (1, 3 or 5 replicas share one
    /// replicated log).
    Master(Box<MasterCmd>),
    /// The masters' group: list, promote a learner, remove a master.
    #[command(subcommand)]
    Masters(masters::MastersCmd),
    /// Run the agent on this machine: it offers the machine's resources to
    /// the masters (--master) and runs tasks under `orrery executor`.
    #[command(alias = "agents")]
    Agent(AgentCmd),
    /// Runs one task for the agent (started by the agent, not by hand).
    #[command(hide = true)]
    Executor(agent::ExecutorFlags),
    /// Host maintenance (Peloton's CLI): maintenance start|complete, query.
    #[command(subcommand)]
    Host(host::HostCmd),
    /// Aurora-style jobs: create, update, kill, status, list.
    #[command(subcommand)]
    Job(job::JobCmd),
    /// Tasks the active master knows.
    #[command(subcommand)]
    Task(ListCmd),
    /// Frameworks the active master knows.
    #[command(subcommand)]
    Framework(ListCmd),
    /// Benchmarks (see README and BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Certificates and tokens: a CA, master/agent/client certificates.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// The event-replay debugger: the log, the state at any point, an
    /// entity's history, diffs, why work waited, and a full check.
    Replay(replay::ReplayArgs),
}

/// `orrery agent [FLAGS]` runs the agent; `orrery agent list` lists the
/// agents the active master knows.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentCmd {
    #[command(subcommand)]
    sub: Option<AgentSub>,
    #[command(flatten)]
    run: agent::AgentArgs,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct MasterCmd {
    #[command(subcommand)]
    sub: Option<MasterSub>,
    #[command(flatten)]
    run: Option<master::MasterArgs>,
}

#[derive(Debug, Subcommand)]
enum MasterSub {
    /// Starts a new replica that joins a running group as a learner: --peers
    /// lists masters already in it. Promote it with `orrery masters add ID`
    /// once `orrery masters list` shows it caught up.
    Join(master::MasterArgs),
}

#[derive(Debug, Subcommand)]
enum AgentSub {
    /// A table (or --json) of what the active master knows.
    List,
    /// Retire agents for good (Mesos' MARK_AGENT_GONE; their tasks end
    /// GONE): the override when the master holds removals after a leader
    /// change (`--recovery-agent-removal-limit`).
    MarkGone {
        /// Agent ids (as `orrery agents list` shows them).
        agent_ids: Vec<String>,
        /// Every agent whose removal the master holds now.
        #[arg(long)]
        held: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ListCmd {
    /// A table (or --json) of what the active master knows.
    List,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Durable appends/s and commit latency of the replicated log, with etcd
    /// side by side.
    Log(bench_log::BenchLogArgs),
    /// One allocation cycle at 10k and 20k agents, and committed placements/s.
    Alloc(bench_alloc::BenchAllocArgs),
    /// 1,000 real tasks on one agent: launch time, and recovery after kill -9.
    Agent(bench_agent::BenchAgentArgs),
    Replay(bench_replay::BenchReplayArgs),
    /// Offers accepted/s through Mesos' HTTP scheduler API and through
    /// gRPC, side by side against one master.
    Mesos(bench_mesos::BenchMesosArgs),
    /// The master's memory and latency at its sustainable call rate and at
    /// 10x it, with --max-pending-commands bounding the backlog.
    Overload(bench_overload::BenchOverloadArgs),
}

/// A duration flag (`500ms`, `15s`, `2h`) longer than zero.
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration (like 500ms, 15s, 2h): {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    creds::init(cli.creds.clone());
    orrery_gateway::client::set_deadlines(orrery_gateway::client::Deadlines {
        connect: cli.connect_timeout,
        call: cli.call_timeout,
    });
    let result = match cli.command {
        Cmd::Dev(args) => dev::run(&args, cli.json),
        Cmd::Master(cmd) => match (&cmd.sub, &cmd.run) {
            (Some(MasterSub::Join(args)), _) => master::run(args, true),
            (None, Some(args)) => master::run(args, false),
            (None, None) => Err(anyhow::anyhow!(
                "orrery master needs --id and --listen (see `orrery master --help`)"
            )),
        },
        Cmd::Masters(cmd) => masters::run(cli.master.as_deref(), &cmd, cli.json),
        Cmd::Agent(AgentCmd { sub: None, run }) => agent::run(&run, cli.master.as_deref()),
        Cmd::Agent(AgentCmd {
            sub: Some(AgentSub::List),
            ..
        }) => list::run(cli.master.as_deref(), list::What::Agents, cli.json),
        Cmd::Agent(AgentCmd {
            sub: Some(AgentSub::MarkGone { agent_ids, held }),
            ..
        }) => list::mark_gone(cli.master.as_deref(), &agent_ids, held, cli.json),
        Cmd::Executor(flags) => agent::run_executor(&flags),
        Cmd::Task(ListCmd::List) => list::run(cli.master.as_deref(), list::What::Tasks, cli.json),
        Cmd::Framework(ListCmd::List) => {
            list::run(cli.master.as_deref(), list::What::Frameworks, cli.json)
        }
        Cmd::Job(cmd) => job::run(cli.master.as_deref(), &cmd, cli.json),
        Cmd::Host(cmd) => host::run(cli.master.as_deref(), &cmd, cli.json),
        Cmd::Bench(BenchCmd::Log(args)) => bench_log::run(&args, cli.json),
        Cmd::Bench(BenchCmd::Agent(args)) => bench_agent::run(&args, cli.json),
        Cmd::Bench(BenchCmd::Alloc(args)) => bench_alloc::run(&args, cli.json),
        Cmd::Bench(BenchCmd::Replay(args)) => bench_replay::run(&args, cli.json),
        Cmd::Bench(BenchCmd::Mesos(args)) => bench_mesos::run(&args, cli.json),
        Cmd::Bench(BenchCmd::Overload(args)) => bench_overload::run(&args, cli.json),
        Cmd::Certs(cmd) => certs::run(&cmd),
        Cmd::Replay(args) => replay::run(cli.master.as_deref(), &args, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orrery: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The global TLS flags do not meet a subcommand's own arguments of the
    /// same name (`job status KEY` once panicked on `--key`'s id).
    #[test]
    fn global_tls_flags_and_subcommand_arguments_parse_together() {
        let cli = Cli::try_parse_from([
            "orrery",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "job",
            "status",
            "www/prod/web",
        ])
        .expect("parses");
        assert_eq!(
            cli.creds.key.as_deref(),
            Some(std::path::Path::new("c.key"))
        );
        assert!(matches!(cli.command, Cmd::Job(_)));
        for args in [
            &["orrery", "--insecure", "job", "kill", "a/b/c"][..],
            &["orrery", "--insecure", "host", "query"][..],
            &["orrery", "--insecure", "replay", "log"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.creds.insecure, "{args:?}");
        }
    }
}
