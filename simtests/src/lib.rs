//! # orrery-simtests: deterministic whole-cluster simulation
//!
//! Will own the simulator of the simtests issue: one u64 seed drives
//! simulated time, a simulated network (delay, loss, duplication,
//! reordering, partitions), agent crashes and master failovers against the
//! real core (`orrery_events::decide` / `apply`), with invariant oracles
//! after every step and a liveness phase after the faults stop.
//!
//! **Not finished**: a placeholder until the simtests issue lands. The
//! core's own property tests (events/tests/properties.rs) already drive
//! random command streams through decide/apply with the invariants on.
