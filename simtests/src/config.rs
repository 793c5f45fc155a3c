//! What one simulated run looks like: the cluster's size, how long the
//! faults last, and how often each fault strikes.
//!
//! Every knob has a preset: [`Config::ci`] (the small clusters `.ci/run`
//! checks, each step under every oracle) and [`Config::scale`] (the
//! 10,000-agent run of BENCHMARKS.md, with the state oracles sampled).

/// Milliseconds of simulated time.
pub type Ms = u64;

#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// A unary call (request or reply) is lost; the caller retries.
    pub loss: f64,
    /// A unary call is delivered twice.
    pub duplicate: f64,
    /// Network delay, drawn per message: unary calls are reordered freely,
    /// streams keep their order.
    pub delay_min_ms: Ms,
    pub delay_max_ms: Ms,
    /// A stream message is lost: the stream breaks and its client
    /// reconnects.
    pub stream_break: f64,
    /// Per second of simulated time: a partition starts (one-way half the
    /// time) between a random group of nodes and the masters.
    pub partition_per_s: f64,
    pub partition_ms: (Ms, Ms),
    /// Per second: an agent process crashes (kill -9); half of the crashes
    /// also wipe its work dir (no checkpoint: its tasks die with it).
    pub agent_crash_per_s: f64,
    pub agent_down_ms: (Ms, Ms),
    /// Per second: a master replica crashes; it restarts with its log.
    pub master_crash_per_s: f64,
    pub master_down_ms: (Ms, Ms),
    /// Per second: a master's clock jumps (forward or back, up to this).
    pub clock_jump_per_s: f64,
    pub clock_jump_max_ms: Ms,
    /// Per second: the operator schedules maintenance or drains a host.
    pub maintenance_per_s: f64,
    /// Per second: a framework or the operator sends a malformed call.
    pub bad_input_per_s: f64,
    /// Per second: a rack blip across a failover — every agent of one zone
    /// is cut off from the masters (both ways, for `partition_ms`) and the
    /// leader crashes at the same moment, so the new leader finds a third
    /// of its agents missing past the reregistration deadline.
    pub rack_blip_per_s: f64,
    /// Per second: the operator changes the masters' group by one voter
    /// (promotes a learner, or removes a voter that does not lead), keeping
    /// 3 to 5 voters.
    pub membership_change_per_s: f64,
    /// Per second: a master freezes (SIGSTOP, a VM pause) for
    /// `master_freeze_ms`: it processes nothing and sends nothing, and its
    /// links stay open (what reaches it waits); then it goes on from where
    /// it was, stale. Three times in four it is the serving leader.
    pub master_freeze_per_s: f64,
    pub master_freeze_ms: (Ms, Ms),
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_ms: 1,
            delay_max_ms: 5,
            stream_break: 0.0,
            partition_per_s: 0.0,
            partition_ms: (0, 0),
            agent_crash_per_s: 0.0,
            agent_down_ms: (0, 0),
            master_crash_per_s: 0.0,
            master_down_ms: (0, 0),
            clock_jump_per_s: 0.0,
            clock_jump_max_ms: 0,
            maintenance_per_s: 0.0,
            bad_input_per_s: 0.0,
            rack_blip_per_s: 0.0,
            membership_change_per_s: 0.0,
            master_freeze_per_s: 0.0,
            master_freeze_ms: (0, 0),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Master replicas; the first `voters` of them bootstrap the group and
    /// the rest start as learners.
    pub masters: usize,
    pub voters: usize,
    pub agents: usize,
    /// Every this many agents, one lives in the remote region `r2` (the
    /// masters are in `r1`); 0 for none.
    pub remote_every: usize,
    /// Zones per region.
    pub zones: usize,
    pub agent_cpus: u64,
    pub agent_mem_mb: u64,
    pub frameworks: usize,
    /// Tasks each framework keeps launching towards (it stops accepting
    /// offers above this many live tasks).
    pub tasks_per_framework: usize,
    /// How long a framework's task runs before it finishes (or fails).
    pub framework_task_ms: (Ms, Ms),
    pub jobs: usize,
    pub instances_per_job: u32,
    pub max_unavailable: u32,
    /// How long faults are injected; then the liveness phase.
    pub fault_ms: Ms,
    /// The longest the liveness phase may take to converge.
    pub liveness_ms: Ms,
    pub faults: Faults,
    /// State oracles (the ones that look at the whole cluster) run every
    /// this many steps; event oracles run on every committed event.
    pub check_every: u64,
    /// Replica digests are compared at indexes divisible by this.
    pub digest_every: u64,
    /// How often (simulated) the liveness phase asks whether the cluster
    /// converged.
    pub live_check_ms: Ms,
    /// The master's `--recovery-agent-removal-limit`, in percent (100: off).
    pub removal_limit_pct: f64,
    /// The master's `--agent-removal-rate-limit`: (count, per ms).
    pub removal_rate: Option<(u32, Ms)>,
    /// Frameworks send Accept and Kill with an idempotency key and retry
    /// them when no answer comes.
    pub keyed_retries: bool,
}

