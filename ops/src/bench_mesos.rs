//! `orrery bench mesos`: offers accepted per second through Mesos' HTTP
//! scheduler API (`POST /api/v1/scheduler`, JSON) and through Orrery's
//! gRPC scheduler API, side by side in one run against one master.
//!
//! One in-process master (a one-replica raft log in a temp dir, fsync on,
//! plain TCP) with `--agents` agents registered through the core (no agent
//! processes: an accept commits `OffersAccepted` and needs no agent). Each
//! round runs one framework per front for `--duration`, one after the
//! other: it subscribes, and `--writers` workers accept offers as they
//! arrive, one offer per call, with no operations and a zero refuse filter,
//! so the resources are offered again at the next allocation (every 5 ms).
//! An accept is counted when its answer (HTTP 202, gRPC OK) is back, which
//! is after the master committed it. The framework is torn down at the end
//! of its turn. `--rounds` rounds alternate the order; medians are quoted.
//!
//! The HTTP client is a minimal HTTP/1.1 keep-alive client over tokio
//! sockets (one connection per worker) written here: the bench measures the
//! master's front door, so the client must add as little as it can.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::master::{Serving, Settings, Submit};
use orrery_events::command::{AgentRegistration, Command};
use orrery_events::Resources;
use orrery_proto::scheduler::{self as sp, scheduler_client::SchedulerClient};
use orrery_storage::raft::RaftConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Debug, Args)]
pub struct BenchMesosArgs {
    /// How long each front runs in each round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds (each runs both fronts; the order alternates).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Agents registered (each is offered again after every accept, at most
    /// ten times a second: with 500 the offers, not the fronts, were the
    /// ceiling, 5,000/s on both).
    #[arg(long, default_value_t = 5000)]
    agents: usize,
    /// Concurrent accept calls per framework.
    #[arg(long, default_value_t = 16)]
    writers: usize,
}

/// Offer ids waiting for a worker.
type Queue = Arc<std::sync::Mutex<VecDeque<String>>>;

fn take(q: &Queue) -> Option<String> {
    q.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
}

