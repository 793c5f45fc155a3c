//! An Aurora-style job as the master records it: its key and its spec.
//! Owns `JobKey` and `Job`; the job scheduler (`crate::jobs`) keeps N
//! instances of it running and rolls updates out.

use std::fmt;

use orrery_proto::events as pb;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    pub role: String,
    pub env: String,
    pub name: String,
}

impl JobKey {
    pub fn new(role: &str, env: &str, name: &str) -> Self {
        Self {
            role: role.to_owned(),
            env: env.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn from_proto(p: Option<&pb::JobKey>) -> Self {
        match p {
            Some(k) => Self::new(&k.role, &k.env, &k.name),
            None => Self::new("", "", ""),
        }
    }

    pub fn to_proto(&self) -> pb::JobKey {
        pb::JobKey {
            role: self.role.clone(),
            env: self.env.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.role, self.env, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub key: JobKey,
    pub spec: pb::JobSpec,
    pub created_at_ms: u64,
    /// Bumped by every update.
    pub version: u64,
    /// The spec before the update in progress (what a rollback restores);
    /// `None` once the update finished or rolled back.
    pub previous: Option<pb::JobSpec>,
}
