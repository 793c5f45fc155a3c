//! An outstanding offer: resources of one agent lent to one framework until
//! it accepts, declines, or the offer is rescinded. Owns `Offer`.

use crate::ids::{AgentId, FrameworkId, OfferId};
use crate::resources::Resources;
use crate::state::host::Unavailability;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
    /// 0 = no offer timeout.
    pub expires_at_ms: u64,
    pub unavailability: Option<Unavailability>,
}

/// A framework's answer to an inverse offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InverseAnswer {
    Outstanding,
    Accepted,
    Declined,
}

impl InverseAnswer {
    /// Mesos' names in `/maintenance/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            InverseAnswer::Outstanding => "UNKNOWN",
            InverseAnswer::Accepted => "ACCEPT",
            InverseAnswer::Declined => "DECLINE",
        }
    }

    pub fn code(self) -> u32 {
        match self {
            InverseAnswer::Outstanding => 0,
            InverseAnswer::Accepted => 1,
            InverseAnswer::Declined => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(InverseAnswer::Outstanding),
            1 => Some(InverseAnswer::Accepted),
            2 => Some(InverseAnswer::Declined),
            _ => None,
        }
    }
}

/// Mesos' inverse offer: the master asks a framework to vacate an agent
/// whose machine is scheduled for maintenance. One per (framework, agent)
/// while the machine is in the schedule and not DOWN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InverseOffer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    pub unavailability: Unavailability,
    pub answer: InverseAnswer,
    pub answered_at_ms: u64,
}

impl InverseOffer {
    pub fn to_proto(&self) -> orrery_proto::events::InverseOffer {
        orrery_proto::events::InverseOffer {
            offer_id: self.id.0.clone(),
            framework_id: self.framework_id.0.clone(),
            agent_id: self.agent_id.0.clone(),
            hostname: self.hostname.clone(),
            unavailability: Some(orrery_proto::events::Unavailability {
                start_ns: self.unavailability.start_ns,
                duration_ns: self.unavailability.duration_ns,
            }),
        }
    }
}
