//! Remote-region offers go only to REGION_AWARE frameworks: an offer for
//! an agent outside the master's region goes to a framework that said it
//! can use one.

use orrery_events::pb::envelope::Payload;
use orrery_events::{pb, Cluster};

use super::{region_of, Oracle};

pub const NAME: &str = "remote offers only to REGION_AWARE frameworks";

#[derive(Debug)]
pub struct RemoteOffers;

impl Oracle for RemoteOffers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        let Some(Payload::OffersMade(m)) = &env.payload else {
            return Ok(());
        };
        let master_region = before
            .leader
            .as_ref()
            .and_then(|l| l.domain.as_ref())
            .map(|d| d.region.clone());
        for o in &m.offers {
            let region = region_of(before, &o.agent_id);
            let remote = region.is_some() && master_region.is_some() && region != master_region;
            let aware = before
                .frameworks
                .get(o.framework_id.as_str())
                .is_some_and(|f| f.region_aware);
            if remote && !aware {
                return Err(format!(
                    "offer {} for agent {} in region {} went to {}, which is not REGION_AWARE",
                    o.offer_id,
                    o.agent_id,
                    region.unwrap_or_default(),
                    o.framework_id
                ));
            }
        }
        Ok(())
    }
}
