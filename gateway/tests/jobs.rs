//! The built-in job scheduler end to end, in process: a master with real
//! logs, simulated agents in fault domains, jobs through the operator API.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use orrery_events::pb;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);

/// Running instances per zone.
fn per_zone(s: &op::JobStatusResponse) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in &s.instances {
        if i.state == "TASK_RUNNING" {
            *out.entry(i.zone.clone()).or_default() += 1;
        }
    }
    out
}

fn zones(m: &Masters, per_zone: usize) -> Vec<SimAgent> {
    let mut agents = Vec::new();
    for z in ["a", "b", "c"] {
        for i in 0..per_zone {
            agents.push(SimAgent::spawn_in(
                m.addrs(),
                &format!("host-{z}{i}"),
                4,
                Some(("local", z)),
            ));
        }
    }
    agents
}

fn local_settings() -> orrery_actors::master::Settings {
    let mut s = test_settings();
    s.domain = Some(orrery_events::state::Domain {
        region: "local".into(),
        zone: "a".into(),
    });
    s.agent_ping_timeout = Duration::from_millis(100);
    s.max_agent_ping_timeouts = 3;
    s
}

#[test]
fn group_by_zone_spreads_three_by_three_and_stays_balanced_through_a_zone_loss() {
    run(LIMIT, async {
        let m = Masters::start(1, local_settings()).await;
        let agents = zones(&m, 2);
        create(&m, spec("web", 9, &[["@zone", "GROUP_BY", "3"]]))
            .await
            .expect("created");
        let s = eventually("9 instances running", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "web").await;
                (per_zone(&s).values().sum::<usize>() == 9).then_some(s)
            }
        })
        .await;
        let expect: BTreeMap<String, usize> = [("a", 3), ("b", 3), ("c", 3)]
            .into_iter()
            .map(|(z, n)| (z.to_string(), n))
            .collect();
        assert_eq!(per_zone(&s), expect);

        // Zone c's agents go silent: its instances are lost, and the
        // replacements may not pile onto a and b beyond 3 each.
        for a in agents.iter().filter(|a| a.hostname.starts_with("host-c")) {
            a.shared
                .silent
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let s = eventually("zone c's instances pending", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "web").await;
                let pending: Vec<_> = s
                    .instances
                    .iter()
                    .filter(|i| i.state == "PENDING")
                    .collect();
                (pending.len() == 3 && pending.iter().all(|i| i.reason.contains("GROUP_BY")))
                    .then_some(s)
            }
        })
        .await;
        let pending: Vec<&op::InstanceStatus> = s
            .instances
            .iter()
            .filter(|i| i.state == "PENDING")
            .collect();
        assert!(
            pending.iter().all(|i| i.reason.contains("GROUP_BY")),
            "pending instances say why: {pending:?}"
        );
        assert!(per_zone(&s).values().all(|&n| n == 3), "{:?}", per_zone(&s));

        // Zone c comes back: the three go there, 3/3/3 again.
        for a in agents.iter().filter(|a| a.hostname.starts_with("host-c")) {
            a.shared
                .silent
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let s = eventually("balanced again", WAIT, || {
            let m = &m;
            let expect = expect.clone();
            async move {
                let s = status(m, "web").await;
                (per_zone(&s) == expect).then_some(s)
            }
        })
        .await;
        assert_eq!(s.instances.len(), 9);
        drop(agents);
        m.shutdown().await;
    });
}

#[test]
fn unique_hostname_and_remote_regions_only_for_region_aware_jobs() {
    run(LIMIT, async {
        let m = Masters::start(1, local_settings()).await;
        let _local: Vec<SimAgent> = (0..2)
            .map(|i| SimAgent::spawn_in(m.addrs(), &format!("local-{i}"), 4, Some(("local", "a"))))
            .collect();
        let _remote = SimAgent::spawn_in(m.addrs(), "remote-0", 4, Some(("remote", "x")));

        // UNIQUE hostname: 3 instances, 2 local hosts (the remote one is not
        // allowed for a job that is not region-aware): one stays pending.
        create(&m, spec("uniq", 3, &[["hostname", "UNIQUE", ""]]))
            .await
            .expect("created");
        let s = eventually("two placed, one pending", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "uniq").await;
                let running = s
                    .instances
                    .iter()
                    .filter(|i| i.state == "TASK_RUNNING")
                    .count();
                let pending = s.instances.iter().filter(|i| i.state == "PENDING").count();
                (running == 2 && pending == 1).then_some(s)
            }
        })
        .await;
        let hosts: std::collections::BTreeSet<&str> = s
            .instances
            .iter()
            .filter(|i| !i.hostname.is_empty())
            .map(|i| i.hostname.as_str())
            .collect();
        assert_eq!(hosts.len(), 2, "one instance per host: {s:?}");
        assert!(hosts.iter().all(|h| h.starts_with("local-")));

        // @region IS remote: pending forever unless the job is region-aware.
        create(&m, spec("far", 1, &[["@region", "IS", "remote"]]))
            .await
            .expect("created");
        let s = eventually("the remote-only job pending with a reason", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "far").await;
                (s.instances[0].state == "PENDING"
                    && s.instances[0].reason.contains("remote region"))
                .then_some(s)
            }
        })
        .await;
        assert!(s.instances[0].reason.contains("region_aware"), "{s:?}");
        let mut aware = spec("far-aware", 1, &[["@region", "IS", "remote"]]);
        aware.region_aware = true;
        create(&m, aware).await.expect("created");
        let s = eventually("the region-aware job placed remotely", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "far-aware").await;
                (s.instances[0].state == "TASK_RUNNING").then_some(s)
            }
        })
        .await;
        assert_eq!(s.instances[0].hostname, "remote-0");
        assert_eq!(s.instances[0].region, "remote");
        m.shutdown().await;
    });
}

