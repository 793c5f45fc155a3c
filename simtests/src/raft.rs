//! The masters' replicated log, by Raft's rules (§5 of the Raft paper):
//! terms, votes granted only to a candidate whose log is at least as
//! up to date, AppendEntries with a consistency check that truncates a
//! conflicting suffix, and commit only of a majority-held entry of the
//! leader's own term. Term, vote and log survive a crash (the real log
//! fsyncs before it acknowledges); the commit index and the applied state
//! do not, and are rebuilt by replay.
//!
//! This is a model of openraft's behaviour, not openraft itself (which
//! needs a runtime and real time): the storage crate's conformance and
//! crash tests check the real log; this model lets every failover the
//! simulator draws follow the same rules, so the prefix that survives is
//! the one Raft guarantees.

use std::collections::BTreeSet;

use orrery_events::Cluster;
use rand::Rng;

use crate::config::Ms;
use crate::master::Shell;
use crate::net::Node;
use crate::oracles;
use crate::sabotage::Sabotage;
use crate::sim::{Entry, Msg, Sim, Timer};

/// Entries sent in one AppendEntries at most.
const APPEND_BATCH_MAX: usize = 512;
pub const REPLICATE_EVERY_MS: Ms = 20;
const ELECTION_TIMEOUT_MS: (Ms, Ms) = (400, 800);

#[derive(Debug)]
pub enum Role {
    Follower { leader: Option<usize>, heard_at: Ms },
    Candidate { votes: BTreeSet<usize> },
    Leader(Box<Shell>),
}

#[derive(Debug)]
pub struct Replica {
    pub id: usize,
    pub up: bool,
    // Persistent.
    pub term: u64,
    pub voted_for: Option<usize>,
    pub log: Vec<Entry>,
    // Volatile.
    pub commit: u64,
    /// The state machine: the log applied up to `commit`.
    pub state: Cluster,
    pub role: Role,
    pub clock_offset_ms: i64,
    pub election_epoch: u64,
    /// The voter sets in the log (`MastersChanged`), by index: a replica
    /// votes, campaigns and counts by the newest in its log, committed or
    /// not (Raft's single-server membership changes, §4.1 of Ongaro's
    /// thesis). Empty: the bootstrap voters.
    pub configs: Vec<(u64, BTreeSet<usize>)>,
    /// The voters the group was bootstrapped with.
    pub initial_voters: BTreeSet<usize>,
    /// Frozen (SIGSTOP) until then: what reaches it waits, it does nothing.
    pub frozen_until: Ms,
    /// When the freeze began (0: not frozen).
    pub frozen_since: Ms,
    /// Entries acknowledged when this replica last stood for election:
    /// what a win of that term must hold. An entry acknowledged later may
    /// be missing from a stale winner (its votes were cast before, and
    /// counted late, as after a freeze), which Raft allows: that leader's
    /// term is behind every majority's and it commits nothing.
    pub campaign_acked: usize,
}

impl Replica {
    pub fn new(id: usize) -> Self {
        Replica {
            id,
            up: true,
            term: 0,
            voted_for: None,
            log: Vec::new(),
            commit: 0,
            state: Cluster::new(),
            role: Role::Follower {
                leader: None,
                heard_at: 0,
            },
            clock_offset_ms: 0,
            election_epoch: 0,
            configs: Vec::new(),
            initial_voters: BTreeSet::new(),
            frozen_until: 0,
            frozen_since: 0,
            campaign_acked: 0,
        }
    }

    /// The voters this replica goes by now.
    pub fn voters(&self) -> &BTreeSet<usize> {
        self.configs.last().map_or(&self.initial_voters, |(_, v)| v)
    }

    /// Whether the newest voter set in the log is committed.
    pub fn config_settled(&self) -> bool {
        self.configs.last().is_none_or(|(i, _)| *i <= self.commit)
    }

    /// Appends an entry, noting a new voter set.
    pub fn push_entry(&mut self, e: Entry) {
        if let Some(orrery_events::pb::envelope::Payload::MastersChanged(c)) = &e.payload {
            let voters = voters_in(c);
            self.configs.push((self.last_index() + 1, voters));
        }
        self.log.push(e);
    }

    /// Drops the log from `len` on, and the voter sets it held.
    pub fn truncate_log(&mut self, len: usize) {
        self.log.truncate(len);
        while self.configs.last().is_some_and(|(i, _)| *i > len as u64) {
            self.configs.pop();
        }
    }

    pub fn last_index(&self) -> u64 {
        self.log.len() as u64
    }

    pub fn term_at(&self, index: u64) -> u64 {
        if index == 0 {
            0
        } else {
            self.log[index as usize - 1].term
        }
    }

