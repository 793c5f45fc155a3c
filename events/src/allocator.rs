//! The allocator: one cycle of weighted Dominant Resource Fairness.
//!
//! Semantics of Mesos' hierarchical allocator: for each offerable agent, in
//! an order shuffled from a seed, pick the role with the lowest weighted
//! dominant share that has a framework willing and allowed to take the agent,
//! then that role's framework with the lowest dominant share, and offer it
//! everything the agent has free. Shares are updated after each offer, so a
//! cycle spreads agents fairly.
//!
//! Pure: the seed is the index of the last applied event, so a replay of the
//! log re-derives the same order and `orrery replay` can explain any offer.
//! The shuffle is a hand-written splitmix64 + Fisher–Yates on purpose: a
//! crate's RNG may change its stream between versions, which would change
//! the order a replay derives from an old log.
//!
//! Stages, cheapest first: agent offerable (state, term, host UP) → agent
//! has free cpus or mem → per framework: wants offers, region allowed, no
//! live decline filter, fewer outstanding offers than the leader's
//! `offers_per_framework_max`.

use std::collections::{BTreeMap, BTreeSet};

use orrery_proto::events as pb;

use crate::decide::Event;
use crate::ids::{AgentId, FrameworkId};
use crate::projections::{domains, maintenance, offers, recovery};
use crate::resources::Resources;
use crate::state::{Cluster, Framework};

/// Shares are parts per 10^9 of the cluster, scaled by 1000/weight.
type ShareKey = u128;

fn dominant_share(alloc: &Resources, total: &Resources) -> ShareKey {
    let part = |a: u64, t: u64| -> u128 {
        if t == 0 {
            0
        } else {
            u128::from(a) * 1_000_000_000 / u128::from(t)
        }
    };
    // Every scalar counts, named ones (`gpus`) too, as in Mesos' DRF.
    let named = alloc
        .named_scalars
        .iter()
        .map(|(k, a)| part(*a, total.named_scalars.get(k).copied().unwrap_or(0)));
    part(alloc.cpus_milli, total.cpus_milli)
        .max(part(alloc.mem_mb, total.mem_mb))
        .max(part(alloc.disk_mb, total.disk_mb))
        .max(named.max().unwrap_or(0))
}

/// splitmix64: a tiny, fixed PRNG (see the module doc for why by hand).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Shuffles deterministically from `seed` (Fisher–Yates).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

struct RoleAcc<'c> {
    alloc: Resources,
    weight_milli: u64,
    /// Willing frameworks ordered by (share, id).
    frameworks: BTreeSet<(ShareKey, &'c FrameworkId)>,
}

/// Whether offers are held back after a failover: until 80% of the agents
/// known to the log have reregistered, or the reregistration timeout passed.
pub fn holding_back(c: &Cluster, now_ms: u64) -> bool {
    let Some(leader) = c.leader.as_ref() else {
        return true;
    };
    let deadline = leader
        .elected_at_ms
        .saturating_add(leader.config.agent_reregister_timeout_ms);
    recovery::reregistered_milli(c) < 800 && now_ms < deadline
}

