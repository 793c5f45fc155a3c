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
