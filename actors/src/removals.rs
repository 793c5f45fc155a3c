//! Safety valves on marking agents unreachable (Mesos'
//! `--recovery_agent_removal_limit` and `--agent_removal_rate_limit`).
//!
//! After a leader change, agents have `--agent-reregister-timeout` to come
//! back. If more than `--recovery-agent-removal-limit` percent of the agents
//! the log knows did not, the likelier story is a partitioned rack or a
//! network blip, not that many machines died at once: the master **holds**
//! those removals (no task is reported LOST or UNREACHABLE, nothing is
//! replaced), logs why, sets `orrery_agent_removals_held` and answers
//! `/health` with 503 and the reason, until enough agents reregister or
//! the operator retires the missing ones (`orrery agents mark-gone`).
//! Mesos fails the master over instead; holding keeps the leader serving
//! everything else and leaves the decision to a person.
//!
//! `--agent-removal-rate-limit N/DURATION` spaces removals of either kind
//! (reregistration deadline or ping budget): at most N in any DURATION
//! window; the rest wait their turn (`orrery_agent_removals_deferred_total`).
//!
//! Pure bookkeeping, no clock of its own: callers pass `Instant`s (or, in
//! the simulator, a monotonic time since any epoch: [`Gate::take_at`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `N/DURATION`, e.g. `1/10s`, `100/1mins` (Mesos' form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let (n, d) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not N/DURATION (like 1/10s)"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: {n:?} is not a whole number"))?;
        if count == 0 {
            return Err(format!("{text:?}: the count must be at least 1"));
        }
        let per = humantime::parse_duration(d.trim())
            .map_err(|e| format!("{text:?}: {d:?} is not a duration ({e})"))?;
        if per.is_zero() {
            return Err(format!("{text:?}: the duration must be above zero"));
        }
        Ok(RateLimit { count, per })
    }
}

/// A limit in percent of the known agents: `0` to `100`, `%` optional.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage (like 50%)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{text:?} is not between 0% and 100%"));
    }
    Ok(v)
}

#[derive(Debug)]
pub struct Gate {
    limit_pct: f64,
    rate: Option<RateLimit>,
    /// When the recent removals were taken, since `epoch`.
    recent: VecDeque<Duration>,
    held: Option<String>,
    epoch: Instant,
}

/// What the reregistration deadline may do.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Proceed,
    /// Hold every removal; the reason (for the log and `/health`).
    Hold(String),
}

impl Gate {
    pub fn new(limit_pct: f64, rate: Option<RateLimit>) -> Gate {
        Gate {
            limit_pct,
            rate,
            recent: VecDeque::new(),
            held: None,
            epoch: Instant::now(),
        }
    }

    /// `late` of `known` agents missed the deadline: proceed, or hold.
    /// Returns whether this is a new hold (to log once).
    pub fn recovery(&mut self, late: usize, known: usize, limit_name: &str) -> (Verdict, bool) {
        if late == 0 || known == 0 {
            self.held = None;
            return (Verdict::Proceed, false);
        }
        let pct = late as f64 * 100.0 / known as f64;
        if pct <= self.limit_pct {
            self.held = None;
            return (Verdict::Proceed, false);
        }
        let reason = format!(
            "holding {late} agent removals: {late} of {known} known agents ({pct:.0}%) did not \
             reregister after the leader change, over {limit_name} {:.0}%; their tasks are \
             left as they are until they reregister or `orrery agents mark-gone` retires them",
            self.limit_pct
        );
        let new = self.held.as_deref() != Some(reason.as_str());
        self.held = Some(reason.clone());
        (Verdict::Hold(reason), new)
    }

    /// Why removals are held now, if they are.
    pub fn held(&self) -> Option<&str> {
        self.held.as_deref()
    }

    /// Clears the hold (a new term starts a new count).
    pub fn reset(&mut self) {
        self.held = None;
    }

    /// Takes a removal's turn under the rate limit; false: wait.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_at(now.saturating_duration_since(self.epoch))
    }

    /// [`Gate::take`] at `now`, a monotonic time since any fixed epoch.
    pub fn take_at(&mut self, now: Duration) -> bool {
        let Some(r) = self.rate else {
            return true;
        };
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= r.per)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < r.count as usize {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_bad_ones_are_named() {
        assert_eq!(
            RateLimit::parse("1/10s"),
            Ok(RateLimit {
                count: 1,
                per: Duration::from_secs(10)
            })
        );
        assert_eq!(
            RateLimit::parse("100/1mins").unwrap().per,
            Duration::from_secs(60)
        );
        for bad in ["1", "x/10s", "0/10s", "1/soon", "1/0s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_percent("50%"), Ok(50.0));
        assert_eq!(parse_percent("100"), Ok(100.0));
        for bad in ["-1%", "101%", "half"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn more_than_the_limit_late_is_held_then_released() {
        let mut g = Gate::new(50.0, None);
        assert_eq!(g.recovery(0, 5, "L").0, Verdict::Proceed);
        // 2 of 5 = 40%: at or under the limit, the removals go ahead.
        assert_eq!(g.recovery(2, 5, "L").0, Verdict::Proceed);
        // 4 of 5 = 80%: held, logged once.
        let (v, new) = g.recovery(4, 5, "L");
        assert!(matches!(v, Verdict::Hold(ref r) if r.contains("4 of 5") && r.contains("80%")));
        assert!(new);
        assert!(
            !g.recovery(4, 5, "L").1,
            "the same hold is not logged again"
        );
        assert!(g.held().is_some());
        // Two of them come back (or are retired): 2 of 5, released.
        assert_eq!(g.recovery(2, 5, "L").0, Verdict::Proceed);
        assert!(g.held().is_none());
        // The default, 100%, never holds.
        let mut all = Gate::new(100.0, None);
        assert_eq!(all.recovery(5, 5, "L").0, Verdict::Proceed);
    }

    #[test]
    fn the_rate_limit_spaces_removals() {
        let mut g = Gate::new(100.0, Some(RateLimit::parse("2/10s").unwrap()));
        let t0 = Instant::now();
        assert!(g.take(t0));
        assert!(g.take(t0 + Duration::from_secs(1)));
        assert!(
            !g.take(t0 + Duration::from_secs(2)),
            "a third within 10 s waits"
        );
        assert!(
            g.take(t0 + Duration::from_secs(10)),
            "the first one's turn expired"
        );
        assert!(!g.take(t0 + Duration::from_secs(10)));
        let mut free = Gate::new(100.0, None);
        assert!((0..1000).all(|_| free.take(t0)));
    }
}
