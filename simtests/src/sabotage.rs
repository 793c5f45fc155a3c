//! Deliberately broken rules, one per oracle: each oracle's test runs the
//! simulator with its rule broken and must see that oracle fire (an oracle
//! that cannot fail proves nothing).

/// A rule the simulator breaks on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sabotage {
    /// Raft's vote ignores whether the candidate's log is up to date, so a
    /// stale replica can win and drop committed entries.
    VoteIgnoresLog,
    /// One follower's apply forgets acknowledgements.
    FollowerForgetsAcks,
    /// A launch takes 64 times the cpus its offer held.
    InflateLaunch,
    /// The master sends one launch to a second agent as well.
    DuplicateLaunch,
    /// An agent loses one task without reporting it.
    AgentLosesTask,
    /// The allocator offers hosts in maintenance.
    AllocatorIgnoresMaintenance,
    /// The allocator treats every framework as REGION_AWARE.
    AllocatorIgnoresRegions,
    /// Drains ignore max_unavailable.
    DrainIgnoresSla,
    /// The master skips one status update on a framework's stream.
    SkipFrameworkUpdate,
    /// The job scheduler stops once the faults stop.
    JobSchedulerStops,
    /// After a leader change, every late agent is removed, past the
    /// removal limit.
    IgnoreRemovalLimit,
    /// The master decides a retried keyed call again.
    IgnoreIdempotencyKeys,
    /// Agents have no ping timeout: they stay with a master gone silent
    /// (frozen) and never look for the new leader.
    AgentIgnoresPingTimeout,
}

impl Sabotage {
    pub const ALL: [Sabotage; 13] = [
        Sabotage::VoteIgnoresLog,
        Sabotage::FollowerForgetsAcks,
        Sabotage::InflateLaunch,
        Sabotage::DuplicateLaunch,
        Sabotage::AgentLosesTask,
        Sabotage::AllocatorIgnoresMaintenance,
        Sabotage::AllocatorIgnoresRegions,
        Sabotage::DrainIgnoresSla,
        Sabotage::SkipFrameworkUpdate,
        Sabotage::JobSchedulerStops,
        Sabotage::IgnoreRemovalLimit,
        Sabotage::IgnoreIdempotencyKeys,
        Sabotage::AgentIgnoresPingTimeout,
    ];

    /// The oracle that must catch it.
    pub fn caught_by(self) -> &'static str {
        use crate::oracles::*;
        match self {
            Sabotage::VoteIgnoresLog => acked_events::NAME,
            Sabotage::FollowerForgetsAcks => replica_digests::NAME,
            Sabotage::InflateLaunch => overcommit::NAME,
            Sabotage::DuplicateLaunch => single_placement::NAME,
            Sabotage::AgentLosesTask => no_silent_loss::NAME,
            Sabotage::AllocatorIgnoresMaintenance => maintenance_placement::NAME,
            Sabotage::AllocatorIgnoresRegions => remote_offers::NAME,
            Sabotage::DrainIgnoresSla => job_sla::NAME,
            Sabotage::SkipFrameworkUpdate => status_order::NAME,
            Sabotage::JobSchedulerStops => liveness::NAME,
            Sabotage::IgnoreRemovalLimit => removal_limit::NAME,
            Sabotage::IgnoreIdempotencyKeys => idempotency::NAME,
            Sabotage::AgentIgnoresPingTimeout => no_loss_while_alive::NAME,
        }
    }

    pub fn parse(s: &str) -> Option<Sabotage> {
        Sabotage::ALL
            .into_iter()
            .find(|x| format!("{x:?}").eq_ignore_ascii_case(s))
    }
}
