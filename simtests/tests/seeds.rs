//! The simulator in CI: a fixed set of seeds under every oracle, the same
//! seed replaying exactly, and each oracle catching its broken rule.
//!
//! A failing seed prints its report and the command that replays it.

use orrery_simtests::{run, Config, Report, Sabotage};

/// The fixed seeds `.ci/run` checks (the issue asks for at least 50).
const SEEDS: u64 = 50;

fn show(r: &Report) -> String {
    let mut s = format!("seed {}:", r.seed);
    for v in &r.violations {
        s.push_str(&format!("\n  oracle \"{}\": {}", v.oracle, v.detail));
    }
    for m in &r.masters {
        s.push_str(&format!("\n  {m}"));
    }
    s.push_str(&format!("\n  reproduce: {}", r.reproduce()));
    s
}

/// Every report passed; else each failing seed's report, and the command
/// that replays it.
fn assert_all_passed(reports: &[Report]) {
    let failed: Vec<String> = reports.iter().filter(|r| !r.passed()).map(show).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Runs seeds on two threads (CI has two cores).
fn run_seeds(seeds: impl Iterator<Item = u64> + Clone + Send, cfg: Config) -> Vec<Report> {
    let all: Vec<u64> = seeds.collect();
    let (a, b): (Vec<u64>, Vec<u64>) = all.iter().partition(|s| *s % 2 == 0);
    std::thread::scope(|scope| {
        let cfg_b = cfg.clone();
        let hb = scope.spawn(move || {
            b.into_iter()
                .map(|s| run(s, cfg_b.clone(), None))
                .collect::<Vec<_>>()
        });
        let mut out: Vec<Report> = a.into_iter().map(|s| run(s, cfg.clone(), None)).collect();
        out.extend(hb.join().expect("the second thread ran"));
        out.sort_by_key(|r| r.seed);
        out
    })
}

#[test]
fn fifty_seeds_keep_every_oracle_and_converge() {
    let reports = run_seeds(0..SEEDS, Config::ci());
    let s = reports.iter().fold((0, 0, 0, 0, 0, 0), |acc, r| {
        (
            acc.0 + r.stats.committed,
            acc.1 + r.stats.elections,
            acc.2 + r.stats.agent_crashes,
            acc.3 + r.stats.master_crashes,
            acc.4 + r.stats.partitions,
            acc.5 + r.stats.drains,
        )
    });
    eprintln!(
        "{SEEDS} seeds: {} events committed, {} elections, {} agent crashes, {} master crashes, {} partitions, {} drains",
        s.0, s.1, s.2, s.3, s.4, s.5
    );
    assert_all_passed(&reports);
    // The faults did happen (a simulator that injects nothing proves
    // nothing).
    assert!(s.1 > SEEDS, "elections: {}", s.1);
    assert!(s.2 > SEEDS, "agent crashes: {}", s.2);
    assert!(s.3 > 0, "master crashes: {}", s.3);
    assert!(s.4 > 0, "partitions: {}", s.4);
    assert!(s.5 > 0, "drains: {}", s.5);
}

/// The safety valves on (`Config::valves`): rack blips across failovers
/// hold agent removals (and lost racks are retired by the operator), and
/// frameworks retry keyed calls that are answered once.
#[test]
fn valve_seeds_hold_removals_and_answer_keyed_retries_once() {
    const VALVE_SEEDS: std::ops::Range<u64> = 100..116;
    let reports = run_seeds(VALVE_SEEDS, Config::valves());
    let s = reports.iter().fold((0, 0, 0, 0, 0), |acc, r| {
        (
            acc.0 + r.stats.rack_blips,
            acc.1 + r.stats.removals_held,
            acc.2 + r.stats.marked_gone,
            acc.3 + r.stats.retries,
            acc.4 + r.stats.idempotent_replays,
        )
    });
    eprintln!(
        "{} valve seeds: {} rack blips, {} ticks with removals held, {} agents retired, {} keyed retries ({} answered from their key)",
        VALVE_SEEDS.end - VALVE_SEEDS.start,
        s.0,
        s.1,
        s.2,
        s.3,
        s.4
    );
    assert_all_passed(&reports);
    assert!(s.0 > 0, "rack blips: {}", s.0);
    assert!(s.1 > 0, "ticks with removals held: {}", s.1);
    assert!(s.2 > 0, "agents retired: {}", s.2);
    assert!(s.3 > 0, "keyed retries: {}", s.3);
    assert!(s.4 > 0, "keyed retries answered from their key: {}", s.4);
}

/// A group that grows and shrinks (`Config::membership`): five replicas,
/// three voters at first; the operator promotes and removes voters one at
/// a time while masters crash. Every oracle must still hold.
#[test]
fn membership_seeds_grow_and_shrink_the_group_and_keep_every_oracle() {
    const MEMBERSHIP_SEEDS: std::ops::Range<u64> = 200..216;
    let reports = run_seeds(MEMBERSHIP_SEEDS, Config::membership());
    let s = reports.iter().fold((0, 0, 0, 0), |acc, r| {
        (
            acc.0 + r.stats.membership_changes,
            acc.1 + r.stats.elections,
            acc.2 + r.stats.joined_leaders,
            acc.3 + r.stats.master_crashes,
        )
    });
    eprintln!(
        "{} membership seeds: {} changes of the group, {} elections ({} won by a master that joined), {} master crashes",
        MEMBERSHIP_SEEDS.end - MEMBERSHIP_SEEDS.start,
        s.0,
        s.1,
        s.2,
        s.3
    );
    assert_all_passed(&reports);
    assert!(
        s.0 > MEMBERSHIP_SEEDS.end - MEMBERSHIP_SEEDS.start,
        "changes: {}",
        s.0
    );
    assert!(s.2 > 0, "elections won by a joined master: {}", s.2);
}

/// Frozen masters and one-way links (`Config::liveness`): leaders freeze
/// with their links open for up to three reregistration timeouts while
/// links are cut one way; agents find the next leader by their ping
/// timeout, and no task is lost while its agent and process live.
#[test]
fn liveness_seeds_freeze_leaders_and_lose_no_live_task() {
    const LIVENESS_SEEDS: std::ops::Range<u64> = 300..316;
    let reports = run_seeds(LIVENESS_SEEDS, Config::liveness());
    let s = reports.iter().fold((0, 0, 0, 0), |acc, r| {
        (
            acc.0 + r.stats.master_freezes,
            acc.1 + r.stats.agent_ping_timeouts,
            acc.2 + r.stats.elections,
            acc.3 + r.stats.partitions,
        )
    });
    eprintln!(
        "{} liveness seeds: {} master freezes, {} agent ping timeouts, {} elections, {} partitions",
        LIVENESS_SEEDS.end - LIVENESS_SEEDS.start,
        s.0,
        s.1,
        s.2,
        s.3
    );
    assert_all_passed(&reports);
    assert!(
        s.0 > LIVENESS_SEEDS.end - LIVENESS_SEEDS.start,
        "freezes: {}",
        s.0
    );
    assert!(s.1 > 0, "agent ping timeouts: {}", s.1);
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(7, Config::ci(), None);
    let b = run(7, Config::ci(), None);
    assert_eq!(a.last_index, b.last_index);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.stats.steps, b.stats.steps);
    assert_eq!(a.sim_ms, b.sim_ms);
    let c = run(8, Config::ci(), None);
    assert_ne!(a.digest, c.digest, "another seed, another run");
}