    pub fn last_term(&self) -> u64 {
        self.term_at(self.last_index())
    }

    /// Leader, with its election committed.
    pub fn is_serving(&self) -> bool {
        matches!(&self.role, Role::Leader(s) if s.elected)
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub fn leader_hint(&self) -> Option<usize> {
        match &self.role {
            Role::Follower { leader, .. } => *leader,
            Role::Leader(_) => Some(self.id),
            Role::Candidate { .. } => None,
        }
    }

    pub fn shell(&mut self) -> Option<&mut Shell> {
        match &mut self.role {
            Role::Leader(s) => Some(s),
            _ => None,
        }
    }
}

/// The voters (replica indexes) a `MastersChanged` names (ids from 1).
pub fn voters_in(c: &orrery_events::pb::MastersChanged) -> BTreeSet<usize> {
    c.members
        .iter()
        .filter(|x| x.voter)
        .map(|x| x.node_id as usize - 1)
        .collect()
}

fn majority_of(voters: &BTreeSet<usize>) -> usize {
    voters.len() / 2 + 1
}

impl Sim {
    /// The committed voters (by the truth: the committed log).
    pub fn committed_voters(&self) -> BTreeSet<usize> {
        let members = &self.truth.cluster.masters.members;
        if members.is_empty() {
            return self.masters[0].initial_voters.clone();
        }
        members
            .iter()
            .filter(|(_, x)| x.voter)
            .map(|(id, _)| *id as usize - 1)
            .collect()
    }

    /// A majority of the committed voters.
    pub fn majority(&self) -> usize {
        majority_of(&self.committed_voters())
    }

    /// The master's wall clock (the simulated time plus its clock's error).
    pub fn clock(&self, m: usize) -> Ms {
        self.now
            .saturating_add_signed(self.masters[m].clock_offset_ms)
    }

    pub fn reset_election_timer(&mut self, m: usize) {
        let r = &mut self.masters[m];
        r.election_epoch += 1;
        let epoch = r.election_epoch;
        let after = self
            .rng
            .random_range(ELECTION_TIMEOUT_MS.0..ELECTION_TIMEOUT_MS.1);
        self.schedule(
            after,
            Node::Master(m),
            Msg::Timer(Timer::Election { epoch }),
        );
    }

    fn become_follower(&mut self, m: usize, term: u64, leader: Option<usize>) {
        let now = self.now;
        let r = &mut self.masters[m];
        if term > r.term {
            r.term = term;
            r.voted_for = None;
        }
        let was_leader = r.is_leader();
        r.role = Role::Follower {
            leader,
            heard_at: now,
        };
        if was_leader {
            self.reset_election_timer(m);
        }
    }

    pub(crate) fn on_raft(&mut self, m: usize, msg: Msg) {
        match msg {
            Msg::Timer(Timer::Election { epoch }) => self.on_election_timer(m, epoch),
            Msg::Timer(Timer::Replicate) => self.replicate(m),
            Msg::Append {
                from,
                term,
                prev_index,
                prev_term,
                entries,
                commit,
            } => self.on_append(m, from, term, prev_index, prev_term, entries, commit),
            Msg::AppendReply {
                from,
                term,
                ok,
                index,
            } => self.on_append_reply(m, from, term, ok, index),
            Msg::Vote {
                from,
                term,
                last_index,
                last_term,
            } => self.on_vote(m, from, term, last_index, last_term),
            Msg::VoteReply {
                from,
                term,
                granted,
            } => self.on_vote_reply(m, from, term, granted),
            other => unreachable!("not a raft message: {other:?}"),
        }
    }

    fn on_election_timer(&mut self, m: usize, epoch: u64) {
        let r = &self.masters[m];
        if epoch != r.election_epoch || r.is_leader() {
            return;
        }
        if let Role::Follower { heard_at, .. } = r.role {
            if self.now < heard_at + ELECTION_TIMEOUT_MS.0 {
                self.reset_election_timer(m);
                return;
            }
        }
        if !self.masters[m].voters().contains(&m) {
            // A learner (or a removed master) never stands.
            self.reset_election_timer(m);
            return;
        }
        // Stand for election.
        let acked = self.truth.log.len();
        let r = &mut self.masters[m];
        r.campaign_acked = acked;
        r.term += 1;
        r.voted_for = Some(m);
        r.role = Role::Candidate {
            votes: BTreeSet::from([m]),
        };
        let (term, last_index, last_term) = (r.term, r.last_index(), r.last_term());
        for peer in 0..self.masters.len() {
            if peer != m {
                self.send(
                    Node::Master(m),
                    Node::Master(peer),
                    Msg::Vote {
                        from: m,
                        term,
                        last_index,
                        last_term,
                    },
                );
            }
        }
        self.reset_election_timer(m);
        self.maybe_win(m);
    }

