//! Status updates reach frameworks in order per task, each at least once.
//!
//! - On a live stream, messages arrive in sequence: a gap is a message
//!   lost without the stream breaking (a broken stream ends the session;
//!   the framework resubscribes and reconciles).
//! - Per task, the updates a framework receives never move the task
//!   backwards in the task state machine.
//! - At the end, every task of a framework still registered that ended in
//!   the committed state is known to that framework as ended (through an
//!   update or a reconciliation).

use std::collections::BTreeMap;

use orrery_events::pb::TaskState;
use orrery_events::state::task::{is_terminal, rank};
use orrery_events::TaskId;

use super::Oracle;
use crate::framework::Seen;
use crate::sim::Sim;

pub const NAME: &str = "status updates in order, at least once";

#[derive(Debug, Default)]
pub struct StatusOrder {
    /// Per framework: (session, last sequence number).
    streams: BTreeMap<usize, (u64, u64)>,
    /// Per framework and task: the last state an update brought.
    last: BTreeMap<(usize, TaskId), TaskState>,
}

impl Oracle for StatusOrder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        for fw in &mut sim.frameworks {
            let f = fw.idx;
            for seen in std::mem::take(&mut fw.seen) {
                match seen {
                    Seen::Stream { session, seq } => {
                        let (s, last) = self.streams.entry(f).or_insert((session, 0));
                        if *s != session {
                            *s = session;
                            *last = 0;
                        }
                        if seq != *last + 1 {
                            return Err(format!(
                                "{} got message {seq} after {} on a live stream (session {session})",
                                fw.name, last
                            ));
                        }
                        *last = seq;
                    }
                    Seen::Update { task, state, uuid } => {
                        let prev = self.last.insert((f, task.clone()), state);
                        if let Some(prev) = prev {
                            if rank(state) < rank(prev) || is_terminal(prev) && prev != state {
                                return Err(format!(
                                    "{} saw task {task} go from {} to {} (update {uuid})",
                                    fw.name,
                                    prev.as_str_name(),
                                    state.as_str_name()
                                ));
                            }
                        }
                    }
                    Seen::Reconciled { .. } => {}
                }
            }
        }
        Ok(())
    }

    fn at_end(&mut self, sim: &Sim) -> Result<(), String> {
        let c = &sim.truth.cluster;
        for fw in &sim.frameworks {
            let Some(id) = &fw.framework_id else {
                continue;
            };
            if c.frameworks.get(id).is_none_or(|f| f.removed) {
                continue;
            }
            for t in c.tasks.of_framework(id) {
                if !is_terminal(t.state) {
                    continue;
                }
                let known = fw.tasks.get(&t.key.task_id).copied();
                if !known.is_some_and(is_terminal) {
                    return Err(format!(
                        "task {} ended {} but {} knows it as {}",
                        t.key,
                        t.state.as_str_name(),
                        fw.name,
                        known.map_or("nothing", |s| s.as_str_name())
                    ));
                }
            }
        }
        Ok(())
    }
}