/// Runs seeds with `sabotage` until its oracle fires; fails if none does.
fn caught(sabotage: Sabotage, cfg: Config) {
    let want = sabotage.caught_by();
    let mut seen = Vec::new();
    for seed in 0..12 {
        let r = run(seed, cfg.clone(), Some(sabotage));
        if r.violations.iter().any(|v| v.oracle == want) {
            return;
        }
        seen.push(format!(
            "seed {seed}: {:?}",
            r.violations.iter().map(|v| v.oracle).collect::<Vec<_>>()
        ));
    }
    panic!(
        "{sabotage:?} broke a rule but the oracle \"{want}\" never fired:\n{}",
        seen.join("\n")
    );
}

/// A shorter fault phase: these only need the broken rule to show.
fn short() -> Config {
    Config {
        fault_ms: 40_000,
        ..Config::ci()
    }
}

#[test]
fn oracle_acked_events_catches_a_vote_that_ignores_the_log() {
    let mut cfg = Config::ci();
    cfg.faults.master_crash_per_s = 0.1;
    cfg.faults.partition_per_s = 0.1;
    caught(Sabotage::VoteIgnoresLog, cfg);
}

#[test]
fn oracle_replica_digests_catches_a_follower_that_forgets_acks() {
    caught(Sabotage::FollowerForgetsAcks, short());
}

