//! What the active master does once events are committed: messages to
//! frameworks and agents.
//!
//! `effects_of(before, envelope)` is a pure function of the state *before*
//! the event and the event itself (a rescind must know whose offer it was,
//! and the offer is gone afterwards). The master computes effects while it
//! applies a batch speculatively and sends them only when the log commits
//! the batch: nothing leaves the master that the log has not made true.

use orrery_events::pb::envelope::Payload;
use orrery_events::pb::{self, TaskState};
use orrery_events::{AgentId, Cluster, FrameworkId, TaskKey};
use orrery_proto::agent as ap;
use orrery_proto::scheduler as sp;

/// A message to send once the batch that caused it is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    ToFramework(FrameworkId, sp::event::Event),
    /// Boxed: a launch is far larger than the other effects.
    ToAgent(AgentId, Box<ap::master_message::Message>),
    /// The framework was removed: end its stream with this message.
    CloseFramework(FrameworkId, String),
    /// A job was created or changed, or one of its tasks ended: the job
    /// scheduler has work.
    JobsChanged,
    /// The agent's id was retired (its host went DOWN, or the operator):
    /// end its stream so it registers again, as a new agent.
    CloseAgent(AgentId),
}

/// A scheduler-API task status from the log's status event.
pub fn status_of(e: &pb::TaskStatusUpdated) -> sp::TaskStatus {
    sp::TaskStatus {
        task_id: e.task_id.clone(),
        agent_id: e.agent_id.clone(),
        state: e.state,
        reason: e.reason,
        message: e.message.clone(),
        source: e.source,
        uuid: e.uuid.clone(),
        exit_code: e.exit_code,
        healthy: e.healthy,
    }
}

