//! The masters' group: recording who asked for a change and what raft made
//! of it.
//!
//! Raft's membership entries are what decide who votes; `decide` only keeps
//! the log's record honest: one change at a time (a request stays pending
//! until `RecordMasters` settles it), and an id once removed is never given
//! to a new master. What depends on raft's live view (who leads, who is
//! caught up, whether a quorum would remain) is checked by the storage
//! layer, which owns that view.

use orrery_proto::events as pb;

use super::Event;
use crate::rejection::Rejection;
use crate::state::Cluster;

/// Masters one group may list (voters and learners).
pub const MASTERS_MAX: usize = 16;

fn change_name(change: pb::MastersChange) -> &'static str {
    match change {
        pb::MastersChange::AddLearner => "join as a learner",
        pb::MastersChange::Promote => "promote to voter",
        pb::MastersChange::Remove => "remove",
        pb::MastersChange::Unspecified => "unspecified",
    }
}

/// What a pending request says, for refusals and `orrery masters list`.
pub fn describe_pending(p: &pb::MastersChangeRequested) -> String {
    let change = pb::MastersChange::try_from(p.change).unwrap_or_default();
    format!("{} master {}", change_name(change), p.node_id)
}

pub(super) fn request(
    c: &Cluster,
    change: pb::MastersChange,
    node_id: u64,
    addr: String,
) -> Result<Vec<Event>, Rejection> {
    if node_id == 0 {
        return Err(Rejection::InvalidField {
            field: "node_id",
            problem: "master ids start at 1".into(),
        });
    }
    if change == pb::MastersChange::Unspecified {
        return Err(Rejection::InvalidField {
            field: "change",
            problem: "name the change: join as a learner, promote or remove".into(),
        });
    }
    if let Some(p) = &c.masters.pending {
        return Err(Rejection::MastersChangeInProgress {
            pending: describe_pending(p),
        });
    }
    if c.masters.retired.contains(&node_id) {
        return Err(Rejection::MasterIdRetired { node_id });
    }
    let addr = if change == pb::MastersChange::AddLearner {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(Rejection::InvalidField {
                field: "addr",
                problem: format!("{addr:?} is not HOST:PORT"),
            });
        }
        addr
    } else {
        String::new()
    };
    Ok(vec![Event::MastersChangeRequested(
        pb::MastersChangeRequested {
            change: change as i32,
            node_id,
            addr,
        },
    )])
}

pub(super) fn record(
    c: &Cluster,
    members: Vec<(u64, String, bool)>,
    outcome: String,
) -> Result<Vec<Event>, Rejection> {
    let _ = c;
    super::check_count("masters", members.len(), MASTERS_MAX)?;
    if !members.iter().any(|m| m.2) {
        return Err(Rejection::InvalidField {
            field: "members",
            problem: "a masters' group needs at least one voter".into(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, _, _) in &members {
        if *id == 0 || !seen.insert(*id) {
            return Err(Rejection::InvalidField {
                field: "members",
                problem: format!("master id {id} is 0 or listed twice"),
            });
        }
    }
    Ok(vec![Event::MastersChanged(pb::MastersChanged {
        members: members
            .into_iter()
            .map(|(node_id, addr, voter)| pb::MasterMember {
                node_id,
                addr,
                voter,
            })
            .collect(),
        outcome,
    })])
}

#[cfg(test)]
mod tests {
    use crate::command::Command;
    use crate::testkit::Scenario;
    use orrery_proto::events as pb;

    fn req(change: pb::MastersChange, node_id: u64, addr: &str) -> Command {
        Command::RequestMastersChange {
            change,
            node_id,
            addr: addr.into(),
        }
    }

    fn rec(members: &[(u64, bool)], outcome: &str) -> Command {
        Command::RecordMasters {
            members: members
                .iter()
                .map(|&(id, v)| (id, format!("127.0.0.1:{}", 7000 + id), v))
                .collect(),
            outcome: outcome.into(),
        }
    }

    #[test]
    fn one_change_at_a_time_and_removed_ids_stay_retired() {
        let mut s = Scenario::with_leader();
        s.given(req(pb::MastersChange::Remove, 3, ""));
        // A second request while one is pending is refused, by name.
        let err = s.when(req(pb::MastersChange::Promote, 4, "")).unwrap_err();
        assert_eq!(err.name(), "masters_change_in_progress");
        assert!(err.to_string().contains("remove master 3"), "{err}");
        s.given(rec(&[(1, true), (2, true)], ""));
        assert!(s.cluster.masters.pending.is_none());
        assert!(s.cluster.masters.retired.contains(&3));
        let err = s
            .when(req(pb::MastersChange::AddLearner, 3, "127.0.0.1:7003"))
            .unwrap_err();
        assert_eq!(err.name(), "master_id_retired");
        // A change that did not take effect retires nothing.
        s.given(req(pb::MastersChange::Remove, 2, ""));
        s.given(rec(&[(1, true), (2, true)], "refused: no quorum"));
        assert!(!s.cluster.masters.retired.contains(&2));
        assert!(s
            .when(req(pb::MastersChange::AddLearner, 4, "nope"))
            .is_err());
        assert!(s.when(rec(&[(4, false)], "")).is_err());
        s.given(req(pb::MastersChange::AddLearner, 4, "127.0.0.1:7004"));
        // The record survives a snapshot round trip.
        let back = crate::snapshot::decode(&crate::snapshot::encode(&s.cluster)).unwrap();
        assert_eq!(back.masters, s.cluster.masters);
    }
}
