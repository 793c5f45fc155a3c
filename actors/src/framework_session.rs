//! `FrameworkSession`: one per subscribed scheduler stream.
//!
//! Owns the outbound half of a framework's `Subscribe` stream: it forwards
//! the master's events, sends heartbeats, and tells the master when the
//! stream closes (the framework disconnected; its failover clock starts).
//! It never blocks the master: its mailbox and the stream's buffer are
//! bounded, and a framework that does not read its stream is disconnected
//! rather than allowed to hold the master back.

use std::time::Duration;

use actix::prelude::*;
use orrery_events::FrameworkId;
use orrery_proto::scheduler as sp;
use tokio::sync::mpsc;

/// The stream to the framework: events, or the status that ends it.
pub type EventTx = mpsc::Sender<Result<sp::Event, tonic::Status>>;

/// Events buffered for a framework before it counts as not reading.
pub const STREAM_BUFFER: usize = 4_096;
/// The session's mailbox bound.
pub const MAILBOX: usize = 4_096;

/// Told to the master when the stream ends from the framework's side.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StreamClosed {
    pub framework_id: FrameworkId,
    pub stream_id: String,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver(pub sp::event::Event);

/// Ends the stream: with an `Error` event (`Ok`) or a gRPC status (`Err`,
/// e.g. UNAVAILABLE with the new leader when this master steps down).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close(pub Result<String, tonic::Status>);

pub struct FrameworkSession {
    framework_id: FrameworkId,
    stream_id: String,
    tx: EventTx,
    heartbeat: Duration,
    closed: Recipient<StreamClosed>,
}

impl std::fmt::Debug for FrameworkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameworkSession")
            .field("framework_id", &self.framework_id)
            .field("stream_id", &self.stream_id)
            .finish()
    }
}

impl FrameworkSession {
    pub fn new(
        framework_id: FrameworkId,
        stream_id: String,
        tx: EventTx,
        heartbeat: Duration,
        closed: Recipient<StreamClosed>,
    ) -> Self {
        Self {
            framework_id,
            stream_id,
            tx,
            heartbeat,
            closed,
        }
    }

    fn send(&mut self, ev: sp::event::Event, ctx: &mut Context<Self>) {
        if let Err(e) = self.tx.try_send(Ok(sp::Event { event: Some(ev) })) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                tracing::warn!(
                    framework_id = %self.framework_id,
                    buffered = STREAM_BUFFER,
                    "the framework does not read its event stream; disconnecting it"
                );
            }
            self.gone(ctx);
        }
    }

    fn gone(&mut self, ctx: &mut Context<Self>) {
        self.closed.do_send(StreamClosed {
            framework_id: self.framework_id.clone(),
            stream_id: self.stream_id.clone(),
        });
        ctx.stop();
    }
}

impl Actor for FrameworkSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        let tx = self.tx.clone();
        ctx.spawn(
            async move { tx.closed().await }
                .into_actor(self)
                .map(|(), act, ctx| act.gone(ctx)),
        );
        ctx.run_interval(self.heartbeat, |act, ctx| {
            act.send(sp::event::Event::Heartbeat(sp::Heartbeat {}), ctx)
        });
    }
}

impl Handler<Deliver> for FrameworkSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.send(msg.0, ctx);
    }
}

impl Handler<Close> for FrameworkSession {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        let last = match msg.0 {
            Ok(message) => Ok(sp::Event {
                event: Some(sp::event::Event::Error(sp::Error { message })),
            }),
            Err(status) => Err(status),
        };
        let _ = self.tx.try_send(last);
        // Stopping drops the sender, which ends the stream.
        ctx.stop();
    }
}
