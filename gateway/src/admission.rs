//! Admission at the front door: at most `--max-pending-commands` client
//! calls of the scheduler and operator gRPC APIs are inside the master at
//! once (waiting for the master actor, deciding, or waiting for the log);
//! one more is answered RESOURCE_EXHAUSTED at once, with the same retry
//! hints as the master's own queue bound (`grpc-retry-pushback-ms`,
//! `retry-after`), before it reaches the actor, and counted in
//! `orrery_commands_shed_total`.
//!
//! A call goes in three steps. At its headers it is refused at once if the
//! master is full, or if `READERS_PER_SEAT` calls per seat are reading
//! their bodies already. Then its body is read whole. Then it takes a seat,
//! waiting up to `SEAT_WAIT` for one, else it is refused. The seat is taken
//! only after the body is read: under a flood the connection's task, which
//! reads the bodies off the socket, runs once per pass over every open
//! stream, and seats held while bodies came in kept the master idle (at 10x
//! with a bound of 8, 144 calls/s admitted against 3,350/s at 1x). The
//! `http-body-util` crate (axum's own, already in the tree) names the body
//! that is too long.
//!
//! A call's seat is given back when the master answers its command, on
//! the master's thread, or when the call's task ends, whichever is first
//! (see `orrery_actors::telemetry::Seat`): the count is of calls waiting for
//! the master or the log, not of answered calls waiting for their task to
//! run again.
//!
//! Why here and not only in the actor: the actor sheds when it handles a
//! call, and under a flood the calls wait in its mailbox first, so a
//! refusal came only after every call ahead of it, seconds later, and the
//! waiting calls held memory (`orrery bench overload` measured both). A
//! counter in front of the mailbox keeps the refusal cheap and the backlog
//! the size of the bound.
//!
//! Not admitted here: the streams (`Scheduler/Subscribe`, the agent link),
//! which live for a session, the agents' unary calls (status updates and
//! pongs must not lose to a flood of client calls: an agent that cannot
//! answer its pings is marked unreachable), and the masters' raft and log
//! services. The HTTP APIs are bounded by the actor's queue only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orrery_actors::master::{MasterError, RETRY_AFTER};
use orrery_actors::telemetry::{Seat, SeatRelease, SEAT};

/// The count of admitted calls, and its bound.
#[derive(Debug)]
pub struct Admission {
    inside: AtomicUsize,
    /// Calls reading their body before they ask for a seat.
    reading: AtomicUsize,
    max: usize,
    /// Told when a seat is given back (calls that read their body wait).
    freed: tokio::sync::Notify,
}

/// A call reading its body (see [`Admission::begin_read`]); done on drop.
#[derive(Debug)]
pub struct Reading(Arc<Admission>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted call's place: given back once, by whichever comes first,
/// the master answering the call's command (`telemetry::Seat`) or the
/// call's task ending (drop).
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    held: AtomicBool,
}

impl SeatRelease for Admitted {
    fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.admission.inside.fetch_sub(1, Ordering::AcqRel);
            self.admission.freed.notify_waiters();
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.release();
    }
}