#[test]
fn oracle_overcommit_catches_an_inflated_launch() {
    caught(Sabotage::InflateLaunch, short());
}

#[test]
fn oracle_single_placement_catches_a_launch_sent_twice() {
    caught(Sabotage::DuplicateLaunch, short());
}

#[test]
fn oracle_no_silent_loss_catches_an_agent_that_loses_a_task() {
    caught(Sabotage::AgentLosesTask, short());
}

#[test]
fn oracle_maintenance_placement_catches_offers_of_draining_hosts() {
    let mut cfg = short();
    cfg.faults.maintenance_per_s = 0.2;
    caught(Sabotage::AllocatorIgnoresMaintenance, cfg);
}

#[test]
fn oracle_remote_offers_catches_an_allocator_that_ignores_regions() {
    caught(Sabotage::AllocatorIgnoresRegions, short());
}

#[test]
fn oracle_job_sla_catches_a_drain_that_ignores_max_unavailable() {
    let mut cfg = short();
    cfg.faults.maintenance_per_s = 0.2;
    // More instances than agents: a drained host holds several of a job's
    // instances, which a drain may only take down one at a time.
    cfg.instances_per_job = 16;
    caught(Sabotage::DrainIgnoresSla, cfg);
}

#[test]
fn oracle_status_order_catches_a_skipped_update() {
    caught(Sabotage::SkipFrameworkUpdate, short());
}

#[test]
fn oracle_liveness_catches_a_job_scheduler_that_stops() {
    caught(Sabotage::JobSchedulerStops, Config::ci());
}

#[test]
fn oracle_removal_limit_catches_a_master_that_ignores_it() {
    caught(
        Sabotage::IgnoreRemovalLimit,
        Config {
            fault_ms: 60_000,
            ..Config::valves()
        },
    );
}

#[test]
fn oracle_keyed_calls_catches_a_master_that_ignores_keys() {
    caught(
        Sabotage::IgnoreIdempotencyKeys,
        Config {
            fault_ms: 40_000,
            ..Config::valves()
        },
    );
}

#[test]
fn oracle_no_loss_while_alive_catches_agents_without_a_ping_timeout() {
    let mut cfg = Config::liveness();
    // Leaders frozen longer than the reregistration deadline, often.
    cfg.faults.master_freeze_per_s = 0.05;
    cfg.faults.master_freeze_ms = (30_000, 60_000);
    caught(Sabotage::AgentIgnoresPingTimeout, cfg);
}

#[test]
fn every_sabotage_names_an_oracle_that_exists() {
    let names: Vec<&str> = orrery_simtests::oracles::all(&Config::ci())
        .iter()
        .map(|o| o.name())
        .collect();
    for s in Sabotage::ALL {
        assert!(names.contains(&s.caught_by()), "{s:?} → {}", s.caught_by());
    }
}
