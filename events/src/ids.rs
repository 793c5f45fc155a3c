//! Typed identifiers of the cluster's entities.
//!
//! Owns the newtypes (`AgentId`, `FrameworkId`, `TaskId`, `OfferId`) and the
//! one validation rule every id obeys. Ids minted by the master come from
//! counters in the replicated state (`S1`, `F1`, `O1`), never from a clock or
//! an RNG, so that replay mints the same ids.

use std::fmt;

use crate::rejection::Rejection;

/// The longest id Orrery accepts, in bytes. Mesos has no limit; we bound it
/// so a hostile client cannot grow the log with one call.
pub const ID_LEN_MAX: usize = 256;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub String);

        impl $name {
            /// What this id names, for error messages.
            pub const KIND: &'static str = $kind;

            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Checks the rules every id obeys (see [`validate_id`]).
            pub fn validate(&self) -> Result<(), Rejection> {
                validate_id($kind, &self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

id_type!(
    /// An agent, minted by the master at first registration (`S<n>`).
    AgentId,
    "agent id"
);
id_type!(
    /// A framework, minted by the master at first subscription (`F<n>`).
    FrameworkId,
    "framework id"
);
id_type!(
    /// A task, chosen by its framework; unique within that framework.
    TaskId,
    "task id"
);
id_type!(
    /// An offer, minted by the allocator (`O<n>`).
    OfferId,
    "offer id"
);

/// A task is named by its framework and its id: task ids are unique per
/// framework, as in Mesos.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TaskKey {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
}

impl TaskKey {
    pub fn new(framework_id: impl Into<FrameworkId>, task_id: impl Into<TaskId>) -> Self {
        Self {
            framework_id: framework_id.into(),
            task_id: task_id.into(),
        }
    }
}

/// A task key seen as two borrowed strings, so that maps keyed by
/// `TaskKey` can be searched with `(&str, &str)` without allocating.
/// Ordering must agree with `TaskKey`'s derived order (framework, then task).
pub trait TaskKeyRef {
    fn framework(&self) -> &str;
    fn task(&self) -> &str;
}

impl TaskKeyRef for TaskKey {
    fn framework(&self) -> &str {
        &self.framework_id.0
    }
    fn task(&self) -> &str {
        &self.task_id.0
    }
}

impl TaskKeyRef for (&str, &str) {
    fn framework(&self) -> &str {
        self.0
    }
    fn task(&self) -> &str {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn TaskKeyRef + 'a> for TaskKey {
    fn borrow(&self) -> &(dyn TaskKeyRef + 'a) {
        self
    }
}

impl PartialEq for dyn TaskKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.framework() == other.framework() && self.task() == other.task()
    }
}

impl Eq for dyn TaskKeyRef + '_ {}

impl PartialOrd for dyn TaskKeyRef + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn TaskKeyRef + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.framework(), self.task()).cmp(&(other.framework(), other.task()))
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.framework_id, self.task_id)
    }
}

/// The rules for any id or name that ends up in the log: non-empty, at most
/// [`ID_LEN_MAX`] bytes, printable (no control characters, no whitespace),
/// and not `.`/`..` (ids become directory names on agents).
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), Rejection> {
    let problem = if id.is_empty() {
        Some("is empty")
    } else if id.len() > ID_LEN_MAX {
        Some("is longer than 256 bytes")
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("contains whitespace or a control character")
    } else if id.contains('/') || id == "." || id == ".." {
        Some("contains '/' or is '.' or '..'")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Rejection::InvalidId {
            kind,
            id: truncate_for_message(id),
            problem,
        }),
    }
}

/// Bounds what a refusal echoes back, so an oversized input does not make an
/// oversized error.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("task id", "web-1").is_ok());
        for bad in ["", " x", "a/b", "..", "a\nb", &"x".repeat(257)] {
            assert!(
                matches!(
                    validate_id("task id", bad),
                    Err(Rejection::InvalidId { .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn messages_truncate_on_char_boundaries() {
        let s = "é".repeat(100);
        let t = truncate_for_message(&s);
        assert!(t.len() <= 64 + '…'.len_utf8());
    }
}
