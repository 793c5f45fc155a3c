//! `AgentSession`: the active master's link to one registered agent.
//!
//! Owns the outbound `Attach` stream (launches, kills and pings, each
//! stamped with the leader's term) and the agent's health: every
//! `ping_interval` it sends a ping; `max_misses` pings in a row without a
//! pong make it tell the master the agent is silent (the master then marks
//! it unreachable through the log). Messages decided before the agent
//! attached wait in a bounded backlog.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use orrery_events::AgentId;
use orrery_proto::agent as ap;
use tokio::sync::mpsc;

pub type MessageTx = mpsc::Sender<Result<ap::MasterMessage, tonic::Status>>;

pub const STREAM_BUFFER: usize = 4_096;
pub const BACKLOG_MAX: usize = 4_096;
pub const MAILBOX: usize = 4_096;

/// Told to the master: the agent missed its ping budget.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Silent {
    pub agent_id: AgentId,
    pub session: u64,
    pub missed: u32,
}

/// Told to the master: the agent's stream closed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Detached {
    pub agent_id: AgentId,
    pub session: u64,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver(pub ap::master_message::Message);

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Attach(pub MessageTx);

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Pong(pub u64);

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close(pub tonic::Status);

/// Where a session reports.
#[derive(Clone, Debug)]
pub struct Reports {
    pub silent: Recipient<Silent>,
    pub detached: Recipient<Detached>,
}

pub struct AgentSession {
    agent_id: AgentId,
    /// Distinguishes this session from an older one of the same agent.
    session: u64,
    term: u64,
    tx: Option<MessageTx>,
    backlog: VecDeque<ap::MasterMessage>,
    ping_interval: Duration,
    max_misses: u32,
    seq: u64,
    awaiting: Option<u64>,
    misses: u32,
    reported: bool,
    reports: Reports,
    /// When the last ping tick ran: a tick far later than its interval
    /// means this master itself was stalled (frozen, paused, starved), and
    /// the pings it did not send are not the agent's misses.
    last_tick: Option<std::time::Instant>,
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("agent_id", &self.agent_id)
            .field("session", &self.session)
            .field("attached", &self.tx.is_some())
            .field("misses", &self.misses)
            .finish()
    }
}

impl AgentSession {
    pub fn new(
        agent_id: AgentId,
        session: u64,
        term: u64,
        ping_interval: Duration,
        max_misses: u32,
        reports: Reports,
    ) -> Self {
        Self {
            agent_id,
            session,
            term,
            tx: None,
            backlog: VecDeque::new(),
            ping_interval,
            max_misses: max_misses.max(1),
            seq: 0,
            awaiting: None,
            misses: 0,
            reported: false,
            reports,
            last_tick: None,
        }
    }

    fn send(&mut self, message: ap::master_message::Message) {
        let msg = ap::MasterMessage {
            term: self.term,
            message: Some(message),
        };
        match &self.tx {
            Some(tx) => {
                if tx.try_send(Ok(msg)).is_err() {
                    // Full or closed: the agent is not reading. Pings stop
                    // being answered and the ping budget decides its fate;
                    // what it missed is reconciled when it reregisters.
                    tracing::warn!(agent_id = %self.agent_id, "dropped a message to an agent that is not reading");
                }
            }
            None => {
                if self.backlog.len() >= BACKLOG_MAX {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(msg);
            }
        }
    }

    fn ping(&mut self) {
        let now = std::time::Instant::now();
        let tick = Tick::of(
            self.last_tick.map(|t| now.duration_since(t)),
            self.ping_interval,
        );
        if tick == Tick::CatchUp {
            return;
        }
        self.last_tick = Some(now);
        if tick == Tick::AfterStall && !self.reported {
            // This master did not run for a while (a SIGSTOP, a VM pause):
            // the agent could not answer pings never sent. Count afresh.
            tracing::info!(agent_id = %self.agent_id, "this master was stalled; the agent's ping budget starts again");
            self.awaiting = None;
            self.misses = 0;
        }
        if self.awaiting.is_some() {
            self.misses += 1;
            if self.misses >= self.max_misses && !self.reported {
                self.reported = true;
                self.reports.silent.do_send(Silent {
                    agent_id: self.agent_id.clone(),
                    session: self.session,
                    missed: self.misses,
                });
            }
        }
        self.seq += 1;
        self.awaiting = Some(self.seq);
        if self.tx.is_some() {
            self.send(ap::master_message::Message::Ping(ap::Ping {
                seq: self.seq,
            }));
        }
    }
}

/// What a ping tick is, by the time since the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tick {
    /// On time: a ping interval the agent had to answer in.
    OnTime,
    /// Far later than its interval: this master itself did not run (a
    /// SIGSTOP, a VM pause), and sent no pings meanwhile.
    AfterStall,
    /// Far earlier: a missed tick fired in a burst as tokio's interval
    /// catches up; no interval passed.
    CatchUp,
}

impl Tick {
    fn of(since_last: Option<Duration>, interval: Duration) -> Tick {
        match since_last {
            Some(d) if d < interval / 2 => Tick::CatchUp,
            Some(d) if d > interval * 2 => Tick::AfterStall,
            _ => Tick::OnTime,
        }
    }
}

impl Actor for AgentSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(self.ping_interval, |act, _| act.ping());
    }
}

impl Handler<Deliver> for AgentSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        self.send(msg.0);
    }
}

impl Handler<Attach> for AgentSession {
    type Result = ();
    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) {
        let tx = msg.0;
        for m in self.backlog.drain(..) {
            let _ = tx.try_send(Ok(m));
        }
        let watch = tx.clone();
        let session = self.session;
        ctx.spawn(
            async move { watch.closed().await }
                .into_actor(self)
                .map(move |(), act, _| {
                    act.tx = None;
                    act.reports.detached.do_send(Detached {
                        agent_id: act.agent_id.clone(),
                        session,
                    });
                }),
        );
        self.tx = Some(tx);
    }
}

impl Handler<Pong> for AgentSession {
    type Result = ();
    fn handle(&mut self, msg: Pong, _: &mut Context<Self>) {
        // Any pong shows the agent alive, even one for an earlier ping.
        let _ = msg.0;
        self.awaiting = None;
        self.misses = 0;
    }
}

impl Handler<Close> for AgentSession {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(msg.0));
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_after_a_stall_of_this_master_or_in_a_catch_up_burst_count_no_miss() {
        let i = Duration::from_secs(1);
        assert_eq!(Tick::of(None, i), Tick::OnTime);
        assert_eq!(
            Tick::of(Some(Duration::from_millis(1_010)), i),
            Tick::OnTime
        );
        assert_eq!(Tick::of(Some(Duration::from_secs(20)), i), Tick::AfterStall);
        assert_eq!(Tick::of(Some(Duration::from_millis(1)), i), Tick::CatchUp);
    }
}
