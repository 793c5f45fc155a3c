//! Safety valves with real processes: five agents running a job, four of
//! them gone across a leader failover. Past `--recovery-agent-removal-limit`
//! the new leader marks none of them unreachable and replaces no task; it
//! says why in its log, in `orrery_agent_removals_held` and on `/health`;
//! `orrery agents mark-gone --held` is the operator's way through.

mod common;

#[path = "../../gateway/tests/common/framework.rs"]
mod framework;

use std::time::Duration;

use common::agent::AgentProc;
use common::*;
use framework::eventually;
use serde_json::Value;

/// The CLI runner `common::cli` returns.
type Cli = dyn Fn(&[&str]) -> (Option<i32>, String, String);

const WAIT: Duration = Duration::from_secs(40);

fn agents(orrery: &Cli) -> Vec<Value> {
    let (_, out, _) = orrery(&["--json", "agents", "list"]);
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn states(agents: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = agents
        .iter()
        .map(|a| {
            format!(
                "{}={}",
                a["hostname"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_of_five_agents_gone_across_a_failover_are_held_until_the_operator_retires_them() {
    let _serial = SERIAL.lock().await;
    let mut flags = master_flags();
    flags.extend([
        "--agent-reregister-timeout",
        "3s",
        "--recovery-agent-removal-limit",
        "50%",
    ]);
    let m = Masters::new(3, &flags);
    let web: Vec<String> = free_ports(3)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    for id in 1..=3u64 {
        m.start(id, &["--http", &web[id as usize - 1]]);
    }
    let (first, _) = m
        .leader_among(&[1, 2, 3], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut procs: Vec<AgentProc> = (1..=5)
        .map(|i| AgentProc::on_host(&m, &format!("host-{i}")))
        .collect();
    for a in &mut procs {
        a.start(&[], &[]);
    }
    let orrery = cli(&m);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("web.toml");
    std::fs::write(
        &job,
        "role = \"www\"\nenv = \"prod\"\nname = \"web\"\ninstances = 5\nargv = [\"sleep\", \"1000\"]\n\
         constraints = [[\"hostname\", \"UNIQUE\"]]\n[resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", job.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let running = |orrery: &Cli| {
        let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/web"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["instances"].as_array().map_or(0, |a| {
            a.iter().filter(|i| i["state"] == "TASK_RUNNING").count()
        })
    };
    eventually("five instances RUNNING, one per host", WAIT, || {
        let n = running(&orrery);
        async move { (n == 5).then_some(()) }
    })
    .await;

    // Four machines vanish (a rack's switch), then the leader dies.
    for a in procs.iter_mut().skip(1) {
        a.kill9();
    }
    m.kill9(first);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    let (leader, _) = m
        .leader_among(&others, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no new leader\n{}", m.logs()));
    let leader_http = web[leader as usize - 1].clone();

    // Past the reregistration deadline, 4 of 5 (80%) are missing: over
    // the 50% limit, the removals are held — /health says why.
    let health = eventually("/health names the held removals", WAIT, || {
        let r = try_http(&leader_http, "GET", "/health", "").unwrap_or_default();
        async move { r.contains("holding 4 agent removals").then_some(r) }
    })
    .await;
    assert!(
        health.lines().next().is_some_and(|l| l.contains(" 503 ")),
        "{health}"
    );
    assert!(health.contains("4 of 5 known agents (80%)"), "{health}");
    assert!(health.contains("mark-gone"), "{health}");
    let metrics = http(&leader_http, "GET", "/metrics", "");
    assert!(
        metrics.lines().any(|l| l == "orrery_agent_removals_held 4"),
        "{metrics}"
    );
    assert!(
        file_contains(&m.log_path(leader), "holding 4 agent removals"),
        "the log line"
    );
    // A while later: still nobody marked unreachable, no task replaced.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = states(&agents(&orrery));
    assert_eq!(now.len(), 5, "{now:?}");
    assert!(
        now.iter()
            .all(|s| !s.ends_with("UNREACHABLE") && !s.ends_with("GONE")),
        "held: {now:?}"
    );
    assert!(now.contains(&"host-1=REGISTERED".to_owned()), "{now:?}");
    assert_eq!(running(&orrery), 5, "the tasks are left as they are");

    // The operator retires the missing four.
    let (code, out, err) = orrery(&["agents", "mark-gone", "--held"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches(" is GONE").count(), 4, "{out}");
    let now = states(&agents(&orrery));
    assert_eq!(
        now.iter().filter(|s| s.ends_with("=GONE")).count(),
        4,
        "{now:?}"
    );
    eventually("/health is OK again", WAIT, || {
        let r = try_http(&leader_http, "GET", "/health", "").unwrap_or_default();
        async move {
            r.lines()
                .next()
                .is_some_and(|l| l.contains(" 200 "))
                .then_some(())
        }
    })
    .await;
    let (code, _, err) = orrery(&["agents", "mark-gone", "--held"]);
    assert_eq!(code, Some(1), "nothing is held now");
    assert!(err.contains("no agent's removal is held"), "{err}");
    let (code, _, err) = orrery(&["agents", "mark-gone"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--held"), "{err}");
}

#[test]
fn bad_removal_flags_are_refused_with_the_flag_named() {
    for (flag, value) in [
        ("--recovery-agent-removal-limit", "150%"),
        ("--recovery-agent-removal-limit", "most"),
        ("--agent-removal-rate-limit", "1/soon"),
        ("--agent-removal-rate-limit", "0/10s"),
        // A limit on authenticated clients, on a master that has none.
        ("--client-rate", "10"),
    ] {
        let m = Masters::new(1, &[flag, value]);
        let mut cmd = m.command(1, &[]);
        let (status, err) = run_to_exit(&mut cmd, Duration::from_secs(20));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "{flag} {value}: {err}"
        );
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

/// The resident memory of a process, in KiB (`/proc/PID/status`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_is_shed_with_a_retry_hint_and_nothing_accepted_is_lost() {
    use orrery_proto::operator::{self as op, operator_client::OperatorClient};
    let _serial = SERIAL.lock().await;
    let mut flags = master_flags();
    flags.extend(["--max-pending-commands", "8"]);
    let m = Masters::new(1, &flags);
    let web = format!("127.0.0.1:{}", free_port());
    m.start(1, &["--http", &web]);
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let pid = m.procs.lock().unwrap()[&1].id();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", m.addrs[&1]))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    // Warm up, then measure the memory the flood adds.
    eventually("the master serves a first call", WAIT, || {
        let ch = ch.clone();
        async move {
            OperatorClient::new(ch)
                .update_weights(op::UpdateWeightsRequest {
                    weights: vec![op::WeightInfo {
                        role: "warm".into(),
                        weight: 1.0,
                    }],
                })
                .await
                .ok()
        }
    })
    .await;
    let rss_before = rss_kib(pid);
    const CLIENTS: usize = 128;
    const CALLS: usize = 40;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = OperatorClient::new(ch);
            let (mut ok, mut shed, mut other, mut hinted) = (Vec::new(), 0u64, Vec::new(), 0u64);
            for i in 0..CALLS {
                let r = loop {
                    let r = client
                        .update_weights(op::UpdateWeightsRequest {
                            weights: vec![op::WeightInfo {
                                role: format!("r{c}-{i}"),
                                weight: 1.0 + i as f64,
                            }],
                        })
                        .await;
                    // HTTP/2 REFUSED_STREAM: the server did not process the
                    // stream (RFC 9113 §8.7), so it is safe to send again;
                    // gRPC's transparent retry (A6) does this, tonic does
                    // not. It happens when a stream is opened the moment an
                    // old one ends, before the server released its slot of
                    // the 64 per connection.
                    match &r {
                        Err(s) if s.to_string().contains("REFUSED_STREAM") => continue,
                        _ => break r,
                    }
                };
                match r {
                    Ok(r) => ok.push(r.into_inner().committed_index),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        shed += 1;
                        if s.metadata().get("retry-after").is_some()
                            && s.metadata().get("grpc-retry-pushback-ms").is_some()
                            && s.message().contains("--max-pending-commands 8")
                        {
                            hinted += 1;
                        }
                    }
                    Err(s) => other.push(s.to_string()),
                }
            }
            (ok, shed, other, hinted)
        }));
    }
    let (mut ok, mut shed, mut other, mut hinted) = (Vec::new(), 0, Vec::new(), 0);
    for t in tasks {
        let (o, s, x, h) = t.await.unwrap();
        ok.extend(o);
        shed += s;
        other.extend(x);
        hinted += h;
    }
    let rss_after = rss_kib(pid);
    eprintln!(
        "{} calls: {} committed, {shed} shed; master RSS {rss_before} KiB -> {rss_after} KiB",
        CLIENTS * CALLS,
        ok.len()
    );
    assert!(
        other.is_empty(),
        "only OK or RESOURCE_EXHAUSTED: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(ok.len() as u64 + shed, (CLIENTS * CALLS) as u64);
    assert!(shed > 0, "a queue of 8 under 128 clients sheds some calls");
    assert!(!ok.is_empty(), "and serves the rest");
    assert_eq!(
        hinted, shed,
        "every refusal names the bound and carries a retry hint"
    );
    // Every accepted call is in the log, once: its committed index is unique.
    ok.sort_unstable();
    let n = ok.len();
    ok.dedup();
    assert_eq!(ok.len(), n, "each accepted call has its own event");
    // The master counted what it shed.
    let metrics = http(&web, "GET", "/metrics", "");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orrery_commands_shed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(counted, shed, "counted in metrics");
    // Memory stays bounded: the queue, not the flood, sizes it.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The HTTP front says 429 with Retry-After for the same refusal: one
    // more flood, through /maintenance/schedule, until one is shed.
    let schedule = r#"{"windows":[]}"#;
    let got_429 = (0..20).any(|_| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let web = web.clone();
                std::thread::spawn(move || http(&web, "POST", "/maintenance/schedule", schedule))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .any(|r| r.contains(" 429 ") && r.to_ascii_lowercase().contains("retry-after: 1"))
    });
    assert!(got_429, "an HTTP call shed with 429 and Retry-After");
}

/// `msg` with an `idempotency-key`.
fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("idempotency-key", key.parse().expect("an ASCII key"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_calls_with_their_idempotency_key_take_effect_once_even_across_a_restart() {
    use orrery_events::pb;
    use orrery_proto::operator::{self as op, operator_client::OperatorClient};
    use orrery_proto::scheduler::{self as sp, scheduler_client::SchedulerClient};
    let _serial = SERIAL.lock().await;
    let m = Masters::new(1, &master_flags());
    m.start(1, &[]);
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let addr = m.addrs[&1].clone();
    let connect = |addr: String| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    };
    let ch = connect(addr.clone()).await;
    let spec = pb::JobSpec {
        key: Some(pb::JobKey {
            role: "www".into(),
            env: "prod".into(),
            name: "once".into(),
        }),
        instances: 1,
        command: Some(pb::CommandInfo {
            shell: "sleep 1000".into(),
            ..Default::default()
        }),
        resources: Some(pb::Resources {
            cpus_milli: 100,
            mem_mb: 16,
            ..Default::default()
        }),
        service: true,
        ..Default::default()
    };
    let create = |key: Option<&str>| {
        let ch = ch.clone();
        let spec = spec.clone();
        let key = key.map(str::to_owned);
        async move {
            let req = match &key {
                Some(k) => keyed(spec, k),
                None => tonic::Request::new(spec),
            };
            OperatorClient::new(ch)
                .create_job(req)
                .await
                .map(|r| r.into_inner().committed_index)
        }
    };
    // The master may still be taking office: the first create, retried.
    let first = eventually("the first create", WAIT, || async {
        create(Some("create-1")).await.ok()
    })
    .await;
    // The retry (a client that timed out): the same answer, no second job.
    assert_eq!(create(Some("create-1")).await.unwrap(), first);
    let again = create(None)
        .await
        .expect_err("without the key: a second create");
    assert!(again.message().contains("www/prod/once"), "{again}");
    // A key that is not printable ASCII, or too long, is refused by name.
    let mut bad = tonic::Request::new(spec.clone());
    bad.metadata_mut()
        .insert("idempotency-key", "x".repeat(200).parse().unwrap());
    let e = OperatorClient::new(ch.clone())
        .create_job(bad)
        .await
        .expect_err("a bad key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("idempotency-key"), "{e}");

    // A framework's Accept, retried: one launch.
    let mut sched = SchedulerClient::new(ch.clone());
    let mut events = sched
        .subscribe(sp::SubscribeRequest {
            framework: Some(sp::FrameworkInfo {
                name: "idem".into(),
                role: "idem".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut sub = None;
    let mut offer = None;
    while offer.is_none() {
        let e = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("an event")
            .expect("the stream")
            .expect("open");
        match e.event {
            Some(sp::event::Event::Subscribed(s)) => sub = Some(s),
            Some(sp::event::Event::Offers(o)) => offer = o.offers.into_iter().next(),
            _ => {}
        }
    }
    let (sub, offer) = (sub.expect("subscribed first"), offer.unwrap());
    let call = |c: sp::call::Call| sp::Call {
        framework_id: sub.framework_id.clone(),
        stream_id: sub.stream_id.clone(),
        call: Some(c),
    };
    let accept = call(sp::call::Call::Accept(sp::Accept {
        offer_ids: vec![offer.offer_id.clone()],
        launches: vec![sp::TaskInfo {
            task_id: "t1".into(),
            name: "t1".into(),
            resources: Some(pb::Resources {
                cpus_milli: 100,
                mem_mb: 16,
                ..Default::default()
            }),
            command: Some(pb::CommandInfo {
                shell: "sleep 1000".into(),
                ..Default::default()
            }),
        }],
        filters: None,
    }));
    let a1 = sched.call(keyed(accept.clone(), "accept-1")).await.unwrap();
    let a2 = sched.call(keyed(accept.clone(), "accept-1")).await.unwrap();
    assert_eq!(a1.get_ref().committed_index, a2.get_ref().committed_index);
    let plain = sched.call(tonic::Request::new(accept)).await;
    assert!(
        plain.is_err(),
        "the offer is spent: only the key made the retry safe"
    );
    // Kill, retried.
    let kill = call(sp::call::Call::Kill(sp::Kill {
        task_id: "t1".into(),
    }));
    let k1 = sched.call(keyed(kill.clone(), "kill-1")).await.unwrap();
    let k2 = sched.call(keyed(kill, "kill-1")).await.unwrap();
    assert_eq!(k1.get_ref().committed_index, k2.get_ref().committed_index);

    // The keys are in the log: a restarted master answers the retry too.
    drop(events);
    m.kill9(1);
    m.start(1, &[]);
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader after the restart\n{}", m.logs()));
    let ch2 = connect(addr).await;
    let after = eventually("the retry after the restart", WAIT, || {
        let ch2 = ch2.clone();
        let spec = spec.clone();
        async move {
            OperatorClient::new(ch2)
                .create_job(keyed(spec, "create-1"))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(after.into_inner().committed_index, first);
    // One JobCreated, one launch, every event of the first create carrying
    // the key.
    let log = OperatorClient::new(ch2)
        .read_log(op::ReadLogRequest {
            from: 1,
            max: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    let envs: Vec<pb::Envelope> = log
        .events
        .iter()
        .map(|b| orrery_events::codec::decode(b).unwrap())
        .collect();
    let created: Vec<&pb::Envelope> = envs
        .iter()
        .filter(|e| matches!(e.payload, Some(pb::envelope::Payload::JobCreated(_))))
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].idempotency_key, "|create-1");
    let launched = envs
        .iter()
        .filter(|e| matches!(&e.payload, Some(pb::envelope::Payload::TaskLaunched(t)) if t.task_id == "t1"))
        .count();
    assert_eq!(launched, 1, "one launch of t1");
}