#[test]
fn failed_instances_restart_with_backoff_and_bad_constraints_are_refused() {
    run(LIMIT, async {
        let m = Masters::start(1, local_settings()).await;
        let _agent = SimAgent::spawn_in(m.addrs(), "local-0", 4, Some(("local", "a")));
        let mut failing = spec("crashy", 1, &[]);
        failing.command = Some(pb::CommandInfo {
            shell: "false".into(),
            argv: vec![],
            environment: vec![],
        });
        create(&m, failing).await.expect("created");
        // It fails, waits, is launched again: the backoff shows, and task
        // ids count the attempts.
        let s = eventually("a backoff after failures", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "crashy").await;
                (s.instances[0].state == "BACKING_OFF").then_some(s)
            }
        })
        .await;
        assert!(s.instances[0].reason.starts_with("restarting in"), "{s:?}");
        let state = eventually("a third attempt", WAIT, || {
            let m = &m;
            async move {
                let st = m.state().await;
                st.tasks
                    .iter()
                    .any(|t| t.task_id == "www.prod.crashy.0.3")
                    .then_some(st)
            }
        })
        .await;
        let attempts = state
            .tasks
            .iter()
            .filter(|t| t.task_id.starts_with("www.prod.crashy.0."))
            .count();
        assert!(
            (3..=4).contains(&attempts),
            "backoff (1 s, 2 s) slows restarts: {attempts} attempts"
        );

        // A batch job gives up after max_task_failures.
        let mut batch = spec("batchy", 1, &[]);
        batch.service = false;
        batch.max_task_failures = 2;
        batch.command = Some(pb::CommandInfo {
            shell: "false".into(),
            argv: vec![],
            environment: vec![],
        });
        create(&m, batch).await.expect("created");
        eventually("the batch job gives up", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "batchy").await;
                (s.instances[0].state == "GAVE_UP").then_some(())
            }
        })
        .await;

        let err = create(
            &m,
            spec(
                "bad",
                1,
                &[["@zone", "GROUP_BY", "x"], ["rack", "NEAR", "r1"]],
            ),
        )
        .await
        .expect_err("bad constraints are refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("constraint #1"), "{err:?}");
        m.shutdown().await;
    });
}

async fn update(m: &Masters, spec: pb::JobSpec) -> Result<(), tonic::Status> {
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        &m.addrs(),
        PATIENCE,
        |ch| {
            let s = spec.clone();
            async move { OperatorClient::new(ch).update_job(s).await }
        },
    )
    .await
    .map(|_| ())
}

fn rolling(name: &str, shell: &str) -> pb::JobSpec {
    let mut s = spec(name, 3, &[]);
    s.command = Some(pb::CommandInfo {
        shell: shell.into(),
        argv: vec![],
        environment: vec![],
    });
    s.update_strategy = Some(pb::UpdateStrategy {
        batch_size: 1,
        watch_ms: 200,
        rollback_on_failure: true,
    });
    s
}

#[test]
fn a_rolling_update_replaces_one_instance_at_a_time_and_a_failing_one_rolls_back() {
    run(LIMIT, async {
        let m = Masters::start(1, local_settings()).await;
        let _agents: Vec<SimAgent> = (0..3)
            .map(|i| SimAgent::spawn_in(m.addrs(), &format!("local-{i}"), 4, Some(("local", "a"))))
            .collect();
        create(&m, rolling("roll", "sleep 1000"))
            .await
            .expect("created");
        let running = |s: &op::JobStatusResponse| {
            s.instances
                .iter()
                .filter(|i| i.state == "TASK_RUNNING")
                .count()
        };
        eventually("3 running", WAIT, || {
            let m = &m;
            async move { (running(&status(m, "roll").await) == 3).then_some(()) }
        })
        .await;

        // v2 works: each instance is replaced, never more than one down.
        update(&m, rolling("roll", "sleep 2000"))
            .await
            .expect("updated");
        let mut most_down = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = status(&m, "roll").await;
            most_down = most_down.max(3 - running(&s));
            let on_v2 = s
                .instances
                .iter()
                .all(|i| i.state == "TASK_RUNNING" && i.task_id.ends_with(".2"));
            if on_v2 && !s.updating {
                assert_eq!(s.version, 2);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the update did not finish: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            most_down <= 1,
            "batch_size 1: at most one instance down at a time, saw {most_down}"
        );

        // v3 fails at once: the job rolls back to v2's spec by itself, and
        // only the first batch ever ran v3.
        update(&m, rolling("roll", "false")).await.expect("updated");
        let s = eventually("rolled back and running", WAIT, || {
            let m = &m;
            async move {
                let s = status(m, "roll").await;
                let back = s.version == 4
                    && !s.updating
                    && s.spec
                        .as_ref()
                        .and_then(|x| x.command.as_ref())
                        .is_some_and(|c| c.shell == "sleep 2000");
                (back && running(&s) == 3).then_some(s)
            }
        })
        .await;
        assert_eq!(s.instances.len(), 3);
        let state = m.state().await;
        let failed_v3 = state
            .tasks
            .iter()
            .filter(|t| t.state == pb::TaskState::TaskFailed as i32)
            .count();
        assert_eq!(failed_v3, 1, "one batch of one instance tried v3");
        m.shutdown().await;
    });
}