    fn on_vote(&mut self, m: usize, from: usize, term: u64, last_index: u64, last_term: u64) {
        if term > self.masters[m].term {
            self.become_follower(m, term, None);
        }
        let r = &self.masters[m];
        let up_to_date = (last_term, last_index) >= (r.last_term(), r.last_index())
            || self.sabotage == Some(Sabotage::VoteIgnoresLog);
        let granted =
            term == r.term && r.voted_for.is_none_or(|v| v == from) && up_to_date && !r.is_leader();
        if granted {
            self.masters[m].voted_for = Some(from);
            if let Role::Follower { heard_at, .. } = &mut self.masters[m].role {
                *heard_at = self.now;
            }
        }
        let term = self.masters[m].term;
        self.send(
            Node::Master(m),
            Node::Master(from),
            Msg::VoteReply {
                from: m,
                term,
                granted,
            },
        );
    }

    fn on_vote_reply(&mut self, m: usize, from: usize, term: u64, granted: bool) {
        if term > self.masters[m].term {
            self.become_follower(m, term, None);
            return;
        }
        let r = &mut self.masters[m];
        if term != r.term || !granted {
            return;
        }
        if let Role::Candidate { votes } = &mut r.role {
            votes.insert(from);
        }
        self.maybe_win(m);
    }

    fn maybe_win(&mut self, m: usize) {
        let r = &self.masters[m];
        let Role::Candidate { votes } = &r.role else {
            return;
        };
        let voters = r.voters();
        if votes.intersection(voters).count() < majority_of(voters) {
            return;
        }
        self.stats.elections += 1;
        if !self.masters[m].initial_voters.contains(&m) {
            self.stats.joined_leaders += 1;
        }
        // The new leader's log must hold every committed entry.
        self.check_leader_log(m);
        let shell = Shell::new(self, m);
        self.masters[m].role = Role::Leader(Box::new(shell));
        self.schedule(0, Node::Master(m), Msg::Timer(Timer::Replicate));
        self.schedule(0, Node::Master(m), Msg::Timer(Timer::LeaderTick));
        self.on_elected(m);
    }

    /// The acknowledged-events oracle at a leader change.
    fn check_leader_log(&mut self, m: usize) {
        let r = &self.masters[m];
        let truth = &self.truth.log;
        let due = truth.len().min(r.campaign_acked);
        if let Some(i) = (0..due).find(|&i| r.log.get(i) != Some(&truth[i])) {
            let detail = format!(
                "master {m} won term {} without committed entry {} (its log ends at {}, {} entries were acknowledged)",
                r.term,
                i + 1,
                r.last_index(),
                truth.len()
            );
            self.violation(oracles::acked_events::NAME, detail);
        }
    }