/// One allocation cycle at `now_ms`: the events to commit (expired decline
/// filters, then one batch of offers). Empty when there is nothing to do.
pub fn allocate(c: &Cluster, now_ms: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let expired: Vec<pb::DeclineFilterKey> = c
        .filters
        .iter()
        .filter(|(_, &until)| until <= now_ms)
        .map(|((f, a), _)| pb::DeclineFilterKey {
            framework_id: f.0.clone(),
            agent_id: a.0.clone(),
        })
        .collect();
    if !expired.is_empty() {
        events.push(Event::DeclineFiltersExpired(pb::DeclineFiltersExpired {
            filters: expired,
        }));
    }
    let Some(leader) = c.leader.as_ref() else {
        return events;
    };
    if holding_back(c, now_ms) {
        return events;
    }

    // The cluster's capacity: agents that may still be running work.
    let mut total = Resources::default();
    for a in c.agents.values() {
        if a.state.is_known() {
            total.add(&a.total.scalars());
        }
    }

    // Role and framework shares. Every framework's allocation counts toward
    // its role's share; only willing frameworks are candidates.
    let mut roles: BTreeMap<&str, RoleAcc<'_>> = BTreeMap::new();
    let mut fw_alloc: BTreeMap<&FrameworkId, Resources> = BTreeMap::new();
    for fw in c.frameworks.values().filter(|f| !f.removed) {
        let acc = roles.entry(fw.role.as_str()).or_insert_with(|| RoleAcc {
            alloc: Resources::default(),
            weight_milli: c.role_weight_milli(&fw.role),
            frameworks: BTreeSet::new(),
        });
        acc.alloc.add(&fw.allocated);
        if fw.wants_offers() {
            acc.frameworks
                .insert((dominant_share(&fw.allocated, &total), &fw.id));
            fw_alloc.insert(&fw.id, fw.allocated.clone());
        }
    }
    let role_key = |acc: &RoleAcc<'_>| {
        dominant_share(&acc.alloc, &total) * 1000 / u128::from(acc.weight_milli.max(1))
    };
    let mut role_order: BTreeSet<(ShareKey, &str)> = roles
        .iter()
        .filter(|(_, acc)| !acc.frameworks.is_empty())
        .map(|(role, acc)| (role_key(acc), *role))
        .collect();
    if role_order.is_empty() {
        return events;
    }

    let live_filters: BTreeSet<(&FrameworkId, &AgentId)> = c
        .filters
        .iter()
        .filter(|(_, &until)| until > now_ms)
        .map(|((f, a), _)| (f, a))
        .collect();

    let mut agents: Vec<&crate::state::Agent> = c
        .agents
        .values()
        .filter(|a| offerable_with_free(c, a))
        .collect();
    shuffle(&mut agents, c.applied_index.wrapping_add(1));

    // Outstanding offers per framework, against the cap.
    let cap = leader.config.offers_per_framework_max;
    let mut held: BTreeMap<&FrameworkId, u64> = BTreeMap::new();
    if cap > 0 {
        for o in c.offers.values() {
            *held.entry(&o.framework_id).or_default() += 1;
        }
    }

    let mut made = Vec::new();
    let mut next_offer = c.seq.next_offer;
    for agent in agents {
        let free = agent.free();
        let mut chosen: Option<(ShareKey, &str, ShareKey, &FrameworkId)> = None;
        'roles: for &(rkey, role) in &role_order {
            for &(fkey, fid) in &roles[role].frameworks {
                let fw: &Framework = &c.frameworks[fid];
                if live_filters.contains(&(fid, &agent.id))
                    || (cap > 0 && held.get(fid).copied().unwrap_or(0) >= cap)
                    || !domains::may_offer(c, fw, agent)
                {
                    continue;
                }
                chosen = Some((rkey, role, fkey, fid));
                break 'roles;
            }
        }
        let Some((rkey, role, fkey, fid)) = chosen else {
            continue;
        };
        if cap > 0 {
            *held.entry(fid).or_default() += 1;
        }
        next_offer += 1;
        made.push(pb::Offer {
            offer_id: format!("O{next_offer}"),
            framework_id: fid.0.clone(),
            agent_id: agent.id.0.clone(),
            resources: Some(free.to_proto()),
            expires_at_ms: match leader.config.offer_timeout_ms {
                0 => 0,
                t => now_ms.saturating_add(t),
            },
            unavailability: maintenance::unavailability_of(c, &agent.hostname).map(|u| {
                pb::Unavailability {
                    start_ns: u.start_ns,
                    duration_ns: u.duration_ns,
                }
            }),
        });
        // Update shares.
        let scalars = free.scalars();
        let acc = roles.get_mut(role).expect("chosen role exists");
        acc.frameworks.remove(&(fkey, fid));
        let fa = fw_alloc
            .get_mut(fid)
            .expect("candidate framework has an allocation");
        fa.add(&scalars);
        acc.frameworks.insert((dominant_share(fa, &total), fid));
        acc.alloc.add(&scalars);
        role_order.remove(&(rkey, role));
        let new_key = role_key(acc);
        role_order.insert((new_key, role));
    }
    if !made.is_empty() {
        events.push(Event::OffersMade(pb::OffersMade { offers: made }));
    }
    events
}

fn offerable_with_free(c: &Cluster, a: &crate::state::Agent) -> bool {
    if !offers::offerable(c, a) {
        return false;
    }
    let free = a.free();
    free.cpus_milli > 0 || free.mem_mb > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_fixed_function_of_the_seed() {
        let mut a: Vec<u32> = (0..10).collect();
        shuffle(&mut a, 42);
        let mut b: Vec<u32> = (0..10).collect();
        shuffle(&mut b, 42);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        // Pinned: a change here changes every replayed allocation.
        assert_eq!(a, vec![0, 9, 5, 8, 6, 4, 7, 2, 1, 3]);
    }

    #[test]
    fn dominant_share_takes_the_largest_part() {
        let total = Resources::new(10_000, 1000, 0);
        assert_eq!(
            dominant_share(&Resources::new(1000, 500, 0), &total),
            500_000_000
        );
        assert_eq!(dominant_share(&Resources::default(), &total), 0);
        // A framework holding half the cluster's gpus has a dominant share
        // of one half, whatever its cpus.
        let total = Resources::parse("cpus:10;mem:1000;gpus:4").unwrap();
        let alloc = Resources::parse("cpus:1;gpus:2").unwrap();
        assert_eq!(dominant_share(&alloc, &total), 500_000_000);
    }
}
