//! `orrery bench overload`: the master's memory and latency at its
//! sustainable call rate and at `--factor` (10) times it, with
//! `--max-pending-commands` bounding the backlog, and the same overload
//! against the default bound (10,000), side by side in one run.
//!
//! The master is a child process (`orrery master`, a one-member log in a
//! temp dir, fsync on, plain TCP), so that its resident memory is its own:
//! it is read from `/proc/PID/status` every 20 ms, and the cell's peak is
//! quoted. The calls are operator `UpdateWeights` of one role (each one
//! event through the log, and a state that does not grow with the count).
//!
//! Per master and round:
//! - capacity: `--bound` closed-loop callers for `--duration`; the calls
//!   answered OK per second are the sustainable rate R (no call is shed:
//!   the callers never outnumber the bound);
//! - then open loop (arrivals do not wait for answers, as a real overload):
//!   calls started at R for `--duration`, then at `--factor` × R. Each call
//!   is answered OK (accepted: its latency is recorded), RESOURCE_EXHAUSTED
//!   (shed, with a retry hint), anything else (an error: the bench fails),
//!   or not within 30 s (counted, and the bench fails).
//!
//! The client runs in this process on the same machine, on cores of its
//! own: the master is pinned to the last core this process may use and the
//! client's threads to the others (`--shared-cores` lets them share), so
//! that the client's work is not the master's. The offered rate it reaches
//! is measured and printed, not assumed. Latencies are quoted twice: as
//! the client sees them (from the moment it started the call, so including
//! the time the call waited in the client and in TCP before the master
//! read it), and inside the master, from the master's own
//! `orrery_api_latency_seconds` histogram of these calls scraped from its
//! `/metrics` before and after the phase (to the histogram's bucket
//! bound). Offered is per second of the sending window; accepted and shed
//! per second until the last answer came back. `--rounds` rounds; medians
//! are quoted. hdrhistogram (already used by `bench log`) keeps
//! the latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct BenchOverloadArgs {
    /// How long each phase (capacity, 1x, the overload) runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds; each starts both masters afresh.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The bounded master's --max-pending-commands (and the closed-loop
    /// callers of the capacity phase).
    #[arg(long, default_value_t = 64)]
    bound: usize,
    /// The overload, as a multiple of the measured sustainable rate.
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// gRPC connections the calls are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Let the client and the master share every core (by default the
    /// master runs on the last core and the client on the others, so that
    /// the client's work is not counted as the master's).
    #[arg(long)]
    shared_cores: bool,
}

/// The default of `orrery master --max-pending-commands`.
const DEFAULT_BOUND: usize = 10_000;
/// A call unanswered this long counts as lost.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// A master child process, killed when dropped (also when the bench fails).
struct Master {
    child: std::process::Child,
    addr: String,
    /// Its `--http` address, for `/metrics`.
    http: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start(bound: usize, cores: &Cores) -> Result<Master> {
        let dir = tempfile::Builder::new()
            .prefix("orrery-bench-overload-")
            .tempdir()
            .context("creating a temp dir")?;
        let addr = crate::dev::free_addr()?.to_string();
        let http = crate::dev::free_addr()?.to_string();
        let log = dir.path().join("master.log");
        let err = std::fs::File::create(&log).context("creating the master's log file")?;
        let mut cmd =
            std::process::Command::new(std::env::current_exe().unwrap_or_else(|_| "orrery".into()));
        cmd.args(["--insecure", "master", "--id", "1", "--listen", &addr])
            .args(["--peers", &format!("1={addr}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--max-pending-commands", &bound.to_string()])
            .args(["--http", &http])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err);
        let child = cores.spawn_master(&mut cmd)?;
        Ok(Master {
            child,
            addr,
            http,
            log,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Which cores the master and the client run on.
struct Cores {
    /// None: shared.
    split: Option<(nix::sched::CpuSet, nix::sched::CpuSet)>,
    describe: String,
}

impl Cores {
    fn new(shared: bool) -> Result<Cores> {
        use nix::sched::{sched_getaffinity, CpuSet};
        let mine = sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .context("reading this process's CPU affinity")?;
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| mine.is_set(c).unwrap_or(false))
            .collect();
        if shared {
            return Ok(Cores {
                split: None,
                describe: format!("client and master share {} cores", cpus.len()),
            });
        }
        let Some((&last, rest)) = cpus.split_last().filter(|(_, rest)| !rest.is_empty()) else {
            bail!(
                "this process may run on {} core(s): the master and the client need one each (or give --shared-cores)",
                cpus.len()
            );
        };
        let mut master = CpuSet::new();
        master.set(last).context("a CPU set")?;
        let mut client = CpuSet::new();
        for &c in rest {
            client.set(c).context("a CPU set")?;
        }
        Ok(Cores {
            split: Some((master, client)),
            describe: format!("master on core {last}, client on core(s) {rest:?}"),
        })
    }

    /// Puts every thread of this process on the client's cores.
    fn pin_client(&self) -> Result<()> {
        let Some((_, client)) = &self.split else {
            return Ok(());
        };
        for tid in threads()? {
            // A thread may end between listing and pinning.
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), client);
        }
        Ok(())
    }

    /// Starts the master on its core: the child inherits the affinity of
    /// the thread that starts it, which is moved there for the spawn.
    fn spawn_master(&self, cmd: &mut std::process::Command) -> Result<std::process::Child> {
        let Some((master, client)) = &self.split else {
            return cmd.spawn().context("starting `orrery master`");
        };
        let me = nix::unistd::Pid::from_raw(0);
        nix::sched::sched_setaffinity(me, master).context("moving to the master's core")?;
        let child = cmd.spawn().context("starting `orrery master`");
        nix::sched::sched_setaffinity(me, client).context("moving back to the client's cores")?;
        child
    }
}

/// This process's thread ids.
fn threads() -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// The master's own latency histogram of the bench's calls, from its
/// `/metrics`: cumulative counts by bucket bound (seconds), per outcome.
type Buckets = std::collections::BTreeMap<(String, u64), u64>;

async fn scrape(http: &str) -> Result<Buckets> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(http).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| anyhow::anyhow!("GET http://{http}/metrics: no answer in 10 s"))?
        .with_context(|| format!("GET http://{http}/metrics"))?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{http}/metrics: {}",
            text.lines().next().unwrap_or("no status line")
        );
    }
    Ok(parse_buckets(&text))
}

