//! The master's record of one framework (a scheduler): identity, role,
//! capabilities and connection. Owns `Framework`; changed only by `apply`.

use crate::ids::FrameworkId;
use crate::resources::Resources;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framework {
    pub id: FrameworkId,
    pub name: String,
    pub role: String,
    /// May receive offers from agents in a remote region.
    pub region_aware: bool,
    /// Gets TASK_UNREACHABLE (not TASK_LOST) when an agent is partitioned.
    pub partition_aware: bool,
    pub checkpoint: bool,
    pub failover_timeout_ms: u64,
    /// Bound at first subscription; a failover must present the same one.
    pub principal: String,
    pub connected: bool,
    pub suppressed: bool,
    pub disconnected_at_ms: u64,
    /// Torn down or expired: kept so that its id is never reused.
    pub removed: bool,
    /// The leader term of the latest subscription.
    pub subscribed_term: u64,
    /// Derived: scalar resources of its offers and non-terminal tasks (its
    /// DRF allocation).
    pub allocated: Resources,
}

impl Framework {
    /// Its capabilities as the log's enum values (REGION_AWARE first).
    pub fn capabilities_proto(&self) -> Vec<i32> {
        use orrery_proto::events::FrameworkCapability as C;
        let mut out = Vec::new();
        if self.region_aware {
            out.push(C::RegionAware as i32);
        }
        if self.partition_aware {
            out.push(C::PartitionAware as i32);
        }
        out
    }

    /// Whether it may be offered anything right now.
    pub fn wants_offers(&self) -> bool {
        self.connected && !self.suppressed && !self.removed
    }
}
