//! `orrery bench log`: durable appends per second and commit latency of the
//! replicated log, with etcd as the peer in the same run.
//!
//! Orrery: 1 or 3 in-process replicas of the `raft` backend on loopback,
//! each with its own data dir (fsync on every acknowledged append), clients
//! appending over gRPC to the leader's `Log` service. etcd: the same number
//! of real `etcd` processes on loopback (fsync on, its default), clients
//! writing the same payloads through etcd's v3 gRPC KV API (a tonic client
//! generated from `proto/etcd.proto`; the `etcd-client` crate would need a
//! system protoc to build) — one `Put` per event for batch size 1, one `Txn`
//! of puts (one raft entry) per batch.
//!
//! Every cell runs for `--duration` with `--writers` concurrent clients, each
//! appending batches of `--batch` events of `--event-bytes` bytes and waiting
//! for the acknowledgement. Latency is per acknowledged append (a batch).
//!
//! Rows `ceiling` put a bound on every cell from two floors measured in the
//! same run, on the same disk and gRPC stack: an empty gRPC round trip to the
//! leader (`Raft/Status`, no log work) and an fdatasync of an event-sized
//! append with as many files syncing at once as there are replicas (here
//! they share one disk). One writer's append cannot be acknowledged sooner
//! than a round trip plus an fsync (plus a round trip between replicas when
//! there are several), so its rate is at most `batch ÷ that`; many writers
//! cannot append faster than empty round trips go at that concurrency
//! (`batch × round trips/s`). A target above the ceiling is out of reach on
//! this machine whatever the log does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use orrery_proto::etcd as epb;
use orrery_proto::etcd::kv_client::KvClient;
use orrery_proto::raft as rpb;
use orrery_proto::raft::log_client::LogClient;
use orrery_storage::raft::{RaftConfig, RaftNode, RawAppends};
use orrery_storage::security::pki::{Ca, Validity};
use orrery_storage::security::{Principal, Tls};
use orrery_storage::{EventLog, LoggedEvent, StateMachine};

#[derive(Debug, Args)]
pub struct BenchLogArgs {
    /// How long each cell runs.
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Replica counts to measure (comma-separated: 1, 3 or 5).
    #[arg(long, default_value = "1,3")]
    replicas: String,
    /// Events per append.
    #[arg(long, default_value = "1,64")]
    batch: String,
    /// Concurrent writers.
    #[arg(long, default_value = "1,64")]
    writers: String,
    /// Bytes per event.
    #[arg(long, default_value_t = 256)]
    event_bytes: usize,
    /// The etcd binary for the side-by-side run; `off` to skip.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: String,
    /// Where the data dirs go (default: a temp dir, removed afterwards).
    /// Put it on the disk you want to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A TiKV cluster's PD (`host:port`) for the `tikv` rows: the TiKV
    /// backend appending in-process, one master. Default: $ORRERY_TIKV_PD;
    /// without either, no tikv rows. `double` measures the in-process test
    /// double instead (rows `tikv-double`: a check of the code path, not a
    /// TiKV figure).
    #[arg(long)]
    tikv_pd: Option<String>,
    /// Also measure Orrery with mutual TLS between the replicas and from
    /// the clients (rows `orrery+tls`, after the plain rows of the same
    /// size, with a throwaway CA).
    #[arg(long)]
    tls: bool,
    /// Skip the `ceiling` rows (the floors of an fsync and of an empty gRPC
    /// round trip, measured before each replica count's rows: what no
    /// append could beat on this machine and stack).
    #[arg(long = "no-ceiling", action = clap::ArgAction::SetFalse)]
    ceiling: bool,
}

fn master_cert(ca: &Ca, name: &str) -> Result<Tls> {
    ca.local(&Principal::Master(name.to_owned()))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The state machine for the benchmark: counts (the log is what is timed).
#[derive(Debug, Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn apply(&mut self, _e: &LoggedEvent) -> Result<(), String> {
        self.0 += 1;
        Ok(())
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(
            b.try_into()
                .map_err(|_| "a counter snapshot is 8 bytes".to_string())?,
        );
        Ok(())
    }
    fn digest(&self) -> Vec<u8> {
        self.snapshot()
    }
}

