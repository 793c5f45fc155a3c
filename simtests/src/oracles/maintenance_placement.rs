//! Nothing is placed on a host in maintenance: no offer is made for, and
//! no task launched on, an agent whose host is DRAINING, DRAINED or DOWN.

use orrery_events::pb::envelope::Payload;
use orrery_events::state::HostState;
use orrery_events::{pb, Cluster};

use super::Oracle;

pub const NAME: &str = "no placement on hosts in maintenance";

#[derive(Debug)]
pub struct MaintenancePlacement;

fn host_state(c: &Cluster, agent_id: &str) -> HostState {
    c.agents
        .get(agent_id)
        .and_then(|a| c.host_of(a))
        .map_or(HostState::Up, |h| h.state)
}

impl Oracle for MaintenancePlacement {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        match &env.payload {
            Some(Payload::OffersMade(m)) => {
                for o in &m.offers {
                    let s = host_state(before, &o.agent_id);
                    if s != HostState::Up {
                        return Err(format!(
                            "offer {} for agent {} whose host is {}",
                            o.offer_id,
                            o.agent_id,
                            s.as_str()
                        ));
                    }
                }
            }
            Some(Payload::TaskLaunched(l)) => {
                let s = host_state(before, &l.agent_id);
                if s != HostState::Up {
                    return Err(format!(
                        "task {} launched on agent {} whose host is {}",
                        l.task_id,
                        l.agent_id,
                        s.as_str()
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
