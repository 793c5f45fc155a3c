//! Admission at the front door: at most `--max-pending-commands` client
//! calls of the scheduler and operator gRPC APIs are inside the master at
//! once (waiting for the master actor, deciding, or waiting for the log);
//! one more is answered RESOURCE_EXHAUSTED at once, with the same retry
//! hints as the master's own queue bound (`grpc-retry-pushback-ms`,
//! `retry-after`), before it reaches the actor, and counted in
//! `orrery_commands_shed_total`.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orrery_actors::master::{MasterError, RETRY_AFTER};

/// The count of admitted calls, and its bound.
#[derive(Debug)]
pub struct Admission {
    inside: AtomicUsize,
    max: usize,
}

/// An admitted call; leaving (drop) makes room for the next.
#[derive(Debug)]
pub struct Admitted(Arc<Admission>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            inside: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// Admits one more call, or refuses it (the master is overloaded).
    pub fn enter(self: &Arc<Self>) -> Result<Admitted, MasterError> {
        let mut now = self.inside.load(Ordering::Acquire);
        loop {
            if now >= self.max {
                metrics::counter!(orrery_actors::telemetry::COMMANDS_SHED).increment(1);
                return Err(MasterError::Overloaded {
                    queued: now,
                    max: self.max,
                    retry_after: RETRY_AFTER,
                });
            }
            match self.inside.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Admitted(self.clone())),
                Err(seen) => now = seen,
            }
        }
    }

    /// Calls inside now.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::Acquire)
    }
}

/// Whether a gRPC path is a client's unary call (admitted) rather than a
/// stream, an agent's call or the masters' own traffic.
pub fn admitted_path(path: &str) -> bool {
    if let Some(method) = path.strip_prefix("/orrery.scheduler.v1.Scheduler/") {
        return method != "Subscribe";
    }
    path.starts_with("/orrery.operator.v1.Operator/")
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
    match admission.enter() {
        Ok(_inside) => next.run(req).await,
        Err(e) => crate::grpc::status_of(e).into_http(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn streams_agents_and_raft_are_not_admitted_here() {
        assert!(admitted_path("/orrery.scheduler.v1.Scheduler/Call"));
        assert!(admitted_path("/orrery.operator.v1.Operator/UpdateWeights"));
        assert!(!admitted_path("/orrery.scheduler.v1.Scheduler/Subscribe"));
        assert!(!admitted_path("/orrery.agent.v1.AgentLink/UpdateStatus"));
        assert!(!admitted_path("/orrery.raft.v1.Raft/Append"));
    }
}