/// The offer as a framework sees it: with the agent's hostname, attributes
/// and fault domain.
pub fn offer_view(before: &Cluster, o: &pb::Offer) -> sp::Offer {
    let agent = before.agents.get(o.agent_id.as_str());
    sp::Offer {
        offer_id: o.offer_id.clone(),
        framework_id: o.framework_id.clone(),
        agent_id: o.agent_id.clone(),
        hostname: agent.map(|a| a.hostname.clone()).unwrap_or_default(),
        resources: o.resources.clone(),
        attributes: agent
            .map(|a| {
                a.attributes
                    .iter()
                    .map(|(name, value)| pb::Attribute {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        domain: agent
            .and_then(|a| a.domain.as_ref())
            .map(orrery_events::state::Domain::to_proto),
        unavailability: o.unavailability,
    }
}

/// Groups (framework, item) pairs into one list per framework, in the order
/// frameworks first appear (one Offers event per framework, in offer order).
fn by_framework<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> Vec<(FrameworkId, Vec<T>)> {
    let mut out: Vec<(FrameworkId, Vec<T>)> = Vec::new();
    for (fw, item) in items {
        match out.iter_mut().find(|(f, _)| f.0 == fw) {
            Some((_, list)) => list.push(item),
            None => out.push((FrameworkId::new(fw.to_owned()), vec![item])),
        }
    }
    out
}

/// An inverse offer as the scheduler API shows it.
pub fn inverse_offer_view(o: &pb::InverseOffer) -> sp::InverseOffer {
    sp::InverseOffer {
        offer_id: o.offer_id.clone(),
        framework_id: o.framework_id.clone(),
        agent_id: o.agent_id.clone(),
        hostname: o.hostname.clone(),
        unavailability: o.unavailability,
    }
}

/// The health check of a job's tasks, if the job has one.
pub fn health_check_of(c: &Cluster, job: Option<&pb::JobKey>) -> Option<pb::HealthCheck> {
    let key = orrery_events::state::JobKey::from_proto(Some(job?));
    c.jobs.get(&key)?.spec.health_check.clone()
}

/// The effects of one committed event, given the state before it.
pub fn effects_of(before: &Cluster, payload: &Payload) -> Vec<Effect> {
    let mut out = Vec::new();
    match payload {
        Payload::OffersMade(e) => {
            let views = e
                .offers
                .iter()
                .map(|o| (o.framework_id.as_str(), offer_view(before, o)));
            for (fw, offers) in by_framework(views) {
                out.push(Effect::ToFramework(
                    fw,
                    sp::event::Event::Offers(sp::Offers { offers }),
                ));
            }
        }
        Payload::OffersRescinded(e) => {
            for id in &e.offer_ids {
                if let Some(o) = before.offers.get(id.as_str()) {
                    out.push(Effect::ToFramework(
                        o.framework_id.clone(),
                        sp::event::Event::Rescind(sp::Rescind {
                            offer_id: id.clone(),
                        }),
                    ));
                }
            }
        }
        Payload::InverseOffersMade(e) => {
            let views = e
                .inverse_offers
                .iter()
                .map(|o| (o.framework_id.as_str(), inverse_offer_view(o)));
            for (fw, inverse_offers) in by_framework(views) {
                out.push(Effect::ToFramework(
                    fw,
                    sp::event::Event::InverseOffers(sp::InverseOffers { inverse_offers }),
                ));
            }
        }
        Payload::InverseOffersRescinded(e) => {
            for id in &e.offer_ids {
                if let Some(o) = before.inverse_offers.get(id.as_str()) {
                    out.push(Effect::ToFramework(
                        o.framework_id.clone(),
                        sp::event::Event::RescindInverseOffer(sp::RescindInverseOffer {
                            offer_id: id.clone(),
                        }),
                    ));
                }
            }
        }
        Payload::TaskLaunched(e) => {
            let checkpoint = before
                .frameworks
                .get(e.framework_id.as_str())
                .is_some_and(|f| f.checkpoint);
            out.push(Effect::ToAgent(
                AgentId::new(e.agent_id.clone()),
                Box::new(ap::master_message::Message::Launch(ap::LaunchTask {
                    framework_id: e.framework_id.clone(),
                    task_id: e.task_id.clone(),
                    name: e.name.clone(),
                    resources: e.resources.clone(),
                    command: e.command.clone(),
                    checkpoint,
                    health_check: health_check_of(before, e.job.as_ref()),
                })),
            ));
        }
        Payload::TaskKillRequested(e) => {
            let key = TaskKey::new(e.framework_id.clone(), e.task_id.clone());
            if let Some(t) = before.task(&key) {
                out.push(Effect::ToAgent(
                    t.agent_id.clone(),
                    Box::new(ap::master_message::Message::Kill(ap::KillTask {
                        framework_id: e.framework_id.clone(),
                        task_id: e.task_id.clone(),
                    })),
                ));
            }
        }
        Payload::JobCreated(_) | Payload::JobUpdated(_) | Payload::HostDrainStarted(_) => {
            out.push(Effect::JobsChanged)
        }
        Payload::TaskStatusUpdated(e) => {
            let key = TaskKey::new(e.framework_id.clone(), e.task_id.clone());
            let state = pb::TaskState::try_from(e.state).unwrap_or(TaskState::Unspecified);
            let ended_or_sick =
                orrery_events::state::task::is_terminal(state) || e.healthy == Some(false);
            if ended_or_sick && before.task(&key).is_some_and(|t| t.job.is_some()) {
                out.push(Effect::JobsChanged);
            }
            out.push(Effect::ToFramework(
                FrameworkId::new(e.framework_id.clone()),
                sp::event::Event::Update(sp::Update {
                    status: Some(status_of(e)),
                }),
            ));
        }
        Payload::AgentUnreachable(pb::AgentUnreachable { agent_id, .. })
        | Payload::AgentGone(pb::AgentGone { agent_id, .. }) => {
            if matches!(payload, Payload::AgentGone(_)) {
                out.push(Effect::CloseAgent(AgentId::new(agent_id.clone())));
            }
            // Mesos' FAILURE, to every framework with live tasks there.
            let id = AgentId::new(agent_id.clone());
            let mut told: Vec<&FrameworkId> = Vec::new();
            for t in before.tasks_on_agent(&id) {
                if t.state == TaskState::TaskUnreachable || t.is_terminal() {
                    continue;
                }
                if !told.contains(&&t.key.framework_id) {
                    told.push(&t.key.framework_id);
                    out.push(Effect::ToFramework(
                        t.key.framework_id.clone(),
                        sp::event::Event::Failure(sp::Failure {
                            agent_id: agent_id.clone(),
                        }),
                    ));
                }
            }
        }
        Payload::FrameworkRemoved(e) => {
            let why = match pb::FrameworkRemovalReason::try_from(e.reason) {
                Ok(pb::FrameworkRemovalReason::RemovalTeardown) => "the framework was torn down",
                Ok(pb::FrameworkRemovalReason::RemovalFailoverTimeout) => {
                    "the framework's failover timeout passed"
                }
                _ => "the framework was removed",
            };
            out.push(Effect::CloseFramework(
                FrameworkId::new(e.framework_id.clone()),
                why.to_owned(),
            ));
        }
        _ => {}
    }
    out
}

/// After a (re)registration: re-sends the launches of STAGING tasks the
/// agent did not report (the launch may have been lost with an old
/// leader or a broken stream; agents ignore a launch of a task they
/// run), and kills tasks the agent runs that the master holds terminal
/// or does not know (Mesos: a non-PARTITION_AWARE framework's task
/// marked LOST while its agent was away).
pub fn reconcile_agent(
    c: &Cluster,
    agent_id: &AgentId,
    reported: &std::collections::BTreeSet<TaskKey>,
) -> Vec<ap::master_message::Message> {
    let mut messages = Vec::new();
    for t in c.tasks_on_agent(agent_id) {
        if t.state == TaskState::TaskStaging && !reported.contains(&t.key) {
            let checkpoint = c
                .frameworks
                .get(&t.key.framework_id)
                .is_some_and(|f| f.checkpoint);
            messages.push(ap::master_message::Message::Launch(ap::LaunchTask {
                framework_id: t.key.framework_id.0.clone(),
                task_id: t.key.task_id.0.clone(),
                name: t.name.clone(),
                resources: Some(t.resources.to_proto()),
                command: Some(t.command.clone()),
                checkpoint,
                health_check: t
                    .job
                    .as_ref()
                    .and_then(|k| c.jobs.get(k).and_then(|j| j.spec.health_check.clone())),
            }));
        }
    }
    for key in reported {
        // A kill requested while the agent was away (a drain, a
        // framework's kill) is sent again: the first may be lost.
        let live = c
            .task(key)
            .is_some_and(|t| !t.is_terminal() && t.agent_id == *agent_id && !t.kill_requested);
        if !live {
            messages.push(ap::master_message::Message::Kill(ap::KillTask {
                framework_id: key.framework_id.0.clone(),
                task_id: key.task_id.0.clone(),
            }));
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_events::command::{AgentRegistration, Command, ElectLeader, FrameworkSubscription};
    use orrery_events::state::MasterConfig;
    use orrery_events::{apply, decide, envelopes, Resources};

    fn run(c: &mut Cluster, cmd: Command) -> Vec<Effect> {
        let events = decide(c, cmd, 1_000).expect("decided");
        let mut fx = Vec::new();
        for env in envelopes(c, 1, 1_000, events) {
            fx.extend(effects_of(c, env.payload.as_ref().unwrap()));
            apply(c, &env);
        }
        fx
    }

    #[test]
    fn offers_go_to_their_framework_and_rescinds_find_the_owner() {
        let mut c = Cluster::new();
        run(
            &mut c,
            Command::ElectLeader(ElectLeader {
                term: 1,
                leader_id: 1,
                leader_addr: "m".into(),
                http_addr: String::new(),
                domain: None,
                config: MasterConfig {
                    offer_timeout_ms: 0,
                    default_refuse_ms: 5_000,
                    agent_reregister_timeout_ms: 600_000,
                    drain_grace_ms: 60_000,
                    offers_per_framework_max: 0,
                },
            }),
        );
        run(
            &mut c,
            Command::RegisterAgent(AgentRegistration {
                hostname: "h1".into(),
                ip: "10.0.0.1".into(),
                resources: Resources::new(4_000, 1_024, 0),
                attributes: vec![("rack".into(), "r1".into())],
                domain: None,
            }),
        );
        run(
            &mut c,
            Command::Subscribe(FrameworkSubscription {
                framework_id: None,
                name: "f".into(),
                role: "web".into(),
                region_aware: false,
                partition_aware: false,
                checkpoint: true,
                failover_timeout_ms: 0,
                principal: String::new(),
            }),
        );
        let fx = run(&mut c, Command::Allocate);
        let [Effect::ToFramework(fw, sp::event::Event::Offers(offers))] = fx.as_slice() else {
            panic!("one Offers effect, got {fx:?}")
        };
        assert_eq!(fw.as_str(), "F1");
        assert_eq!(offers.offers.len(), 1);
        assert_eq!(offers.offers[0].hostname, "h1");
        assert_eq!(offers.offers[0].attributes[0].value, "r1");
        let offer_id = offers.offers[0].offer_id.clone();
        let fx = run(
            &mut c,
            Command::Teardown {
                framework_id: FrameworkId::new("F1"),
            },
        );
        assert!(fx.contains(&Effect::ToFramework(
            FrameworkId::new("F1"),
            sp::event::Event::Rescind(sp::Rescind { offer_id })
        )));
        assert!(matches!(fx.last(), Some(Effect::CloseFramework(f, _)) if f.as_str() == "F1"));
    }
}
