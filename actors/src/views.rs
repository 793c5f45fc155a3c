//! The operator's view of the cluster: what `GET /state`, the `GetState`
//! RPC and `orrery agent|framework|task list` show. Built from committed
//! state only.

use orrery_events::pb;
use orrery_events::state::Domain;
use orrery_events::Cluster;
use orrery_proto::operator as op;

fn domain(d: &Option<Domain>) -> Option<pb::Domain> {
    d.as_ref().map(Domain::to_proto)
}

/// The whole view. `commit_index` is the log's applied event index.
pub fn state(c: &Cluster) -> op::State {
    let leader = c.leader.as_ref();
    op::State {
        leader_id: leader.map_or(0, |l| l.leader_id),
        leader_addr: leader.map(|l| l.addr.clone()).unwrap_or_default(),
        term: leader.map_or(0, |l| l.term),
        commit_index: c.applied_index,
        agents: c
            .agents
            .values()
            .map(|a| op::AgentView {
                agent_id: a.id.0.clone(),
                hostname: a.hostname.clone(),
                ip: a.ip.clone(),
                state: a.state.as_str().to_owned(),
                total: Some(a.total.to_proto()),
                used: Some(a.used.to_proto()),
                offered: Some(a.offered.to_proto()),
                domain: domain(&a.domain),
                attributes: a
                    .attributes
                    .iter()
                    .map(|(name, value)| pb::Attribute {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                tasks: c.tasks_on_agent(&a.id).filter(|t| !t.is_terminal()).count() as u32,
            })
            .collect(),
        frameworks: c
            .frameworks
            .values()
            .map(|f| {
                let capabilities = f.capabilities_proto();
                op::FrameworkView {
                    framework_id: f.id.0.clone(),
                    name: f.name.clone(),
                    role: f.role.clone(),
                    connected: f.connected,
                    suppressed: f.suppressed,
                    removed: f.removed,
                    allocated: Some(f.allocated.to_proto()),
                    capabilities,
                    tasks: 0,
                    principal: f.principal.clone(),
                }
            })
            .collect(),
        tasks: c
            .tasks
            .iter()
            .map(|(k, t)| op::TaskView {
                framework_id: k.framework_id.0.clone(),
                task_id: k.task_id.0.clone(),
                name: t.name.clone(),
                agent_id: t.agent_id.0.clone(),
                hostname: c
                    .agents
                    .get(&t.agent_id)
                    .map(|a| a.hostname.clone())
                    .unwrap_or_default(),
                state: t.state as i32,
                resources: Some(t.resources.to_proto()),
                message: t.message.clone(),
            })
            .collect(),
    }
}