impl Admission {
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            inside: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            max: max.max(1),
            freed: tokio::sync::Notify::new(),
        })
    }

    fn refuse(&self, now: usize) -> MasterError {
        metrics::counter!(orrery_actors::telemetry::COMMANDS_SHED).increment(1);
        MasterError::Overloaded {
            queued: now,
            max: self.max,
            retry_after: RETRY_AFTER,
        }
    }

    /// Lets a call read its body, or refuses it at once (before the body is
    /// read): when the master is full, or when [`READERS_PER_SEAT`] calls
    /// per seat are reading theirs already (or waiting for a seat with
    /// it). The second keeps a flood from making thousands of calls read
    /// their bodies only to be refused after, late.
    pub fn begin_read(self: &Arc<Self>) -> Result<Reading, MasterError> {
        let inside = self.inside.load(Ordering::Acquire);
        if inside >= self.max {
            return Err(self.refuse(inside));
        }
        take_below(&self.reading, self.max.saturating_mul(READERS_PER_SEAT))
            .map(|_| Reading(self.clone()))
            .map_err(|_| self.refuse(inside))
    }

    /// A seat for a call that has read its body: waits up to `wait` for one
    /// to be given back, then refuses.
    pub async fn enter_within(
        self: &Arc<Self>,
        wait: std::time::Duration,
    ) -> Result<Admitted, MasterError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_enter() {
                Ok(a) => return Ok(a),
                Err(now) if tokio::time::Instant::now() >= deadline => return Err(self.refuse(now)),
                Err(_) => {}
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Admits one more call, or refuses it (the master is overloaded).
    pub fn enter(self: &Arc<Self>) -> Result<Admitted, MasterError> {
        self.try_enter().map_err(|now| self.refuse(now))
    }

    /// A seat, or the count inside (full).
    fn try_enter(self: &Arc<Self>) -> Result<Admitted, usize> {
        take_below(&self.inside, self.max)?;
        Ok(Admitted {
            admission: self.clone(),
            held: AtomicBool::new(true),
        })
    }

    /// Calls inside now.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::Acquire)
    }
}

/// Counts one more on `count` if it is below `limit`; else the count.
fn take_below(count: &AtomicUsize, limit: usize) -> Result<(), usize> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .map(|_| ())
}

/// Whether a gRPC path is a client's unary call (admitted) rather than a
/// stream, an agent's call or the masters' own traffic.
pub fn admitted_path(path: &str) -> bool {
    if let Some(method) = path.strip_prefix("/orrery.scheduler.v1.Scheduler/") {
        return method != "Subscribe";
    }
    path.starts_with("/orrery.operator.v1.Operator/")
}

/// Calls that may be reading their body at once, per seat: enough that a
/// seat given back finds a call ready for it (bodies come slowly under a
/// flood), few enough that calls are not read only to be refused later.
/// `orrery bench overload` at 10x, bound 8: 1 per seat kept 188 admitted
/// calls/s, 8 kept 1,110/s with refusals ≤ 50 ms, no bound 2,386/s with
/// refusals after up to 500 ms.
pub const READERS_PER_SEAT: usize = 8;

/// How long a call that has read its body waits for a seat before it is
/// refused: a seat is given back every few milliseconds while the master
/// commits, and waiting this long keeps its body's reading from being
/// wasted (bench, 10x: refusals ≤ 0.25 ms in the master, 1,664 admitted
/// calls/s against 1,110/s refusing at once).
pub const SEAT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The largest admitted call's body read before it is handed on: the
/// largest message any admitted service decodes and its gRPC frame header.
const BODY_BYTES_MAX: usize = crate::grpc::MESSAGE_BYTES_MAX + 5;

/// A body that could not be read whole: larger than any service takes
/// (OUT_OF_RANGE, as tonic answers), or the client went away.
fn body_refused(e: axum::Error) -> tonic::Status {
    let too_long =
        std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
    if too_long {
        // OUT_OF_RANGE, as tonic answers a message over its size limit.
        tonic::Status::out_of_range(format!(
            "the call's body is larger than {} bytes, the most any API takes",
            BODY_BYTES_MAX
        ))
    } else {
        tonic::Status::cancelled(format!("the call's body could not be read: {e}"))
    }
}

