//! Leadership and cluster-wide settings: elections and DRF weights.

use orrery_proto::events as pb;

use super::{check_count, check_name, limits, Event};
use crate::command::ElectLeader;
use crate::rejection::Rejection;
use crate::state::Cluster;

/// A new term's leader. Every outstanding offer was made by the old leader
/// to scheduler streams that are gone, so they are rescinded; every
/// connected framework must resubscribe, so its failover clock starts.
///
/// The same leader again in the same term is a restart of that replica
/// (a one-member group keeps its raft term across a restart): Raft allows
/// one leader per term, so it is that leader taking office again.
pub(super) fn elect(c: &Cluster, cmd: ElectLeader) -> Result<Vec<Event>, Rejection> {
    let same_leader_again = c
        .leader
        .as_ref()
        .is_some_and(|l| l.term == cmd.term && l.leader_id == cmd.leader_id);
    if cmd.term <= c.term() && !same_leader_again {
        return Err(Rejection::StaleTerm {
            term: cmd.term,
            current: c.term(),
        });
    }
    if let Some(d) = &cmd.domain {
        check_name("domain region", &d.region, false)?;
        check_name("domain zone", &d.zone, false)?;
    }
    let mut events = vec![Event::LeaderElected(pb::LeaderElected {
        term: cmd.term,
        leader_id: cmd.leader_id,
        leader_addr: cmd.leader_addr,
        http_addr: cmd.http_addr,
        domain: cmd.domain.map(|d| pb::Domain {
            region: d.region,
            zone: d.zone,
        }),
        config: Some(cmd.config.to_proto()),
    })];
    if !c.offers.is_empty() {
        events.push(Event::OffersRescinded(pb::OffersRescinded {
            offer_ids: c.offers.keys().map(|id| id.0.clone()).collect(),
            reason: pb::RescindReason::RescindLeaderChanged as i32,
        }));
    }
    for fw in c.frameworks.values().filter(|f| f.connected) {
        events.push(Event::FrameworkDisconnected(pb::FrameworkDisconnected {
            framework_id: fw.id.0.clone(),
        }));
    }
    Ok(events)
}

pub(super) fn set_role_weights(
    c: &Cluster,
    weights: Vec<(String, f64)>,
) -> Result<Vec<Event>, Rejection> {
    let _ = c;
    check_count("role weights", weights.len(), limits::ROLES_MAX)?;
    let mut table = std::collections::BTreeMap::new();
    for (role, w) in weights {
        check_name("role", &role, false)?;
        if !w.is_finite() || w <= 0.0 || w > 1_000_000.0 {
            return Err(Rejection::InvalidField {
                field: "weight",
                problem: format!("weight {w} of role {role:?} must be in (0, 1000000]"),
            });
        }
        let milli = ((w * 1000.0).round() as u64).max(1);
        if table.insert(role.clone(), milli).is_some() {
            return Err(Rejection::InvalidField {
                field: "role",
                problem: format!("role {role:?} is given twice"),
            });
        }
    }
    Ok(vec![Event::RoleWeightsSet(pb::RoleWeightsSet {
        weights: table
            .into_iter()
            .map(|(role, weight_milli)| pb::RoleWeight { role, weight_milli })
            .collect(),
    })])
}