fn list(flag: &str, text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag} {text:?}: `{s}` is not a positive number"))
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Cell {
    system: &'static str,
    replicas: usize,
    batch: usize,
    writers: usize,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// The floors measured for one replica count (see the module doc).
#[derive(Debug, Clone)]
struct Floors {
    /// fdatasync p50 with `replicas` files syncing at once.
    fsync_p50_ms: f64,
    /// Empty round trips: writers → (round trips/s, p50 ms).
    rpc: BTreeMap<usize, (f64, f64)>,
}

/// fdatasync latency of appending `bytes` to a file, with `files` files
/// doing it at once (each in its own thread), in `dir`: the p50 over all.
fn fsync_floor(dir: &Path, files: usize, bytes: usize, duration: Duration) -> Result<f64> {
    use std::io::Write;
    let threads: Vec<_> = (0..files)
        .map(|i| {
            let path = dir.join(format!("fsync-floor-{files}-{i}"));
            std::thread::spawn(move || -> std::io::Result<Vec<u64>> {
                let probe = || -> std::io::Result<Vec<u64>> {
                    let mut f = std::fs::File::create(&path)?;
                    let record = vec![0x5au8; bytes];
                    let mut lat = Vec::new();
                    let end = Instant::now() + duration;
                    while Instant::now() < end && lat.len() < 20_000 {
                        let t = Instant::now();
                        f.write_all(&record)?;
                        f.sync_data()?;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    Ok(lat)
                };
                // The probe file goes whether the probe worked or not.
                let lat = probe();
                let removed = std::fs::remove_file(&path);
                let lat = lat?;
                removed?;
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let lat = t
            .join()
            .map_err(|_| anyhow::anyhow!("an fsync probe thread panicked"))?
            .with_context(|| format!("probing fsync in {}", dir.display()))?;
        all.extend(lat);
    }
    all.sort_unstable();
    let p50 = all
        .get(all.len() / 2)
        .context("the fsync probe recorded nothing")?;
    Ok(*p50 as f64 / 1e6)
}

/// Empty gRPC round trips (`Raft/Status`) to `leader` with each writer
/// count, over as many connections as the appends use.
async fn rpc_floor(
    leader: &str,
    writers: &[usize],
    duration: Duration,
) -> Result<BTreeMap<usize, (f64, f64)>> {
    use orrery_proto::raft::raft_client::RaftClient;
    let mut out = BTreeMap::new();
    for &w in writers {
        let clients: Vec<_> = connections(leader, None, w.min(CONNECTIONS_MAX))
            .await?
            .into_iter()
            .map(RaftClient::new)
            .collect();
        let clients = Arc::new(clients);
        let (rate, hist, errors) = drive(duration, w, 1, move |wi, _| {
            let mut c = clients[wi % clients.len()].clone();
            async move {
                c.status(rpb::StatusRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        if errors > 0 {
            bail!("{errors} empty round trips to {leader} failed");
        }
        out.insert(w, (rate, hist.value_at_quantile(0.50) as f64 / 1000.0));
    }
    Ok(out)
}

/// `n` connections to `leader`, as the benchmark's clients make them: with
/// `ca`, over mutual TLS holding a master certificate (the log service
/// answers masters only).
pub(crate) async fn connections(
    leader: &str,
    ca: Option<&Ca>,
    n: usize,
) -> Result<Vec<tonic::transport::Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match ca {
            Some(ca) => {
                master_cert(ca, "bench-client")?
                    .endpoint(leader)
                    .map_err(|e| anyhow::anyhow!(e))?
                    .connect()
                    .await?
            }
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://{leader}"))?
                    .connect()
                    .await?
            }
        });
    }
    Ok(out)
}

/// The `ceiling` rows for one replica count (see the module doc).
fn ceiling_rows(replicas: usize, batches: &[usize], floors: &Floors) -> Vec<Cell> {
    let mut rows = Vec::new();
    for &b in batches {
        for (&w, &(rate, rpc_p50)) in &floors.rpc {
            let (events_per_s, p50_ms) = if w == 1 {
                let trips = if replicas > 1 { 2.0 } else { 1.0 };
                let floor = trips * rpc_p50 + floors.fsync_p50_ms;
                (b as f64 * 1000.0 / floor, floor)
            } else {
                (b as f64 * rate, rpc_p50)
            };
            rows.push(Cell {
                system: "ceiling",
                replicas,
                batch: b,
                writers: w,
                events_per_s,
                p50_ms,
                p99_ms: f64::NAN,
                errors: 0,
            });
        }
    }
    rows
}

/// Connections the appending clients share (at most).
const CONNECTIONS_MAX: usize = 8;

/// Runs `writers` loops of `append` for `duration`; returns the cell.
async fn drive<F, Fut>(
    duration: Duration,
    writers: usize,
    batch: usize,
    append: F,
) -> (f64, Histogram<u64>, u64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for w in 0..writers {
        let stop = stop.clone();
        let append = append.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("a histogram");
            let (mut events, mut errors, mut seq) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                seq += 1;
                match append(w, seq).await {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                        events += batch as u64;
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, events, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).expect("a histogram");
    let (mut events, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((h, e, x)) = t.await {
            let _ = hist.add(h);
            events += e;
            errors += x;
        }
    }
    (events as f64 / start.elapsed().as_secs_f64(), hist, errors)
}

fn cell(
    system: &'static str,
    replicas: usize,
    batch: usize,
    writers: usize,
    r: (f64, Histogram<u64>, u64),
) -> Cell {
    let (rate, hist, errors) = r;
    Cell {
        system,
        replicas,
        batch,
        writers,
        events_per_s: rate,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}

async fn orrery_cluster(
    root: &Path,
    n: usize,
    ca: Option<&Ca>,
) -> Result<(Vec<RaftNode<Counter>>, String)> {
    let mut peers = BTreeMap::new();
    for id in 1..=n as u64 {
        peers.insert(
            id,
            format!("127.0.0.1:{}", orrery_storage::ports::free_port()?),
        );
    }
    let mut nodes = Vec::new();
    let mut starting = Vec::new();
    for (id, addr) in &peers {
        let mut c = RaftConfig::new(
            *id,
            addr.parse()?,
            peers.clone(),
            root.join(format!(
                "orrery-{n}-{id}{}",
                if ca.is_some() { "-tls" } else { "" }
            )),
        );
        c.raw_appends = RawAppends::Accepted;
        if let Some(ca) = ca {
            c.tls = Some(Arc::new(master_cert(ca, &format!("m{id}"))?));
        }
        c.snapshot_every_entries = 100_000;
        starting.push(tokio::spawn(RaftNode::start(c, Counter::default())));
    }
    for s in starting {
        nodes.push(s.await?.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let leader = nodes[0]
        .wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((nodes, peers[&leader].clone()))
}

struct Etcd {
    children: Vec<Child>,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcd_cluster(bin: &str, root: &Path, n: usize) -> Result<Etcd> {
    let mut members = Vec::new();
    for i in 0..n {
        members.push((
            format!("e{i}"),
            orrery_storage::ports::free_port()?,
            orrery_storage::ports::free_port()?,
        ));
    }
    let initial = members
        .iter()
        .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Etcd {
        children: Vec::new(),
        endpoint: format!("127.0.0.1:{}", members[0].1),
    };
    for (name, client, peer) in &members {
        let child = Command::new(bin)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(root.join(format!("etcd-{n}-{name}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--quota-backend-bytes",
                "8589934592",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        etcd.children.push(child);
    }
    Ok(etcd)
}

/// The TiKV backend's rows: one master appending in-process (TiKV
/// replicates by its own configuration).
async fn tikv_rows(
    pd: &str,
    duration: Duration,
    batches: &[usize],
    writers: &[usize],
    payload: &Arc<Vec<u8>>,
) -> Result<Vec<Cell>> {
    let double = if pd == "double" {
        Some(
            orrery_storage::tikv::double::TikvTestDouble::start()
                .await
                .context("starting the TiKV test double")?,
        )
    } else {
        None
    };
    let (system, endpoint) = match &double {
        Some(d) => ("tikv-double", d.pd_endpoint()),
        None => ("tikv", pd.to_owned()),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let url = format!("tikv://{endpoint}/orrery-bench/{stamp}");
    let mut cfg = orrery_storage::tikv::TikvConfig::from_url(&url, 1, "bench:0".into())
        .map_err(|e| anyhow::anyhow!("--tikv-pd {pd:?}: {e}"))?;
    cfg.snapshot_every = 0;
    let log = orrery_storage::tikv::TikvLog::open(cfg, Counter::default())
        .await
        .with_context(|| format!("opening the TiKV log at {url}"))?;
    log.wait_leader(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("the TiKV log: {e}"))?;
    let mut cells = Vec::new();
    for &b in batches {
        for &w in writers {
            let log = log.clone();
            let payload = payload.clone();
            let r = drive(duration, w, b, move |_, _| {
                let log = log.clone();
                let events = vec![payload.as_ref().clone(); b];
                async move {
                    log.append(events)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            let c = cell(system, 1, b, w, r);
            eprintln!("{c:?}");
            cells.push(c);
        }
    }
    eprintln!("{system}: {} events in the log", log.last_applied());
    log.close();
    Ok(cells)
}

fn print_table(cells: &[Cell]) {
    println!(
        "{:<11} {:>8} {:>6} {:>8} {:>14} {:>10} {:>10} {:>7}",
        "system", "replicas", "batch", "writers", "events/s", "p50 ms", "p99 ms", "errors"
    );
    for c in cells {
        let p99 = match c.p99_ms.is_nan() {
            true => "-".to_string(),
            false => format!("{:.2}", c.p99_ms),
        };
        println!(
            "{:<11} {:>8} {:>6} {:>8} {:>14.0} {:>10.2} {:>10} {:>7}",
            c.system, c.replicas, c.batch, c.writers, c.events_per_s, c.p50_ms, p99, c.errors
        );
    }
    if cells.iter().any(|c| c.system == "ceiling") {
        println!(
            "ceiling: the most appends could do on this machine and stack. One writer: \
             batch / (empty gRPC round trip, twice with replicas, + fsync with a file per \
             replica syncing at once), p50 = that floor. More writers: batch x empty round \
             trips/s at that concurrency, p50 = theirs."
        );
    }
}

pub fn run(args: &BenchLogArgs, json: bool) -> Result<()> {
    let duration = crate::master::parse_duration("--duration", &args.duration)?;
    let replicas = list("--replicas", &args.replicas)?;
    let batches = list("--batch", &args.batch)?;
    let writers = list("--writers", &args.writers)?;
    if args.event_bytes == 0 || args.event_bytes > 1 << 20 {
        bail!(
            "--event-bytes {} must be between 1 and 1048576",
            args.event_bytes
        );
    }
    for r in &replicas {
        if ![1, 3, 5].contains(r) {
            bail!("--replicas: {r} is not 1, 3 or 5");
        }
    }
    let etcd_bin = match args.etcd.as_str() {
        "off" => None,
        path if Path::new(path).exists() => Some(path.to_owned()),
        path => {
            eprintln!("note: {path} not found; measuring Orrery only (ops/bench/log.sh installs etcd-server)");
            None
        }
    };
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temp dir")?;
            tmp.path().to_path_buf()
        }
    };
    let payload = Arc::new(vec![0x5au8; args.event_bytes]);
    let tikv_pd = args
        .tikv_pd
        .clone()
        .or_else(|| std::env::var("ORRERY_TIKV_PD").ok())
        .filter(|p| !p.is_empty());
    if tikv_pd.is_none() {
        eprintln!("note: no TiKV given (--tikv-pd or ORRERY_TIKV_PD): no tikv rows");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut cells = Vec::new();
    rt.block_on(async {
        if let Some(pd) = &tikv_pd {
            cells.extend(tikv_rows(pd, duration, &batches, &writers, &payload).await?);
        }
        let ca = match args.tls {
            true => {
                Some(Ca::generate("bench CA", Validity::days(1)).map_err(|e| anyhow::anyhow!(e))?)
            }
            false => None,
        };
        // Each size plain, then (with --tls) the same size over TLS.
        let runs: Vec<(usize, Option<&Ca>)> = replicas
            .iter()
            .flat_map(|&n| std::iter::once((n, None)).chain(ca.as_ref().map(|c| (n, Some(c)))))
            .collect();
        for (n, tls_ca) in runs {
            let (nodes, leader) = orrery_cluster(&root, n, tls_ca).await?;
            let system = if tls_ca.is_some() {
                "orrery+tls"
            } else {
                "orrery"
            };
            if tls_ca.is_none() && args.ceiling {
                let probe = duration.min(Duration::from_secs(2));
                let dir = root.clone();
                let bytes = payload.len() + 16;
                let fsync_p50_ms =
                    tokio::task::spawn_blocking(move || fsync_floor(&dir, n, bytes, probe))
                        .await??;
                let rpc = rpc_floor(&leader, &writers, probe).await?;
                let floors = Floors { fsync_p50_ms, rpc };
                eprintln!("{n} replica(s): {floors:?}");
                cells.extend(ceiling_rows(n, &batches, &floors));
            }
            for &b in &batches {
                for &w in &writers {
                    let clients: Vec<LogClient<tonic::transport::Channel>> =
                        connections(&leader, tls_ca, w.min(CONNECTIONS_MAX))
                            .await?
                            .into_iter()
                            .map(|channel| {
                                LogClient::new(channel)
                                    .max_decoding_message_size(64 << 20)
                                    .max_encoding_message_size(64 << 20)
                            })
                            .collect();
                    let clients = Arc::new(clients);
                    let payload = payload.clone();
                    let r = drive(duration, w, b, move |wi, _seq| {
                        let mut c = clients[wi % clients.len()].clone();
                        let events = vec![payload.as_ref().clone(); b];
                        async move {
                            c.append(rpb::AppendRequest { events })
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    })
                    .await;
                    let c = cell(system, n, b, w, r);
                    eprintln!("{c:?}");
                    cells.push(c);
                }
            }
            let applied = nodes[0].last_applied();
            for node in &nodes {
                node.shutdown().await;
            }
            eprintln!("{system} {n} replica(s): {applied} events in the log");
            if tls_ca.is_some() {
                continue;
            }
            if let Some(bin) = &etcd_bin {
                let etcd = etcd_cluster(bin, &root, n)?;
                let mut client = None;
                for _ in 0..100 {
                    if let Ok(c) = KvClient::connect(format!("http://{}", etcd.endpoint)).await {
                        let mut c = c
                            .max_decoding_message_size(64 << 20)
                            .max_encoding_message_size(64 << 20);
                        let ready = c
                            .put(epb::PutRequest {
                                key: b"bench/ready".to_vec(),
                                value: b"1".to_vec(),
                                ..Default::default()
                            })
                            .await;
                        if ready.is_ok() {
                            client = Some(c);
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let client = client.context("etcd did not become ready in 20 s")?;
                for &b in &batches {
                    for &w in &writers {
                        let client = client.clone();
                        let payload = payload.clone();
                        let r = drive(duration, w, b, move |wi, seq| {
                            let mut c = client.clone();
                            let payload = payload.clone();
                            async move {
                                let put = |key: String| epb::PutRequest {
                                    key: key.into_bytes(),
                                    value: payload.as_ref().clone(),
                                    ..Default::default()
                                };
                                if b == 1 {
                                    c.put(put(format!("bench/{wi}/{seq}")))
                                        .await
                                        .map(|_| ())
                                        .map_err(|e| e.to_string())
                                } else {
                                    let success = (0..b)
                                        .map(|k| epb::RequestOp {
                                            request: Some(epb::request_op::Request::RequestPut(
                                                put(format!("bench/{wi}/{seq}/{k}")),
                                            )),
                                        })
                                        .collect();
                                    c.txn(epb::TxnRequest {
                                        compare: vec![],
                                        success,
                                        failure: vec![],
                                    })
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| e.to_string())
                                }
                            }
                        })
                        .await;
                        let c = cell("etcd", n, b, w, r);
                        eprintln!("{c:?}");
                        cells.push(c);
                    }
                }
                drop(etcd);
            }
        }
        anyhow::Ok(())
    })?;
    if json {
        let rows: Vec<serde_json::Value> = cells
            .iter()
            .map(|c| {
                serde_json::json!({
                    "system": c.system, "replicas": c.replicas, "batch": c.batch, "writers": c.writers,
                    "events_per_s": c.events_per_s, "p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "errors": c.errors,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&cells);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floors() -> Floors {
        Floors {
            fsync_p50_ms: 0.3,
            rpc: BTreeMap::from([(1, (5_000.0, 0.2)), (64, (20_000.0, 3.0))]),
        }
    }

    fn row(rows: &[Cell], batch: usize, writers: usize) -> (f64, f64) {
        let c = rows
            .iter()
            .find(|c| c.batch == batch && c.writers == writers)
            .expect("a row for every batch and writer count");
        assert_eq!(c.system, "ceiling");
        assert!(c.p99_ms.is_nan(), "a ceiling has no p99");
        (c.events_per_s, c.p50_ms)
    }

    #[test]
    fn one_writer_is_bound_by_a_round_trip_and_an_fsync() {
        let one = ceiling_rows(1, &[1, 64], &floors());
        assert_eq!(one.len(), 4);
        let (rate, p50) = row(&one, 1, 1);
        assert!((p50 - 0.5).abs() < 1e-9, "{p50}");
        assert!((rate - 2_000.0).abs() < 1e-6, "{rate}");
        let (rate, _) = row(&one, 64, 1);
        assert!((rate - 128_000.0).abs() < 1e-6, "{rate}");
        // With replicas, a round trip between them comes on top.
        let three = ceiling_rows(3, &[1], &floors());
        let (rate, p50) = row(&three, 1, 1);
        assert!((p50 - 0.7).abs() < 1e-9, "{p50}");
        assert!((rate - 1_000.0 / 0.7).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn many_writers_are_bound_by_empty_round_trips() {
        let rows = ceiling_rows(3, &[1, 64], &floors());
        assert_eq!(row(&rows, 1, 64), (20_000.0, 3.0));
        assert_eq!(row(&rows, 64, 64), (1_280_000.0, 3.0));
    }

    #[test]
    fn the_fsync_probe_measures_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p50 = fsync_floor(dir.path(), 2, 272, Duration::from_millis(50)).expect("probe");
        assert!(p50 > 0.0 && p50 < 1_000.0, "{p50} ms");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
        assert!(left.is_empty(), "the probe left files behind: {left:?}");
    }
}
