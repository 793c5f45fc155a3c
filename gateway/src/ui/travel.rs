//! Time travel: the committed state after any event of the log, and the
//! events themselves, read from this master's own log.
//!
//! The same engine as `orrery replay`: events are decoded with
//! `orrery_events::codec` and applied with `orrery_events::try_apply` from
//! an empty state, or from the log's latest snapshot when the events
//! before it were purged (older points are then gone from this master, and
//! the page says so: `orrery replay --log-file` on an export still has
//! them). The last state computed is kept, so stepping forward from it
//! applies only the events in between; stepping back starts again from
//! the beginning (or the snapshot).

use std::sync::{Arc, Mutex};

use orrery_actors::master::Log;
use orrery_events::pb;
use orrery_events::{codec, snapshot, Cluster};
use orrery_storage::{EventLog, ReadError, StateAccess};

/// Events read per call to the log.
const PAGE: usize = 10_000;

/// The last past state computed (shared by every request).
#[derive(Clone, Debug, Default)]
pub struct Travel {
    last: Arc<Mutex<Option<Arc<Cluster>>>>,
}

/// A point in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The live state (the page follows new commits).
    Live,
    /// The state after this event.
    At(u64),
}

impl Point {
    pub fn index(self) -> Option<u64> {
        match self {
            Point::Live => None,
            Point::At(i) => Some(i),
        }
    }
}

/// Reads `at=`: empty or `live` is now; an event index; or a time (RFC
/// 3339: the last event proposed at or before it).
pub async fn parse_point(log: &Log, text: Option<&str>) -> Result<Point, String> {
    let text = text.map(str::trim).unwrap_or("");
    if text.is_empty() || text.eq_ignore_ascii_case("live") {
        return Ok(Point::Live);
    }
    let last = log.last_applied();
    if let Ok(i) = text.parse::<u64>() {
        if i > last {
            return Err(format!(
                "event {i} is past the end of the log (event {last})"
            ));
        }
        return Ok(if i == last { Point::Live } else { Point::At(i) });
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "at={text:?} is neither an event index nor a time (RFC 3339, like 2026-11-21T03:12:00Z)"
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("at={text:?} is before 1970"))?
        .as_millis() as u64;
    // Times follow the log (each leader stamps its proposals): a binary
    // search over the events' `proposed_at_ms`.
    let (mut lo, mut hi) = (0u64, last);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match read(log, mid, mid + 1).await {
            Ok(e) if e.first().is_some_and(|e| e.proposed_at_ms <= ms) => lo = mid,
            Ok(_) => hi = mid - 1,
            // Purged: that part of the log is before any time we can show.
            Err(_) => lo = mid,
        }
    }
    Ok(if lo >= last {
        Point::Live
    } else {
        Point::At(lo)
    })
}

/// Committed events in `[from, to)`, decoded.
pub async fn read(log: &Log, from: u64, to: u64) -> Result<Vec<pb::Envelope>, String> {
    let raw = log.read(from.max(1), to, PAGE).await.map_err(|e| match e {
        ReadError::Compacted { first_available } => {
            format!("events before {first_available} were purged into a snapshot on this master")
        }
        e => e.to_string(),
    })?;
    raw.into_iter()
        .map(|e| {
            codec::decode(&e.payload)
                .map_err(|err| format!("event {} does not decode: {err}", e.index))
        })
        .collect()
}

impl Travel {
    /// The state at `point` (the live one, or rebuilt from the log).
    pub async fn state(&self, log: &Log, point: Point) -> Result<Arc<Cluster>, String> {
        match point {
            Point::Live => Ok(Arc::new(log.with_state(|m| m.cluster.clone()))),
            Point::At(at) => self.state_at(log, at).await,
        }
    }

    async fn state_at(&self, log: &Log, at: u64) -> Result<Arc<Cluster>, String> {
        let last = log.last_applied();
        if at > last {
            return Err(format!(
                "event {at} is past the end of the log (event {last})"
            ));
        }
        let cached = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|c| c.applied_index <= at);
        let mut c = match cached {
            Some(c) if c.applied_index == at => return Ok(c),
            Some(c) => (*c).clone(),
            None => Cluster::new(),
        };
        while c.applied_index < at {
            let from = c.applied_index + 1;
            let events = match log.read(from, at + 1, PAGE).await {
                Ok(events) => events,
                Err(ReadError::Compacted { first_available }) if c.applied_index == 0 => {
                    let (index, bytes) = log.latest_snapshot().ok_or_else(|| {
                        format!("events before {first_available} were purged and no snapshot is at hand")
                    })?;
                    if index > at {
                        return Err(format!(
                            "event {at} is before this master's snapshot (event {index}): \
                             older states were purged here; `orrery replay --log-file` on an \
                             export keeps them"
                        ));
                    }
                    c = snapshot::decode(&bytes)
                        .map_err(|e| format!("the snapshot does not decode: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("reading the log from event {from}: {e}")),
            };
            if events.is_empty() {
                return Err(format!(
                    "the log ended at event {} before event {at}",
                    c.applied_index
                ));
            }
            for e in events {
                let env = codec::decode(&e.payload)
                    .map_err(|err| format!("event {} does not decode: {err}", e.index))?;
                orrery_events::try_apply(&mut c, &env)
                    .map_err(|err| format!("event {}: {err}", e.index))?;
            }
        }
        let c = Arc::new(c);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }
}