impl Config {
    /// [`Config::ci`] with the safety valves on: a removal limit of a
    /// fifth of the agents and a removal rate, frameworks retrying keyed
    /// calls, more master crashes and longer partitions, and rack blips
    /// (a zone cut off as the leader crashes), so that leader changes find
    /// a third of the agents away.
    pub fn valves() -> Self {
        let mut c = Config::ci();
        c.removal_limit_pct = 20.0;
        c.removal_rate = Some((2, 5_000));
        c.keyed_retries = true;
        c.faults.master_crash_per_s = 0.03;
        c.faults.partition_ms = (2_000, 30_000);
        c.faults.rack_blip_per_s = 0.02;
        c
    }

    /// [`Config::ci`] with a group that grows and shrinks: five master
    /// replicas of which three bootstrap it and two start as learners; the
    /// operator promotes and removes voters (one at a time, 3 to 5 of
    /// them) while masters crash and partitions come and go.
    /// Frozen masters and one-way links (`--liveness`): leaders freeze for
    /// up to three reregistration timeouts while links are cut one way
    /// only; agents must find the new leader by their ping timeout, and no
    /// task is lost while its agent and process live.
    pub fn liveness() -> Self {
        let mut c = Config::ci();
        c.faults.master_freeze_per_s = 0.03;
        c.faults.master_freeze_ms = (3_000, 60_000);
        c.faults.master_crash_per_s = 0.0;
        c
    }

    pub fn membership() -> Self {
        let mut c = Config::ci();
        c.masters = 5;
        c.voters = 3;
        c.faults.membership_change_per_s = 0.08;
        c.faults.master_crash_per_s = 0.03;
        c
    }

    /// The clusters `.ci/run` checks: small, busy, with every fault.
    pub fn ci() -> Self {
        Config {
            masters: 3,
            voters: 3,
            agents: 12,
            remote_every: 4,
            zones: 3,
            agent_cpus: 8,
            agent_mem_mb: 8_192,
            frameworks: 3,
            tasks_per_framework: 12,
            framework_task_ms: (5_000, 90_000),
            jobs: 2,
            instances_per_job: 4,
            max_unavailable: 1,
            fault_ms: 120_000,
            liveness_ms: 300_000,
            faults: Faults {
                loss: 0.02,
                duplicate: 0.02,
                delay_min_ms: 1,
                delay_max_ms: 40,
                stream_break: 0.002,
                partition_per_s: 0.03,
                partition_ms: (500, 8_000),
                agent_crash_per_s: 0.05,
                agent_down_ms: (200, 10_000),
                master_crash_per_s: 0.015,
                master_down_ms: (500, 6_000),
                clock_jump_per_s: 0.01,
                clock_jump_max_ms: 30_000,
                maintenance_per_s: 0.03,
                bad_input_per_s: 0.1,
                rack_blip_per_s: 0.0,
                membership_change_per_s: 0.0,
                master_freeze_per_s: 0.0,
                master_freeze_ms: (0, 0),
            },
            check_every: 1,
            digest_every: 16,
            live_check_ms: 1_000,
            removal_limit_pct: 100.0,
            removal_rate: None,
            keyed_retries: false,
        }
    }

    /// The scale run: 10,000 agents, 100,000 tasks, an hour with faults.
    pub fn scale() -> Self {
        Config {
            masters: 3,
            voters: 3,
            agents: 10_000,
            remote_every: 50,
            zones: 5,
            agent_cpus: 16,
            agent_mem_mb: 65_536,
            frameworks: 10,
            tasks_per_framework: 9_000,
            framework_task_ms: (600_000, 2_400_000),
            jobs: 10,
            instances_per_job: 1_000,
            max_unavailable: 20,
            fault_ms: 3_600_000,
            liveness_ms: 3_600_000,
            faults: Faults {
                loss: 0.001,
                duplicate: 0.001,
                delay_min_ms: 1,
                delay_max_ms: 20,
                stream_break: 0.000_02,
                partition_per_s: 0.01,
                partition_ms: (1_000, 10_000),
                agent_crash_per_s: 0.2,
                agent_down_ms: (1_000, 20_000),
                master_crash_per_s: 0.001,
                master_down_ms: (2_000, 10_000),
                clock_jump_per_s: 0.001,
                clock_jump_max_ms: 30_000,
                maintenance_per_s: 0.02,
                bad_input_per_s: 0.2,
                rack_blip_per_s: 0.0,
                membership_change_per_s: 0.0,
                master_freeze_per_s: 0.0,
                master_freeze_ms: (0, 0),
            },
            // About once per simulated minute: each check reads (and the
            // core invariants copy) the whole 100,000-task state.
            check_every: 2_000_000,
            digest_every: 250_000,
            live_check_ms: 10_000,
            removal_limit_pct: 100.0,
            removal_rate: None,
            keyed_retries: false,
        }
    }
}