/// `orrery_api_latency_seconds_bucket{method="Operator/UpdateWeights",outcome="O",le="B"} N`
/// lines as ((O, B in ns), N); `+Inf` is `u64::MAX`.
fn parse_buckets(text: &str) -> Buckets {
    let mut out = Buckets::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("orrery_api_latency_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'))
        };
        if label("method") != Some("Operator/UpdateWeights") {
            continue;
        }
        let (Some(outcome), Some(le), Ok(n)) =
            (label("outcome"), label("le"), value.trim().parse::<f64>())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            u64::MAX
        } else {
            match le.parse::<f64>() {
                Ok(v) => (v * 1e9).round() as u64,
                Err(_) => continue,
            }
        };
        out.insert((outcome.to_string(), le), n as u64);
    }
    out
}

/// The bucket bound (ms) at or below which `q` of the calls of `outcome`
/// between two scrapes were answered: the master's latency, to its
/// histogram's resolution. None when there were none.
fn master_quantile_ms(before: &Buckets, after: &Buckets, outcome: &str, q: f64) -> Option<f64> {
    let delta: Vec<(u64, u64)> = after
        .iter()
        .filter(|((o, _), _)| o == outcome)
        .map(|((_, le), n)| {
            (
                *le,
                n - before
                    .get(&(outcome.to_string(), *le))
                    .copied()
                    .unwrap_or(0)
                    .min(*n),
            )
        })
        .collect();
    let total = delta.iter().map(|d| d.1).max()?;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    delta.iter().find(|(_, n)| *n >= want).map(|(le, _)| {
        if *le == u64::MAX {
            f64::INFINITY
        } else {
            *le as f64 / 1e6
        }
    })
}

fn call() -> op::UpdateWeightsRequest {
    op::UpdateWeightsRequest {
        weights: vec![op::WeightInfo {
            role: "bench".into(),
            weight: 1.0,
        }],
    }
}

/// What one phase saw.
#[derive(Debug)]
struct Cell {
    master: &'static str,
    load: String,
    offered_per_s: f64,
    accepted_per_s: f64,
    shed_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    shed_p99_ms: f64,
    /// The master's own p99 (from reading a call to answering it), to its
    /// histogram's bucket bound; None when no call had that outcome.
    master_p99_ms: Option<f64>,
    master_shed_p99_ms: Option<f64>,
    refused_streams: u64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
}

#[derive(Default)]
struct Tally {
    accepted: Option<Histogram<u64>>,
    shed: Option<Histogram<u64>>,
    errors: Vec<String>,
    /// Streams the server's HTTP/2 refused (REFUSED_STREAM: not processed,
    /// safe to retry, as a shed call).
    refused_streams: u64,
    /// When the first error came, since the phase started.
    first_error: Option<Duration>,
    unanswered: u64,
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("a histogram of 3 significant digits")
}

