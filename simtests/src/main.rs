//! `orrery-simtests`: run simulated clusters from seeds.
//!
//! ```text
//! cargo run -p orrery-simtests -- --seed 7              # replay one run
//! cargo run -p orrery-simtests -- --seeds 0..50         # a range
//! cargo run -p orrery-simtests -- --soak                # seeds until stopped
//! cargo run --release -p orrery-simtests -- --scale     # the scale run
//! ```
//!
//! The scale run measures the master projection's memory with
//! `stats_alloc` (an instrumented global allocator; no unsafe code here):
//! the bytes a freshly decoded copy of the final state holds, per task and
//! per agent.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use orrery_simtests::{Config, Report, Sabotage};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[derive(Parser, Debug)]
#[command(about = "Deterministic whole-cluster simulation of Orrery")]
struct Args {
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Run seeds from 0 (or --seed) until stopped or one fails.
    #[arg(long)]
    soak: bool,
    /// The scale run: 10,000 agents, 100,000 tasks, an hour of faults.
    #[arg(long)]
    scale: bool,
    /// The safety valves on (`Config::valves`): a removal limit and rate,
    /// frameworks retrying keyed calls, more failovers and partitions.
    #[arg(long, conflicts_with = "scale")]
    valves: bool,
    /// A group that grows and shrinks (`Config::membership`): five masters,
    /// three voters at first, voters promoted and removed during the faults.
    #[arg(long, conflicts_with_all = ["scale", "valves"])]
    membership: bool,
    /// Frozen masters and one-way links (`Config::liveness`): leaders
    /// freeze (SIGSTOP) with their links open while links are cut one way.
    #[arg(long, conflicts_with_all = ["scale", "valves", "membership"])]
    liveness: bool,
    /// Override the number of agents (with --scale: tasks and instances
    /// shrink in proportion).
    #[arg(long)]
    agents: Option<usize>,
    /// Override the fault phase, in simulated seconds.
    #[arg(long)]
    fault_secs: Option<u64>,
    /// Print the committed events and the deliveries whose text contains
    /// this (a task id, an agent id, a hostname).
    #[arg(long)]
    trace: Option<String>,
    /// Break a rule on purpose (see sabotage.rs), to watch an oracle fire.
    #[arg(long, value_parser = parse_sabotage)]
    sabotage: Option<Sabotage>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range like 0..50"))?;
    let a: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if b <= a {
        return Err(format!("the range {s:?} is empty"));
    }
    Ok((a, b))
}

fn parse_sabotage(s: &str) -> Result<Sabotage, String> {
    Sabotage::parse(s).ok_or_else(|| {
        format!(
            "{s:?} is not a sabotage; one of: {}",
            Sabotage::ALL.map(|x| format!("{x:?}")).join(", ")
        )
    })
}

fn config(args: &Args) -> Config {
    let mut cfg = if args.scale {
        Config::scale()
    } else if args.valves {
        Config::valves()
    } else if args.membership {
        Config::membership()
    } else if args.liveness {
        Config::liveness()
    } else {
        Config::ci()
    };
    if let Some(n) = args.agents {
        if args.scale {
            // A smaller scale run keeps the scale run's proportions: tasks
            // and instances per agent.
            let part = |x: usize| (x * n / cfg.agents.max(1)).max(2);
            cfg.tasks_per_framework = part(cfg.tasks_per_framework);
            cfg.instances_per_job = part(cfg.instances_per_job as usize) as u32;
            cfg.max_unavailable = part(cfg.max_unavailable as usize) as u32;
            // The state oracles still run about once per simulated minute.
            cfg.check_every = part(cfg.check_every as usize) as u64;
        }
        cfg.agents = n;
    }
    if let Some(s) = args.fault_secs {
        cfg.fault_ms = s * 1_000;
    }
    cfg
}

