//! # orrery-simtests: deterministic whole-cluster simulation
//!
//! One u64 seed drives a whole Orrery cluster — 1, 3 or 5 masters
//! replicating one log by Raft's rules, up to 10,000 agents, frameworks,
//! the built-in job scheduler, an operator — through simulated time, a
//! simulated network (delay, loss, duplication, reordering, partitions,
//! one-way too), agent crashes with and without their work dir, master
//! crashes and failovers, clock jumps, maintenance drains and malformed
//! calls. Then the faults stop and the cluster must converge.
//!
//! It drives the real core: `orrery_events::decide` and `apply`, the
//! allocator, `jobs::plan`, the maintenance and recovery rules, and the
//! real `effects_of` for what a committed event sends to whom. What is
//! modelled rather than run: the actors' plumbing (sessions, timers),
//! openraft (a model of Raft's rules, in [`raft`]) and the agent's
//! executors (tasks are timers, not processes). The process tests in
//! `ops/tests` cover those for real.
//!
//! Oracles ([`oracles`], one per file) look after every step; a failure
//! prints the seed and the command that replays it:
//! `cargo run -p orrery-simtests -- --seed N`.
//!
//! The RNG is `rand_chacha`'s ChaCha8: its output for a seed is fixed
//! across versions (the crate documents it as a reproducible generator),
//! which a seed that must replay years later needs.

pub mod agent;
pub mod config;
pub mod framework;
pub mod master;
pub mod net;
pub mod operator;
pub mod oracles;
pub mod raft;
pub mod sabotage;
pub mod sim;

pub use config::Config;
pub use sabotage::Sabotage;
pub use sim::{Report, Sim};

/// Runs one seed with `cfg`.
pub fn run(seed: u64, cfg: Config, sabotage: Option<Sabotage>) -> Report {
    Sim::new(seed, cfg, sabotage).run()
}