/// Samples the master's RSS until told to stop; returns the peak.
fn sampler(pid: u32, stop: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while stop.load(Ordering::Relaxed) == 0 {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_kib(pid).unwrap_or(0))
    })
}

async fn connect(addr: &str, n: usize) -> Result<Vec<Channel>> {
    crate::bench_log::connections(addr, None, n)
        .await
        .with_context(|| format!("connecting to the master at {addr}"))
}

/// `callers` closed-loop callers for `d`: calls answered OK per second.
async fn capacity(chs: &[Channel], callers: usize, d: Duration) -> Result<f64> {
    let end = Instant::now() + d;
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut c = OperatorClient::new(chs[i % chs.len()].clone());
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let mut other = None;
            while Instant::now() < end {
                match c.update_weights(call()).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {}
                    Err(s) => {
                        other = Some(s.to_string());
                        break;
                    }
                }
            }
            other
        }));
    }
    for t in tasks {
        if let Some(e) = t.await.context("a caller")? {
            bail!("capacity phase: a call failed: {e}");
        }
    }
    Ok(ok.load(Ordering::Relaxed) as f64 / d.as_secs_f64())
}

/// Calls started at `rate` per second for `d`, open loop.
async fn open_loop(
    chs: &[Channel],
    m: &Master,
    rate: f64,
    d: Duration,
    master: &'static str,
    load: String,
) -> Result<Cell> {
    let tally = Arc::new(Mutex::new(Tally {
        accepted: Some(hist()),
        shed: Some(hist()),
        ..Default::default()
    }));
    let pid = m.pid();
    let rss_before = rss_kib(pid).unwrap_or(0);
    let buckets_before = scrape(&m.http).await?;
    let stop = Arc::new(AtomicU64::new(0));
    let peak = sampler(pid, stop.clone());
    let clients: Vec<OperatorClient<Channel>> =
        chs.iter().cloned().map(OperatorClient::new).collect();
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= d {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        while sent < due {
            let mut c = clients[sent as usize % clients.len()].clone();
            let tally = tally.clone();
            sent += 1;
            calls.spawn(async move {
                let t0 = Instant::now();
                let r = tokio::time::timeout(ANSWER_LIMIT, c.update_weights(call())).await;
                let us = t0.elapsed().as_micros() as u64;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(Ok(_)) => t.accepted.as_mut().map(|h| h.record(us.max(1))),
                    Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => {
                        t.shed.as_mut().map(|h| h.record(us.max(1)))
                    }
                    Ok(Err(s)) if s.to_string().contains("REFUSED_STREAM") => {
                        t.refused_streams += 1;
                        None
                    }
                    Ok(Err(s)) => {
                        t.first_error.get_or_insert(start.elapsed());
                        t.errors.push(s.to_string());
                        None
                    }
                    Err(_) => {
                        t.unanswered += 1;
                        None
                    }
                };
            });
        }
        // Reap what finished, so the set does not hold every call.
        while calls.try_join_next().is_some() {}
    }
    let sending = start.elapsed().as_secs_f64();
    while calls.join_next().await.is_some() {}
    // Rates of answers are over the whole phase, until the last answer.
    let answering = start.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let rss_peak = peak.await.context("the RSS sampler")?;
    let buckets_after = scrape(&m.http).await?;
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    if !t.errors.is_empty() {
        bail!(
            "{master} master at {load}: {} of {sent} calls failed with neither OK nor RESOURCE_EXHAUSTED (the first after {:?}, when {} were accepted and {} shed), e.g. {}",
            t.errors.len(),
            t.first_error.unwrap_or_default(),
            t.accepted.as_ref().map_or(0, |h| h.len()),
            t.shed.as_ref().map_or(0, |h| h.len()),
            t.errors[0]
        );
    }
    if t.unanswered > 0 {
        bail!(
            "{master} master at {load}: {} calls were not answered within {ANSWER_LIMIT:?}",
            t.unanswered
        );
    }
    let acc = t.accepted.take().unwrap_or_else(hist);
    let shed = t.shed.take().unwrap_or_else(hist);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Cell {
        master,
        load,
        offered_per_s: sent as f64 / sending,
        accepted_per_s: acc.len() as f64 / answering,
        shed_per_s: shed.len() as f64 / answering,
        p50_ms: ms(&acc, 0.5),
        p99_ms: ms(&acc, 0.99),
        max_ms: acc.max() as f64 / 1000.0,
        shed_p99_ms: ms(&shed, 0.99),
        master_p99_ms: master_quantile_ms(&buckets_before, &buckets_after, "answered", 0.99),
        master_shed_p99_ms: master_quantile_ms(&buckets_before, &buckets_after, "shed", 0.99),
        refused_streams: t.refused_streams,
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
    })
}