    /// The leader sends each follower what it lacks (or a heartbeat).
    fn replicate(&mut self, m: usize) {
        let r = &self.masters[m];
        let Role::Leader(shell) = &r.role else {
            return;
        };
        let (term, commit) = (r.term, r.commit);
        let mut out = Vec::new();
        for peer in 0..self.masters.len() {
            if peer == m {
                continue;
            }
            let next = shell.next[peer].max(1);
            let prev_index = next - 1;
            let end = (r.last_index() as usize).min(prev_index as usize + APPEND_BATCH_MAX);
            let entries = r.log[prev_index as usize..end].to_vec();
            out.push((
                peer,
                Msg::Append {
                    from: m,
                    term,
                    prev_index,
                    prev_term: r.term_at(prev_index),
                    entries,
                    commit,
                },
            ));
        }
        for (peer, msg) in out {
            self.send(Node::Master(m), Node::Master(peer), msg);
        }
        self.schedule(
            REPLICATE_EVERY_MS,
            Node::Master(m),
            Msg::Timer(Timer::Replicate),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        m: usize,
        from: usize,
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        if term < self.masters[m].term {
            let t = self.masters[m].term;
            self.send(
                Node::Master(m),
                Node::Master(from),
                Msg::AppendReply {
                    from: m,
                    term: t,
                    ok: false,
                    index: 0,
                },
            );
            return;
        }
        if term > self.masters[m].term || !matches!(self.masters[m].role, Role::Follower { .. }) {
            self.become_follower(m, term, Some(from));
        }
        if let Role::Follower { leader, heard_at } = &mut self.masters[m].role {
            *leader = Some(from);
            *heard_at = self.now;
        }
        let r = &mut self.masters[m];
        if prev_index > r.last_index() || r.term_at(prev_index) != prev_term {
            let hint = r.commit.min(prev_index.saturating_sub(1));
            self.send(
                Node::Master(m),
                Node::Master(from),
                Msg::AppendReply {
                    from: m,
                    term,
                    ok: false,
                    index: hint,
                },
            );
            return;
        }
        let mut truncated_committed = None;
        for (k, e) in entries.iter().enumerate() {
            let index = prev_index + 1 + k as u64;
            if index <= r.last_index() {
                if r.term_at(index) == e.term {
                    continue;
                }
                if index <= r.commit {
                    truncated_committed = Some(index);
                }
                r.truncate_log(index as usize - 1);
            }
            r.push_entry(e.clone());
        }
        let matched = prev_index + entries.len() as u64;
        let new_commit = commit.min(matched);
        if let Some(index) = truncated_committed {
            self.violation(
                oracles::acked_events::NAME,
                format!("master {m} was told to overwrite its committed entry {index}"),
            );
        }
        self.apply_to(m, new_commit);
        self.send(
            Node::Master(m),
            Node::Master(from),
            Msg::AppendReply {
                from: m,
                term,
                ok: true,
                index: matched,
            },
        );
    }

    fn on_append_reply(&mut self, m: usize, from: usize, term: u64, ok: bool, index: u64) {
        if term > self.masters[m].term {
            self.become_follower(m, term, None);
            return;
        }
        let r = &mut self.masters[m];
        let voters = r.voters().clone();
        let majority = majority_of(&voters);
        let my_last = r.last_index();
        let my_term = r.term;
        let Role::Leader(shell) = &mut r.role else {
            return;
        };
        if term != my_term {
            return;
        }
        if ok {
            shell.matched[from] = shell.matched[from].max(index);
            shell.next[from] = shell.matched[from] + 1;
        } else {
            shell.next[from] = (index + 1).min(shell.next[from]).max(1);
            return;
        }
        let mut matched = shell.matched.clone();
        matched[m] = my_last;
        // Only voters count toward the commit.
        let mut matched: Vec<u64> = voters.iter().map(|v| matched[*v]).collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[majority - 1];
        if candidate > r.commit && r.term_at(candidate) == my_term {
            self.leader_commit(m, candidate);
        }
    }

    /// Applies the log to the replica's state machine up to `commit`.
    pub fn apply_to(&mut self, m: usize, commit: u64) {
        let r = &mut self.masters[m];
        let commit = commit.min(r.last_index());
        if commit <= r.commit {
            return;
        }
        r.commit = commit;
        let mut mismatch = None;
        while r.state.applied_index < commit {
            let index = r.state.applied_index + 1;
            let entry = r.log[index as usize - 1].clone();
            if let Err(e) = orrery_events::try_apply(&mut r.state, &entry) {
                mismatch = Some(format!("master {m} cannot apply entry {index}: {e}"));
                break;
            }
            if self.sabotage == Some(Sabotage::FollowerForgetsAcks) && m == 1 {
                // The broken rule: this replica's apply forgets acks.
                if let Some(orrery_events::pb::envelope::Payload::TaskStatusAcknowledged(a)) =
                    &entry.payload
                {
                    if let Some(t) = r.state.tasks.get_mut_by(&a.framework_id, &a.task_id) {
                        t.acknowledged = false;
                    }
                }
            }
            if index.is_multiple_of(self.cfg.digest_every) {
                if let Some(want) = self.truth.digests.get(&index) {
                    let got = orrery_events::digest(&r.state);
                    if &got != want {
                        mismatch = Some(format!(
                            "master {m}'s state at index {index} has digest {got}, the committed log's is {want}"
                        ));
                        break;
                    }
                }
            }
        }
        if let Some(detail) = mismatch {
            self.violation(oracles::replica_digests::NAME, detail);
        }
    }

    pub(crate) fn master_crash(&mut self, m: usize) {
        let r = &mut self.masters[m];
        if !r.up {
            return;
        }
        self.stats.master_crashes += 1;
        r.up = false;
        r.role = Role::Follower {
            leader: None,
            heard_at: 0,
        };
        // Volatile state is gone; term, vote and log stay on disk.
        r.commit = 0;
        r.state = Cluster::new();
        let down = self
            .rng
            .random_range(self.cfg.faults.master_down_ms.0..=self.cfg.faults.master_down_ms.1);
        self.schedule(down, Node::Master(m), Msg::Timer(Timer::MasterRestart));
    }

    pub(crate) fn master_restart(&mut self, m: usize) {
        let r = &mut self.masters[m];
        if r.up {
            return;
        }
        r.up = true;
        r.role = Role::Follower {
            leader: None,
            heard_at: self.now,
        };
        self.reset_election_timer(m);
    }
}