/// The axum middleware on the gRPC router.
pub async fn grpc_admit(
    State(admission): State<Arc<Admission>>,
    req: Request,
    next: Next,
) -> Response {
    if !admitted_path(req.uri().path()) {
        return next.run(req).await;
    }
    let reading = match admission.begin_read() {
        Ok(r) => r,
        Err(e) => return crate::grpc::status_of(e).into_http(),
    };
    // The body first, then the seat: a seat is for the master's work, not
    // for waiting until the connection's task reads the rest of the call
    // off the socket, which under a flood waits behind every stream the
    // server has open.
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(e) => return body_refused(e).into_http(),
    };
    let req = Request::from_parts(parts, axum::body::Body::from(body));
    let seat = admission.enter_within(SEAT_WAIT).await;
    drop(reading);
    match seat {
        Ok(inside) => {
            let inside = Arc::new(inside);
            SEAT.scope(Seat::new(inside.clone()), next.run(req)).await
        }
        Err(e) => crate::grpc::status_of(e).into_http(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn at_most_the_bound_is_inside_and_leaving_makes_room() {
        let a = Admission::new(2);
        let one = a.enter().expect("first");
        let two = a.enter().expect("second");
        match a.enter() {
            Err(MasterError::Overloaded { queued, max, .. }) => {
                assert_eq!((queued, max), (2, 2));
            }
            other => panic!("a third call is refused: {other:?}"),
        }
        drop(one);
        assert_eq!(a.inside(), 1);
        let _three = a.enter().expect("room again");
        drop(two);
        assert_eq!(a.inside(), 1);
    }

    #[test]
    fn a_seat_given_back_by_the_master_is_not_given_back_twice() {
        let a = Admission::new(2);
        let one = Arc::new(a.enter().expect("first"));
        let _two = a.enter().expect("second");
        let seat = Seat::new(one.clone());
        // The master answers: the room is there before the call's task ends.
        seat.release();
        assert_eq!(a.inside(), 1);
        seat.release();
        drop(one);
        assert_eq!(a.inside(), 1, "released once, by the master");
        let _three = a.enter().expect("room again");
        assert!(a.enter().is_err());
    }

    #[test]
    fn only_readers_per_seat_calls_read_their_body_at_once() {
        let a = Admission::new(2);
        let readers: Vec<Reading> = (0..2 * READERS_PER_SEAT)
            .map(|_| a.begin_read().expect("room to read"))
            .collect();
        assert!(matches!(
            a.begin_read(),
            Err(MasterError::Overloaded { max: 2, .. })
        ));
        drop(readers);
        let _one = a.enter().expect("a seat");
        let _two = a.enter().expect("a seat");
        // Full: refused at the headers, before the body is read.
        assert!(a.begin_read().is_err());
    }

    #[tokio::test]
    async fn a_call_with_its_body_waits_for_a_seat_given_back_then_gives_up() {
        let a = Admission::new(1);
        let held = Arc::new(a.enter().expect("the seat"));
        let seat = Seat::new(held.clone());
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.enter_within(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no seat yet");
        seat.release();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the seat came back")
            .expect("joined");
        let got = got.expect("the seat given back");
        assert_eq!(a.inside(), 1);
        let started = std::time::Instant::now();
        match a.enter_within(Duration::from_millis(30)).await {
            Err(MasterError::Overloaded {
                queued: 1, max: 1, ..
            }) => {}
            other => panic!("refused after the wait: {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(30));
        drop(got);
        assert_eq!(a.inside(), 0);
    }

    #[tokio::test]
    async fn a_body_too_long_is_refused_by_name_and_a_broken_one_as_cancelled() {
        let e = axum::body::to_bytes(axum::body::Body::from(vec![0u8; 10]), 5)
            .await
            .expect_err("over the limit");
        let s = body_refused(e);
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert!(s.message().contains("larger than"), "{}", s.message());
        let broken = axum::body::Body::from_stream(futures::stream::iter([Err::<
            axum::body::Bytes,
            std::io::Error,
        >(
            std::io::Error::other("reset by the client"),
        )]));
        let s = body_refused(axum::body::to_bytes(broken, 5).await.expect_err("broken"));
        assert_eq!(s.code(), tonic::Code::Cancelled);
        assert!(
            s.message().contains("reset by the client"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn streams_agents_and_raft_are_not_admitted_here() {
        assert!(admitted_path("/orrery.scheduler.v1.Scheduler/Call"));
        assert!(admitted_path("/orrery.operator.v1.Operator/UpdateWeights"));
        assert!(!admitted_path("/orrery.scheduler.v1.Scheduler/Subscribe"));
        assert!(!admitted_path("/orrery.agent.v1.AgentLink/UpdateStatus"));
        assert!(!admitted_path("/orrery.raft.v1.Raft/Append"));
    }
}