/// One master: its capacity, then 1x and the overload.
async fn one_master(
    args: &BenchOverloadArgs,
    name: &'static str,
    bound: usize,
    with_1x: bool,
    cores: &Cores,
) -> Result<(f64, Vec<Cell>)> {
    let m = Master::start(bound, cores)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let chs = loop {
        if let Ok(chs) = connect(&m.addr, args.connections).await {
            if OperatorClient::new(chs[0].clone())
                .update_weights(call())
                .await
                .is_ok()
            {
                break chs;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the {name} master did not serve within 30 s; its log:\n{}",
                m.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = capacity(&chs, args.bound, args.duration).await?;
    let mut cells = Vec::new();
    let alive = |e: anyhow::Error, m: &mut Master| {
        let status = match m.child.try_wait() {
            Ok(Some(s)) => format!("the master exited ({s})"),
            _ => "the master still runs".to_string(),
        };
        e.context(format!("{status}; its log:\n{}", m.log_tail()))
    };
    let mut m = m;
    if with_1x {
        match open_loop(&chs, &m, r, args.duration, name, "1x".into()).await {
            Ok(c) => cells.push(c),
            Err(e) => return Err(alive(e, &mut m)),
        }
    }
    let load = format!("{}x", args.factor);
    match open_loop(&chs, &m, r * args.factor, args.duration, name, load).await {
        Ok(c) => cells.push(c),
        Err(e) => return Err(alive(e, &mut m)),
    }
    Ok((r, cells))
}

/// A bucket bound in ms for printing ("-" for none, "inf" past the last).
fn show(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_infinite() => "inf".into(),
        Some(v) => format!("{v}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(args: &BenchOverloadArgs, json_out: bool) -> Result<()> {
    if args.rounds == 0 || args.connections == 0 {
        bail!("--rounds and --connections must be at least 1");
    }
    if args.bound == 0 || args.bound >= DEFAULT_BOUND {
        bail!(
            "--bound {} is out of range: give 1 to {} (below the default bound it is compared with)",
            args.bound,
            DEFAULT_BOUND - 1
        );
    }
    if !(args.factor > 1.0 && args.factor <= 100.0) {
        bail!(
            "--factor {} is out of range: give more than 1, at most 100",
            args.factor
        );
    }
    let cores = Cores::new(args.shared_cores)?;
    eprintln!("{}", cores.describe);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        cores.pin_client()?;
        let mut cells: Vec<Cell> = Vec::new();
        let mut rates: Vec<(&str, f64)> = Vec::new();
        let bounded: &'static str = "bounded";
        for round in 0..args.rounds {
            let order: [(&'static str, usize); 2] = if round % 2 == 0 {
                [(bounded, args.bound), ("default", DEFAULT_BOUND)]
            } else {
                [("default", DEFAULT_BOUND), (bounded, args.bound)]
            };
            for (name, bound) in order {
                let (r, got) = one_master(args, name, bound, name == bounded, &cores).await?;
                eprintln!("round {round} {name} (--max-pending-commands {bound}): sustainable {r:.0} calls/s");
                for c in &got {
                    eprintln!(
                        "  {}: offered {:.0}/s, accepted {:.0}/s, shed {:.0}/s, accepted p50 {:.1} ms p99 {:.1} ms max {:.1} ms, shed p99 {:.1} ms; in the master: accepted p99 <= {} ms, shed p99 <= {} ms; {} streams refused by HTTP/2, RSS {} -> peak {} KiB",
                        c.load, c.offered_per_s, c.accepted_per_s, c.shed_per_s, c.p50_ms, c.p99_ms, c.max_ms, c.shed_p99_ms, show(c.master_p99_ms), show(c.master_shed_p99_ms), c.refused_streams, c.rss_before_kib, c.rss_peak_kib
                    );
                }
                rates.push((name, r));
                cells.extend(got);
            }
        }
        let keys: Vec<(&str, String)> = vec![
            (bounded, "1x".to_string()),
            (bounded, format!("{}x", args.factor)),
            ("default", format!("{}x", args.factor)),
        ];
        let med = |k: &(&str, String), f: &dyn Fn(&Cell) -> f64| {
            median(
                cells
                    .iter()
                    .filter(|c| c.master == k.0 && c.load == k.1)
                    .map(f)
                    .collect(),
            )
        };
        // The master's figures: medians over the rounds that had calls of
        // that outcome.
        let med_opt = |k: &(&str, String), f: &dyn Fn(&Cell) -> Option<f64>| {
            let v: Vec<f64> = cells
                .iter()
                .filter(|c| c.master == k.0 && c.load == k.1)
                .filter_map(f)
                .collect();
            (!v.is_empty()).then(|| median(v))
        };
        let rate = |name: &str| median(rates.iter().filter(|r| r.0 == name).map(|r| r.1).collect());
        if json_out {
            let rows: Vec<_> = keys
                .iter()
                .map(|k| {
                    json!({
                        "master": k.0, "load": k.1,
                        "offered_per_s": med(k, &|c| c.offered_per_s),
                        "accepted_per_s": med(k, &|c| c.accepted_per_s),
                        "shed_per_s": med(k, &|c| c.shed_per_s),
                        "accepted_p50_ms": med(k, &|c| c.p50_ms),
                        "accepted_p99_ms": med(k, &|c| c.p99_ms),
                        "accepted_max_ms": med(k, &|c| c.max_ms),
                        "shed_p99_ms": med(k, &|c| c.shed_p99_ms),
                        "master_accepted_p99_ms_at_most": med_opt(k, &|c| c.master_p99_ms).filter(|v| v.is_finite()),
                        "master_shed_p99_ms_at_most": med_opt(k, &|c| c.master_shed_p99_ms).filter(|v| v.is_finite()),
                        "rss_before_kib": med(k, &|c| c.rss_before_kib as f64),
                        "rss_peak_kib": med(k, &|c| c.rss_peak_kib as f64),
                    })
                })
                .collect();
            println!(
                "{}",
                json!({"bound": args.bound, "factor": args.factor, "rounds": args.rounds,
                       "duration_s": args.duration.as_secs_f64(),
                       "sustainable_per_s": {"bounded": rate(bounded), "default": rate("default")},
                       "cells": rows})
            );
        } else {
            println!(
                "medians of {} rounds; sustainable rate: bounded {:.0} calls/s, default {:.0} calls/s",
                args.rounds,
                rate(bounded),
                rate("default")
            );
            println!("{}", cores.describe);
            println!("master (--max-pending-commands)  load   offered/s  accepted/s  shed/s   p50 ms  p99 ms  max ms  shed p99 ms  in master: p99 ms  shed p99 ms  RSS before -> peak (MiB)");
            for k in &keys {
                let bound = if k.0 == bounded { args.bound } else { DEFAULT_BOUND };
                println!(
                    "{:<33} {:<6} {:>9.0}  {:>10.0}  {:>7.0}  {:>6.1}  {:>6.1}  {:>6.1}  {:>11.1}  {:>17}  {:>11}  {:.1} -> {:.1}",
                    format!("{} ({bound})", k.0),
                    k.1,
                    med(k, &|c| c.offered_per_s),
                    med(k, &|c| c.accepted_per_s),
                    med(k, &|c| c.shed_per_s),
                    med(k, &|c| c.p50_ms),
                    med(k, &|c| c.p99_ms),
                    med(k, &|c| c.max_ms),
                    med(k, &|c| c.shed_p99_ms),
                    format!("<= {}", show(med_opt(k, &|c| c.master_p99_ms))),
                    format!("<= {}", show(med_opt(k, &|c| c.master_shed_p99_ms))),
                    med(k, &|c| c.rss_before_kib as f64) / 1024.0,
                    med(k, &|c| c.rss_peak_kib as f64) / 1024.0,
                );
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_quantile_comes_from_the_bucket_deltas_of_its_calls() {
        let before = parse_buckets(concat!(
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"0.001\"} 10\n",
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"0.01\"} 10\n",
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"+Inf\"} 10\n",
        ));
        let after = parse_buckets(concat!(
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"0.001\"} 60\n",
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"0.01\"} 109\n",
            "orrery_api_latency_seconds_bucket{method=\"Operator/UpdateWeights\",outcome=\"answered\",le=\"+Inf\"} 110\n",
            "orrery_api_latency_seconds_bucket{method=\"Operator/GetState\",outcome=\"answered\",le=\"0.001\"} 999\n",
        ));
        // 100 calls in between: 50 within 1 ms, 99 within 10 ms, one later.
        assert_eq!(
            master_quantile_ms(&before, &after, "answered", 0.5),
            Some(1.0)
        );
        assert_eq!(
            master_quantile_ms(&before, &after, "answered", 0.99),
            Some(10.0)
        );
        assert_eq!(
            master_quantile_ms(&before, &after, "answered", 1.0),
            Some(f64::INFINITY)
        );
        assert_eq!(master_quantile_ms(&before, &after, "shed", 0.99), None);
        assert_eq!(master_quantile_ms(&after, &after, "answered", 0.99), None);
    }
}
