//! A stream of committed events that starts exactly where asked and never
//! skips: it reads what is already applied, then waits for more.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{LoggedEvent, ReadError};

/// What a backend gives a subscription: committed events by index, and a
/// signal when more are applied.
pub trait EventSource: Send + Sync + 'static {
    /// Up to `max` committed events from `from` on (fewer at the end).
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError>;
    /// The last applied event index, as a watch.
    fn applied(&self) -> watch::Receiver<u64>;
}

/// Reads per refill: bounds memory and keeps a slow consumer from holding
/// the log's lock for long.
const REFILL_EVENTS_MAX: usize = 1024;

pub struct Subscription {
    source: Arc<dyn EventSource>,
    next: u64,
    buf: VecDeque<LoggedEvent>,
    applied: watch::Receiver<u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next", &self.next)
            .finish()
    }
}

impl Subscription {
    pub fn new(source: Arc<dyn EventSource>, from: u64) -> Self {
        let applied = source.applied();
        Self {
            source,
            next: from.max(1),
            buf: VecDeque::new(),
            applied,
        }
    }

    /// The index of the event `next` will return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next committed event, waiting for it if need be.
    pub async fn next(&mut self) -> Result<LoggedEvent, ReadError> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                debug_assert_eq!(e.index, self.next, "a subscription never skips");
                self.next += 1;
                return Ok(e);
            }
            let applied = *self.applied.borrow_and_update();
            if self.next <= applied {
                let events = self.source.read_from(self.next, REFILL_EVENTS_MAX)?;
                if events.first().map(|e| e.index) != Some(self.next) {
                    return Err(ReadError::Unavailable(format!(
                        "event {} is applied but could not be read",
                        self.next
                    )));
                }
                self.buf.extend(events);
                continue;
            }
            self.applied
                .changed()
                .await
                .map_err(|_| ReadError::Unavailable("the log was closed".into()))?;
        }
    }
}