fn print(report: &Report, wall: std::time::Duration) {
    let s = &report.stats;
    println!(
        "seed {}: {} in {:.2} s wall, {} s simulated; {} steps, {} commands decided ({} refused), {} events committed; {} elections, {} agent crashes ({} wiped), {} master crashes, {} partitions ({} rack blips), {} clock jumps, {} drains, {} malformed calls, {} stream breaks, {} keyed retries ({} answered from their key), {} ticks with removals held ({} agents retired), {} changes of the masters' group ({} elections won by a master that joined); {} agents, {} tasks in the final state",
        report.seed,
        if report.passed() { "ok" } else { "FAILED" },
        wall.as_secs_f64(),
        report.sim_ms / 1_000,
        s.steps,
        s.decided,
        s.rejected,
        s.committed,
        s.elections,
        s.agent_crashes,
        s.agent_wipes,
        s.master_crashes,
        s.partitions,
        s.rack_blips,
        s.clock_jumps,
        s.drains,
        s.bad_inputs,
        s.stream_breaks,
        s.retries,
        s.idempotent_replays,
        s.removals_held,
        s.marked_gone,
        s.membership_changes,
        s.joined_leaders,
        report.agents,
        report.tasks,
    );
    for v in &report.violations {
        println!("  oracle \"{}\": {}", v.oracle, v.detail);
    }
    if !report.passed() {
        for m in &report.masters {
            println!("  {m}");
        }
        println!("  reproduce: {}", report.reproduce());
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = config(&args);
    if args.scale {
        return scale(&args, cfg);
    }
    let seeds: Box<dyn Iterator<Item = u64>> = match (args.seed, args.seeds, args.soak) {
        (_, Some((a, b)), false) => Box::new(a..b),
        (start, None, true) => Box::new(start.unwrap_or(0)..),
        (Some(seed), None, false) => Box::new(std::iter::once(seed)),
        (None, None, false) => Box::new(0..50),
        (_, Some(_), true) => {
            eprintln!("error: --seeds and --soak cannot be used together");
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    let mut ran = 0;
    for seed in seeds {
        let t = Instant::now();
        let mut sim = orrery_simtests::Sim::new(seed, cfg.clone(), args.sabotage);
        sim.trace = args.trace.clone();
        let report = sim.run();
        print(&report, t.elapsed());
        ran += 1;
        if !report.passed() {
            failed += 1;
            if args.soak {
                break;
            }
        }
    }
    println!("{ran} seeds, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn scale(args: &Args, cfg: Config) -> ExitCode {
    let seed = args.seed.unwrap_or(1);
    let t = Instant::now();
    let mut sim = orrery_simtests::Sim::new(seed, cfg, args.sabotage);
    sim.progress_ms = Some(300_000);
    // Bytes a freshly decoded copy of a state holds (the projection as a
    // master that just loaded it would hold it).
    let held = |c: &orrery_events::Cluster| -> usize {
        let bytes = orrery_events::snapshot::encode(c);
        let region = Region::new(GLOBAL);
        let copy = orrery_events::snapshot::decode(&bytes);
        let change = region.change();
        drop(copy);
        change
            .bytes_allocated
            .saturating_sub(change.bytes_deallocated)
    };
    let (report, memory) = sim.run_with(|c| {
        let mut no_tasks = c.clone();
        no_tasks.tasks = Default::default();
        no_tasks.rebuild_derived();
        (held(c), held(&no_tasks), c.agents.len(), c.tasks.len())
    });
    let wall = t.elapsed();
    print(&report, wall);
    let s = &report.stats;
    let core = s.core_ns as f64 / 1e9;
    println!(
        "core throughput: {} events committed in {:.1} s of decide + apply on the leader: {:.0} events/s, {:.0} commands decided/s ({:.0} events/s over the whole wall time, simulation included)",
        s.committed,
        core,
        s.committed as f64 / core.max(1e-9),
        s.decided as f64 / core.max(1e-9),
        s.committed as f64 / wall.as_secs_f64()
    );
    let (all, without_tasks, agents, tasks) = memory;
    println!(
        "projection memory: {all} bytes in all; {without_tasks} without the tasks: {:.0} bytes per agent; the {tasks} tasks add {} bytes: {:.0} bytes per task",
        without_tasks as f64 / agents.max(1) as f64,
        all.saturating_sub(without_tasks),
        all.saturating_sub(without_tasks) as f64 / tasks.max(1) as f64,
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
