//! The simulated network: who may talk to whom, and when a message lands.
//!
//! Two kinds of link, as in the real system:
//! - **unary calls** (an agent's status update, a framework's Accept, a
//!   reply): each drawn its own delay, so they reorder freely; each may be
//!   lost or delivered twice (a retried RPC whose reply was lost);
//! - **streams** (the master's messages to an agent or a framework): in
//!   order; a lost message breaks the stream, and the client reconnects.
//!
//! Partitions block a direction between two nodes (one-way partitions are
//! a partition of one direction only). A message is judged when it is
//! sent; what is in flight when a partition starts still lands.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Faults, Ms};

/// A node of the simulated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Master(usize),
    Agent(usize),
    Framework(usize),
    Operator,
}

/// What became of a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered after this delay (twice if `twice`).
    Deliver {
        delay: Ms,
        twice: Option<Ms>,
    },
    Lost,
}

#[derive(Debug, Default)]
pub struct Net {
    /// Blocked directions (from, to) and until when.
    blocked: BTreeMap<(Node, Node), Ms>,
    /// The last delivery time per stream direction (streams keep order).
    stream_last: BTreeMap<(Node, Node), Ms>,
    /// Partitions while faults run (off in the liveness phase).
    pub faulty: bool,
}

impl Net {
    /// A network with faults on.
    pub fn new() -> Self {
        Net {
            faulty: true,
            ..Net::default()
        }
    }

    pub fn blocked(&self, from: Node, to: Node, now: Ms) -> bool {
        self.blocked
            .get(&(from, to))
            .is_some_and(|&until| until > now)
    }

    pub fn block(&mut self, from: Node, to: Node, until: Ms) {
        let e = self.blocked.entry((from, to)).or_insert(0);
        *e = (*e).max(until);
    }

    pub fn heal_all(&mut self) {
        self.blocked.clear();
    }

    /// Drops partitions that have ended (keeps the map small).
    pub fn expire(&mut self, now: Ms) {
        self.blocked.retain(|_, until| *until > now);
    }

    pub fn partitions(&self, now: Ms) -> BTreeSet<(Node, Node)> {
        self.blocked
            .iter()
            .filter(|(_, &until)| until > now)
            .map(|(k, _)| *k)
            .collect()
    }

    fn delay(rng: &mut ChaCha8Rng, f: &Faults) -> Ms {
        rng.random_range(f.delay_min_ms..=f.delay_max_ms.max(f.delay_min_ms))
    }

    /// A unary call or its reply.
    pub fn unary(
        &mut self,
        rng: &mut ChaCha8Rng,
        f: &Faults,
        from: Node,
        to: Node,
        now: Ms,
    ) -> Fate {
        if self.blocked(from, to, now) || (self.faulty && rng.random_bool(f.loss)) {
            return Fate::Lost;
        }
        let delay = Self::delay(rng, f);
        let twice = (self.faulty && rng.random_bool(f.duplicate)).then(|| Self::delay(rng, f));
        Fate::Deliver { delay, twice }
    }

    /// A stream message: in order, or lost (which breaks the stream).
    pub fn stream(
        &mut self,
        rng: &mut ChaCha8Rng,
        f: &Faults,
        from: Node,
        to: Node,
        now: Ms,
    ) -> Fate {
        if self.blocked(from, to, now) || (self.faulty && rng.random_bool(f.stream_break)) {
            return Fate::Lost;
        }
        let at = now + Self::delay(rng, f);
        let last = self.stream_last.entry((from, to)).or_insert(0);
        let at = at.max(*last);
        *last = at;
        Fate::Deliver {
            delay: at - now,
            twice: None,
        }
    }
}