pub fn run(args: &BenchMesosArgs, json_out: bool) -> Result<()> {
    if args.agents == 0 || args.writers == 0 || args.rounds == 0 {
        bail!("--agents, --writers and --rounds must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("orrery-bench-mesos-")
        .tempdir()
        .context("creating a temp dir")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    actix_rt::System::with_tokio_rt(move || rt).block_on(async {
        let grpc = crate::dev::free_addr()?;
        let http = crate::dev::free_addr()?;
        let config = RaftConfig::new(
            1,
            grpc,
            std::collections::BTreeMap::from([(1, grpc.to_string())]),
            dir.path().join("master"),
        );
        let mut settings = Settings::new(1, grpc.to_string());
        settings.allocation_interval = Duration::from_millis(5);
        settings.default_refuse = Duration::ZERO;
        settings.agent_ping_timeout = Duration::from_secs(3600);
        settings.offers_per_framework_max = 0;
        let running = orrery_gateway::server::start(config, settings, Some(http), None)
            .await
            .map_err(|e| anyhow::anyhow!("the master: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(running.master.send(Serving).await, Ok(Ok(_))) {
            if Instant::now() > deadline {
                bail!("the master did not lead within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..args.agents {
            running
                .master
                .send(Submit {
                    command: Command::RegisterAgent(AgentRegistration {
                        hostname: format!("bench-{i}"),
                        ip: "127.0.0.1".into(),
                        resources: Resources::parse("cpus:8;mem:16384")?,
                        attributes: Vec::new(),
                        domain: None,
                    }),
                    want_events: false,
                    origin: Default::default(),
                })
                .await
                .context("the master actor")?
                .map_err(|e| anyhow::anyhow!("registering agent {i}: {e}"))?;
        }
        let mut rows: Vec<(String, f64)> = Vec::new();
        for round in 0..args.rounds {
            let order: [&str; 2] = if round % 2 == 0 {
                ["http", "grpc"]
            } else {
                ["grpc", "http"]
            };
            for front in order {
                let refused_before = rejections();
                let n = match front {
                    "http" => http_turn(&http.to_string(), args).await?,
                    _ => grpc_turn(&grpc.to_string(), args).await?,
                };
                // A refused HTTP accept is answered 202 too (Mesos reports
                // it on the stream, and with no launches, not at all): the
                // master's own count of refusals is taken off. A refused gRPC
                // accept is an error and was never counted.
                let refused = rejections().saturating_sub(refused_before);
                let n = if front == "http" {
                    n.saturating_sub(refused)
                } else {
                    n
                };
                if refused > 0 {
                    eprintln!("round {round} {front}: {refused} accepts refused (not counted)");
                }
                let rate = n as f64 / args.duration.as_secs_f64();
                eprintln!("round {round} {front}: {rate:.0} accepts/s");
                rows.push((front.to_owned(), rate));
            }
        }
        let median = |front: &str| {
            let mut v: Vec<f64> = rows
                .iter()
                .filter(|(f, _)| f == front)
                .map(|(_, r)| *r)
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (h, g) = (median("http"), median("grpc"));
        if json_out {
            println!(
                "{}",
                json!({"agents": args.agents, "writers": args.writers, "duration_s": args.duration.as_secs_f64(),
                       "rounds": rows.iter().map(|(f, r)| json!({"front": f, "accepts_per_s": r})).collect::<Vec<_>>(),
                       "http_median": h, "grpc_median": g, "http_over_grpc": h / g})
            );
        } else {
            println!("front  accepts/s (median of {} rounds)", args.rounds);
            println!("http   {h:.0}");
            println!("grpc   {g:.0}");
            println!("http/grpc {:.2}", h / g);
        }
        running.shutdown().await;
        Ok(())
    })
}

/// Commands the master refused so far (`orrery_rejections_total`, all
/// reasons), from this process's Prometheus recorder.
fn rejections() -> u64 {
    let Some(h) = orrery_actors::telemetry::prometheus() else {
        return 0;
    };
    h.render()
        .lines()
        .filter(|l| l.starts_with(orrery_actors::telemetry::REJECTIONS))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn grpc_turn(addr: &str, args: &BenchMesosArgs) -> Result<u64> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the master's gRPC")?;
    let mut client = SchedulerClient::new(ch.clone());
    let info = sp::FrameworkInfo {
        name: "bench-grpc".into(),
        role: "bench".into(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(sp::SubscribeRequest {
            framework: Some(info),
        })
        .await?
        .into_inner();
    let Some(sp::Event {
        event: Some(sp::event::Event::Subscribed(sub)),
    }) = stream.message().await?
    else {
        bail!("the gRPC subscription did not start with Subscribed");
    };
    let queue: Queue = Default::default();
    let q = queue.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            if let Some(sp::event::Event::Offers(o)) = e.event {
                let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
                q.extend(o.offers.into_iter().map(|o| o.offer_id));
            }
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + args.duration;
    let mut workers = Vec::new();
    for _ in 0..args.writers {
        let (queue, done, sub) = (queue.clone(), done.clone(), sub.clone());
        let mut client = SchedulerClient::new(ch.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Some(offer) = take(&queue) else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                };
                let call = sp::Call {
                    framework_id: sub.framework_id.clone(),
                    stream_id: sub.stream_id.clone(),
                    call: Some(sp::call::Call::Accept(sp::Accept {
                        offer_ids: vec![offer],
                        launches: Vec::new(),
                        filters: Some(sp::Filters {
                            refuse_seconds: Some(0.0),
                        }),
                    })),
                };
                if client.call(call).await.is_ok() && Instant::now() < end {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let _ = client
        .call(sp::Call {
            framework_id: sub.framework_id.clone(),
            stream_id: sub.stream_id.clone(),
            call: Some(sp::call::Call::Teardown(sp::Teardown {})),
        })
        .await;
    reader.abort();
    Ok(done.load(Ordering::Relaxed))
}

/// One keep-alive HTTP/1.1 connection: POSTs a body, reads the status.
struct HttpConn {
    r: BufReader<TcpStream>,
    host: String,
}

impl HttpConn {
    async fn open(addr: &str) -> Result<HttpConn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            r: BufReader::new(s),
            host: addr.to_owned(),
        })
    }

    async fn post(&mut self, stream_id: &str, body: &str) -> Result<u16> {
        let req = format!(
            "POST /api/v1/scheduler HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nMesos-Stream-Id: {stream_id}\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("a status line, not {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut rest = vec![0; length];
        self.r.read_exact(&mut rest).await?;
        Ok(code)
    }
}

async fn http_turn(addr: &str, args: &BenchMesosArgs) -> Result<u64> {
    // The subscription: a chunked stream of RecordIO records.
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s);
    let body = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "bench", "name": "bench-http", "role": "bench"}}}).to_string();
    let req = format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r.get_mut().write_all(req.as_bytes()).await?;
    let mut stream_id = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("mesos-stream-id:") {
            stream_id = v.trim().to_owned();
        }
    }
    if stream_id.is_empty() {
        bail!("the HTTP subscription carried no Mesos-Stream-Id");
    }
    let (tx, mut subscribed) = tokio::sync::mpsc::channel::<String>(1);
    let queue: Queue = Default::default();
    let q = queue.clone();
    let reader = tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
                return;
            };
            let mut chunk = vec![0; n + 2];
            if n == 0 || r.read_exact(&mut chunk).await.is_err() {
                return;
            }
            pending.extend_from_slice(&chunk[..n]);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let Some(len) = std::str::from_utf8(&pending[..nl])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    return;
                };
                if pending.len() < nl + 1 + len {
                    break;
                }
                let event: Value =
                    serde_json::from_slice(&pending[nl + 1..nl + 1 + len]).unwrap_or(Value::Null);
                pending.drain(..nl + 1 + len);
                match event["type"].as_str() {
                    Some("SUBSCRIBED") => {
                        let id = event["subscribed"]["framework_id"]["value"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send(id).await;
                    }
                    Some("OFFERS") => {
                        let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
                        for o in event["offers"]["offers"].as_array().into_iter().flatten() {
                            if let Some(id) = o["id"]["value"].as_str() {
                                q.push_back(id.to_owned());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let framework_id = tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
        .await
        .context("waiting for SUBSCRIBED")?
        .context("the HTTP stream ended before SUBSCRIBED")?;
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + args.duration;
    let mut workers = Vec::new();
    for _ in 0..args.writers {
        let (queue, done, stream_id, framework_id) = (
            queue.clone(),
            done.clone(),
            stream_id.clone(),
            framework_id.clone(),
        );
        let conn = Mutex::new(HttpConn::open(addr).await?);
        workers.push(tokio::spawn(async move {
            let mut conn = conn.lock().await;
            while Instant::now() < end {
                let Some(offer) = take(&queue) else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                };
                let body = json!({"type": "ACCEPT", "framework_id": {"value": framework_id},
                    "accept": {"offer_ids": [{"value": offer}], "operations": [], "filters": {"refuse_seconds": 0.0}}})
                .to_string();
                match conn.post(&stream_id, &body).await {
                    Ok(202) if Instant::now() < end => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut conn = HttpConn::open(addr).await?;
    let teardown = json!({"type": "TEARDOWN", "framework_id": {"value": framework_id}}).to_string();
    let _ = conn.post(&stream_id, &teardown).await;
    reader.abort();
    Ok(done.load(Ordering::Relaxed))
}
