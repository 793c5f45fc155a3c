//! The `tikv` backend: the event log kept in a TiKV cluster, for clusters
//! whose masters should not hold the log on their own disks.
//!
//! Selected with `--store tikv://PD1:2379,PD2:2379/PREFIX`. It talks to TiKV
//! through **tikv-client** (the TiKV project's own Rust client: region
//! routing, PD discovery and retries are its job, not ours), using the raw
//! KV API in atomic mode, whose compare-and-swap is linearizable per key.
//! TiKV replicates and fsyncs each write with its own Raft before it answers,
//! so an acknowledged write here is as durable as a raft-backend commit.
//!
//! # Keys (below `PREFIX/`)
//! - `L` + index (u64, big-endian): one committed event, an
//!   [`Entry`](orrery_proto::tikvlog::Entry) `{term, payload}`. Big-endian
//!   keys sort in index order, so a scan reads the log in order.
//! - `T`: the [`Tail`](orrery_proto::tikvlog::Tail) `{term, last_index}`:
//!   the commit point. Events above it are not committed.
//! - `E`: the [`Lease`](orrery_proto::tikvlog::Lease) `{holder, term,
//!   expires}`.
//! - `S`: the latest [`SnapshotMeta`](orrery_proto::tikvlog::SnapshotMeta);
//!   `C` + last index (u64 BE) + chunk (u32 BE): its bytes, in chunks.
//!
//! # Why two masters can never both extend the log (fencing)
//! - Leadership is the lease key, taken and renewed by compare-and-swap;
//!   each taking bumps the lease term.
//! - A new leader first moves the tail to its own term with a CAS, at the
//!   same last index. From then on an older leader's tail CAS (which
//!   expects the tail it last wrote) fails: it can never commit again, even
//!   if its clock is wrong and it still thinks it holds the lease.
//! - An append writes each new index only if it is free, or holds a stale
//!   uncommitted event of an older or its own term (CAS with the old bytes);
//!   an event of a newer term there means a newer leader: step down.
//! - Then it commits the whole batch with one CAS of the tail from
//!   `(term, M)` to `(term, M + n)`: a batch commits entirely or not at all.
//!
//! The raft backend gives the same guarantees by Raft's rules; nothing here
//! would be accepted there and not here (no index reuse, no skipped
//! checks, no "TiKV is durable so skip the CAS").
//!
//! # Leases and stepping down
//! The holder renews every `lease_ttl / 3`. It writes its wall-clock expiry
//! (`now + ttl`), and steps down itself once `ttl - ttl / 3` has passed on
//! its monotonic clock since the last renewal it sent that succeeded: with
//! clocks skewed by less than `ttl / 3`, it has stepped down before anyone
//! else may take the lease over. (The tail CAS keeps the log safe even if
//! clocks are worse than that.)
//!
//! # Followers
//! Replicas that do not lead poll the tail every `poll` and apply what is
//! new, so their state and subscriptions follow the leader's.
//!
//! # Snapshots and purge
//! `snapshot_now` writes the state machine's snapshot as chunks, then moves
//! `S` forward by CAS, then deletes the previous snapshot's chunks and every
//! event the new one covers. A replica that finds its next event purged
//! restores the snapshot first.
//!
//! # Failure
//! Every TiKV call has a deadline (`request_timeout`). A failed call fails
//! the append with `Unavailable` (it may still have committed: the next
//! append re-reads the tail first), and [`TikvLog::health`] says why until
//! a call succeeds again.

pub mod double;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orrery_proto::tikvlog::{Entry, Lease, SnapshotMeta, Tail};
use prost::Message;
use tokio::sync::watch;

use crate::api::{
    check_batch, AppendError, AppendedRange, EventLog, Fatal, LeaderInfo, LoggedEvent, ReadError,
    StateAccess, StateMachine,
};
use crate::subscription::{EventSource, Subscription};

/// How a master reaches its TiKV log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TikvConfig {
    /// PD endpoints, `host:port`.
    pub pd_endpoints: Vec<String>,
    /// Every key of this log starts with `prefix` + `/`.
    pub prefix: String,
    /// This replica's id (the master's `--id`).
    pub node_id: u64,
    /// The address clients should be sent to while this replica leads.
    pub addr: String,
    pub lease_ttl: Duration,
    /// How often a follower looks for new events.
    pub poll: Duration,
    /// The deadline of each TiKV call.
    pub request_timeout: Duration,
    /// Snapshot chunk size (TiKV's raw values should stay well under 8 MiB).
    pub chunk_bytes: usize,
    /// The leader takes a snapshot (and purges what it covers) once this
    /// many events were applied after the last one; 0 for never.
    pub snapshot_every: u64,
}

impl TikvConfig {
    /// Parses `tikv://PD1:2379,PD2:2379/PREFIX`.
    pub fn from_url(url: &str, node_id: u64, addr: String) -> Result<Self, String> {
        let rest = url.strip_prefix("tikv://").ok_or_else(|| {
            format!("{url:?} is not a TiKV store URL: expected tikv://PD1:2379,PD2:2379/PREFIX")
        })?;
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| {
            format!("{url:?} has no key prefix: expected tikv://PD1:2379,PD2:2379/PREFIX")
        })?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!(
                "{url:?} has an empty key prefix: name one, like tikv://pd:2379/orrery/prod"
            ));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(*c)))
        {
            return Err(format!(
                "{url:?}: the key prefix may hold letters, digits and - _ . / only, not {c:?}"
            ));
        }
        let mut pd_endpoints = Vec::new();
        for h in hosts.split(',') {
            let Some((host, port)) = h.rsplit_once(':') else {
                return Err(format!("{url:?}: PD endpoint {h:?} is not HOST:PORT"));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("{url:?}: PD endpoint {h:?} is not HOST:PORT"));
            }
            pd_endpoints.push(h.to_owned());
        }
        Ok(Self {
            pd_endpoints,
            prefix: prefix.to_owned(),
            node_id,
            addr,
            lease_ttl: Duration::from_secs(6),
            poll: Duration::from_millis(100),
            request_timeout: Duration::from_secs(3),
            chunk_bytes: 1 << 20,
            snapshot_every: 10_000,
        })
    }

    fn key(&self, tag: u8, suffix: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 2 + suffix.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.push(b'/');
        k.push(tag);
        k.extend_from_slice(suffix);
        k
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        self.key(b'L', &index.to_be_bytes())
    }

    fn chunk_key(&self, last_index: u64, chunk: u32) -> Vec<u8> {
        let mut s = last_index.to_be_bytes().to_vec();
        s.extend_from_slice(&chunk.to_be_bytes());
        self.key(b'C', &s)
    }
}

/// Keys per batch read.
const READ_BATCH: u64 = 256;

/// Event writes of one append in flight at once: enough to hide a real
/// TiKV's round trips, bounded so a 20,000-event batch does not open
/// 20,000 calls at once. (On the in-process test double, where the client's
/// CPU is the cost, one at a time is faster: 17 ms for 64 events against
/// about 50 ms; that says nothing about a TiKV across a network, which is
/// not measured yet.)
const CLAIMS_IN_FLIGHT: usize = 16;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(what: &'static str, location: String, e: impl std::fmt::Display) -> Fatal {
    Fatal::Corrupt {
        what,
        location,
        detail: e.to_string(),
    }
}

/// Why a step failed.
enum Step {
    /// TiKV did not answer (or answered with an error).
    Unavailable(String),
    /// A newer leader fenced this one.
    Fenced(String),
    Fatal(Fatal),
}

impl From<Fatal> for Step {
    fn from(f: Fatal) -> Self {
        Step::Fatal(f)
    }
}

#[derive(Debug, Default)]
struct Role {
    leader: LeaderInfo,
    /// The tail as last read or written, with its exact bytes (for CAS).
    tail: Option<(Tail, Vec<u8>)>,
    /// Our lease record while we hold it.
    lease: Option<Vec<u8>>,
    /// Past this, this replica no longer leads.
    valid_until: Option<Instant>,
    /// An append failed part-way: re-read the tail before the next one.
    dirty: bool,
    last_lease_step: Option<Instant>,
}

/// Events applied here after the latest snapshot (reads and
/// subscriptions are served from it).
#[derive(Debug, Default)]
struct Cache {
    events: VecDeque<LoggedEvent>,
    /// The index the first cached event has (the snapshot's + 1).
    first: u64,
    /// The term of the last event the snapshot covers.
    snapshot_term: u64,
}

struct Inner<S> {
    cfg: TikvConfig,
    /// Atomic mode: every write that may race (events, tail, lease, meta)
    /// goes through compare-and-swap or an atomic put.
    client: tikv_client::RawClient,
    /// Plain mode, for range deletes only (atomic mode refuses them). Only
    /// keys no writer touches again are range-deleted: events at or below
    /// a snapshot, and the chunks of a replaced or lost snapshot.
    plain: tikv_client::RawClient,
    machine: Mutex<S>,
    cache: Mutex<Cache>,
    applied: watch::Sender<u64>,
    role: Mutex<Role>,
    append_lock: tokio::sync::Mutex<()>,
    snapshot_lock: tokio::sync::Mutex<()>,
    health: Mutex<Option<String>>,
    fatal: Mutex<Option<Fatal>>,
    /// The latest snapshot this replica wrote or restored: (last index,
    /// bytes), for readers of compacted history.
    latest: Mutex<Option<(u64, Vec<u8>)>>,
    closed: AtomicBool,
}

/// The TiKV-backed event log (one replica's handle; clones share it).
pub struct TikvLog<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for TikvLog<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for TikvLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TikvLog")
            .field("prefix", &self.inner.cfg.prefix)
            .field("node_id", &self.inner.cfg.node_id)
            .field("applied", &*self.inner.applied.borrow())
            .finish()
    }
}

impl<S: StateMachine> StateAccess<S> for TikvLog<S> {
    fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.inner.machine))
    }
}

impl<S: StateMachine> TikvLog<S> {
    /// Connects, restores the latest snapshot and applies the committed
    /// events after it, then starts following (and contending for the
    /// lease) in the background.
    pub async fn open(cfg: TikvConfig, machine: S) -> Result<Self, Fatal> {
        let pd = cfg.pd_endpoints.join(",");
        let unreachable = move |e: String| Fatal::Io {
            what: format!("TiKV (PD {pd})"),
            detail: e,
        };
        let config = tikv_client::Config::default().with_timeout(cfg.request_timeout);
        let connect = tikv_client::RawClient::new_with_config(cfg.pd_endpoints.clone(), config);
        let plain = tokio::time::timeout(cfg.request_timeout * 2, connect)
            .await
            .map_err(|_| unreachable("no answer from PD in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let client = plain.with_atomic_for_cas();
        let (applied, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            cfg,
            client,
            plain,
            machine: Mutex::new(machine),
            cache: Mutex::new(Cache {
                first: 1,
                ..Cache::default()
            }),
            applied,
            role: Mutex::new(Role::default()),
            append_lock: tokio::sync::Mutex::new(()),
            snapshot_lock: tokio::sync::Mutex::new(()),
            health: Mutex::new(None),
            fatal: Mutex::new(None),
            latest: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        match inner.catch_up().await {
            Ok(()) => {}
            Err(Step::Fatal(f)) => return Err(f),
            Err(Step::Unavailable(e)) | Err(Step::Fenced(e)) => return Err(unreachable(e)),
        }
        tokio::spawn(background(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Why the last TiKV call failed, until one succeeds again; or the
    /// fatal error that stopped this replica.
    pub fn health(&self) -> Option<String> {
        if let Some(f) = lock(&self.inner.fatal).as_ref() {
            return Some(format!("stopped: {f}"));
        }
        lock(&self.inner.health).clone()
    }

    /// The fatal error that stopped this replica, if any.
    pub fn fatal(&self) -> Option<Fatal> {
        lock(&self.inner.fatal).clone()
    }

    /// Waits until this replica leads and serves (tests and tools).
    pub async fn wait_leader(&self, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        loop {
            let l = self.leader();
            if l.is_leader && l.ready {
                return Ok(l.term);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not the leader after {within:?}: leader {:?} at term {}; {}",
                    l.leader_id,
                    l.term,
                    self.health().unwrap_or_else(|| "TiKV answers".into())
                ));
            }
            tokio::time::sleep(self.inner.cfg.poll.min(Duration::from_millis(50))).await;
        }
    }

    /// Stops the background task and steps down; the lease lapses by
    /// itself (a crash looks the same to the others).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.step_down("closed");
    }

    /// A clean shutdown: steps down and hands the lease back at once (an
    /// expired lease of the same term), so another replica takes over
    /// without waiting out the TTL.
    pub async fn shutdown(&self) {
        let _appends = self.inner.append_lock.lock().await;
        let held = {
            let role = lock(&self.inner.role);
            role.lease.clone().map(|l| (l, role.leader.term))
        };
        self.close();
        let Some((lease, term)) = held else {
            return;
        };
        let released = Lease {
            holder_id: self.inner.cfg.node_id,
            holder_addr: self.inner.cfg.addr.clone(),
            term,
            expires_unix_ms: 0,
        }
        .encode_to_vec();
        let key = self.inner.cfg.key(b'E', &[]);
        match self
            .inner
            .cas(key, Some(lease), released, "release of the lease")
            .await
        {
            Ok((_, true)) => tracing::info!(term, "handed the TiKV log's lease back"),
            Ok((_, false)) => {}
            Err(_) => tracing::warn!("could not hand the lease back; it lapses by itself"),
        }
    }

    /// The latest snapshot this replica wrote or restored: (the last event
    /// it includes, the state machine's bytes).
    pub fn latest_snapshot(&self) -> Option<(u64, Vec<u8>)> {
        lock(&self.inner.latest).clone()
    }

    /// The configuration this log was opened with.
    pub fn config(&self) -> &TikvConfig {
        &self.inner.cfg
    }
}

/// Follows the log and keeps (or contends for) the lease, until every
/// handle is dropped or the log is closed.
async fn background<S: StateMachine>(weak: Weak<Inner<S>>) {
    loop {
        let poll = match weak.upgrade() {
            Some(inner) => {
                if inner.closed.load(Ordering::SeqCst) || lock(&inner.fatal).is_some() {
                    return;
                }
                inner.tick().await;
                inner.cfg.poll
            }
            None => return,
        };
        tokio::time::sleep(poll).await;
    }
}

impl<S: StateMachine> Inner<S> {
    /// One TiKV call under the deadline; failures are recorded for health.
    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, tikv_client::Error>>,
    ) -> Result<T, Step> {
        let out = match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("TiKV {what} failed: {e}")),
            Err(_) => Err(format!(
                "TiKV {what} got no answer within {:?}",
                self.cfg.request_timeout
            )),
        };
        match out {
            Ok(v) => {
                *lock(&self.health) = None;
                Ok(v)
            }
            Err(e) => {
                *lock(&self.health) = Some(e.clone());
                Err(Step::Unavailable(e))
            }
        }
    }

    fn stop(&self, f: Fatal) -> Step {
        tracing::error!(error = %f, "the TiKV log stopped this replica");
        *lock(&self.fatal) = Some(f.clone());
        self.step_down("stopped by a fatal error");
        Step::Fatal(f)
    }

    fn step_down(&self, why: &str) {
        let mut role = lock(&self.role);
        if role.leader.is_leader {
            tracing::warn!(
                term = role.leader.term,
                why,
                "stepping down as the TiKV log's leader"
            );
        }
        role.leader.is_leader = false;
        role.leader.ready = false;
        role.lease = None;
        role.valid_until = None;
        role.dirty = true;
    }

    async fn tick(&self) {
        let (leading, lease_due) = {
            let mut role = lock(&self.role);
            let now = Instant::now();
            if role.leader.is_leader && role.valid_until.is_some_and(|v| now >= v) {
                drop(role);
                self.step_down("the lease was not renewed in time");
                role = lock(&self.role);
            }
            let due = role
                .last_lease_step
                .is_none_or(|t| now >= t + self.cfg.lease_ttl / 3);
            if due {
                role.last_lease_step = Some(now);
            }
            (role.leader.is_leader, due)
        };
        if lease_due {
            let r = if leading {
                self.renew().await
            } else {
                self.try_acquire().await
            };
            if let Err(Step::Fatal(f)) = r {
                self.stop(f);
                return;
            }
        }
        let since = {
            let cache = lock(&self.cache);
            (*self.applied.borrow() + 1).saturating_sub(cache.first)
        };
        let snapshot_due = self.cfg.snapshot_every > 0 && since >= self.cfg.snapshot_every;
        if !lock(&self.role).leader.is_leader {
            let mut r = self.catch_up().await;
            // Twice the interval: the leader's snapshot is due at one.
            if r.is_ok() && snapshot_due && since >= 2 * self.cfg.snapshot_every {
                r = self.follow_snapshot().await;
            }
            if let Err(Step::Fatal(f)) = r {
                self.stop(f);
            }
        } else if snapshot_due {
            {
                match self.snapshot().await {
                    Ok(i) => tracing::info!(last_index = i, "took a snapshot of the TiKV log"),
                    Err(Step::Fatal(f)) => {
                        self.stop(f);
                    }
                    Err(Step::Unavailable(e)) | Err(Step::Fenced(e)) => {
                        tracing::warn!(error = %e, "the TiKV log's snapshot failed; retrying later")
                    }
                }
            }
        }
    }

    async fn get(&self, key: Vec<u8>, what: &str) -> Result<Option<Vec<u8>>, Step> {
        self.call(what, self.client.get(key)).await
    }

    async fn cas(
        &self,
        key: Vec<u8>,
        prev: Option<Vec<u8>>,
        new: Vec<u8>,
        what: &str,
    ) -> Result<(Option<Vec<u8>>, bool), Step> {
        self.call(what, self.client.compare_and_swap(key, prev, new))
            .await
    }

    async fn read_tail(&self) -> Result<Option<(Tail, Vec<u8>)>, Step> {
        let key = self.cfg.key(b'T', &[]);
        match self.get(key, "read of the tail").await? {
            None => Ok(None),
            Some(bytes) => {
                let t = Tail::decode(bytes.as_slice())
                    .map_err(|e| corrupt("tail record", format!("{}/T", self.cfg.prefix), e))?;
                Ok(Some((t, bytes)))
            }
        }
    }

    fn decode_lease(&self, bytes: &[u8]) -> Result<Lease, Fatal> {
        Lease::decode(bytes)
            .map_err(|e| corrupt("lease record", format!("{}/E", self.cfg.prefix), e))
    }

    /// Takes the lease if it is free, expired, or our own from before a
    /// restart; then fences the tail and catches up before serving.
    async fn try_acquire(&self) -> Result<(), Step> {
        let key = self.cfg.key(b'E', &[]);
        let current = self.get(key.clone(), "read of the lease").await?;
        let held = current
            .as_deref()
            .map(|b| self.decode_lease(b))
            .transpose()?;
        let now = wall_ms();
        if let Some(l) = &held {
            let mine = l.holder_id == self.cfg.node_id;
            if !mine && now <= l.expires_unix_ms {
                let mut role = lock(&self.role);
                role.leader.term = l.term;
                role.leader.leader_id = Some(l.holder_id);
                role.leader.leader_addr = Some(l.holder_addr.clone());
                return Ok(());
            }
        }
        let tail = self.read_tail().await?;
        let term = held
            .as_ref()
            .map_or(0, |l| l.term)
            .max(tail.as_ref().map_or(0, |t| t.0.term))
            + 1;
        let lease = Lease {
            holder_id: self.cfg.node_id,
            holder_addr: self.cfg.addr.clone(),
            term,
            expires_unix_ms: now + self.cfg.lease_ttl.as_millis() as u64,
        }
        .encode_to_vec();
        let sent = Instant::now();
        let (_, ok) = self
            .cas(key, current, lease.clone(), "take of the lease")
            .await?;
        if !ok {
            return Ok(());
        }
        // Fence: move the tail to our term. Any older leader's commit now
        // fails.
        let mut tail = tail;
        let fenced = loop {
            let last_index = tail.as_ref().map_or(0, |t| t.0.last_index);
            if let Some((t, _)) = &tail {
                if t.term > term {
                    return Err(Step::Fenced(format!(
                        "the tail is at term {} > our lease term {term}",
                        t.term
                    )));
                }
            }
            let new = Tail { term, last_index };
            let bytes = new.encode_to_vec();
            let (_, ok) = self
                .cas(
                    self.cfg.key(b'T', &[]),
                    tail.as_ref().map(|t| t.1.clone()),
                    bytes.clone(),
                    "fence of the tail",
                )
                .await?;
            if ok {
                break (new, bytes);
            }
            tail = self.read_tail().await?;
        };
        {
            let mut role = lock(&self.role);
            role.tail = Some(fenced.clone());
            role.lease = Some(lease);
            role.valid_until = Some(sent + self.lease_valid_for());
            role.leader = LeaderInfo {
                term,
                leader_id: Some(self.cfg.node_id),
                leader_addr: Some(self.cfg.addr.clone()),
                is_leader: true,
                ready: false,
            };
            role.dirty = false;
        }
        self.apply_through(fenced.0.last_index).await?;
        let mut role = lock(&self.role);
        if role.leader.is_leader && role.leader.term == term {
            role.leader.ready = true;
            tracing::info!(
                term,
                last_index = fenced.0.last_index,
                "leading the TiKV log"
            );
        }
        Ok(())
    }

    fn lease_valid_for(&self) -> Duration {
        self.cfg.lease_ttl - self.cfg.lease_ttl / 3
    }

    async fn renew(&self) -> Result<(), Step> {
        let (prev, term) = {
            let role = lock(&self.role);
            match &role.lease {
                Some(l) => (l.clone(), role.leader.term),
                None => return Ok(()),
            }
        };
        let lease = Lease {
            holder_id: self.cfg.node_id,
            holder_addr: self.cfg.addr.clone(),
            term,
            expires_unix_ms: wall_ms() + self.cfg.lease_ttl.as_millis() as u64,
        }
        .encode_to_vec();
        let sent = Instant::now();
        let (_, ok) = self
            .cas(
                self.cfg.key(b'E', &[]),
                Some(prev),
                lease.clone(),
                "renewal of the lease",
            )
            .await?;
        if !ok {
            self.step_down("another replica took the lease");
            return Ok(());
        }
        let mut role = lock(&self.role);
        if role.leader.is_leader && role.leader.term == term {
            role.lease = Some(lease);
            role.valid_until = Some(sent + self.lease_valid_for());
        }
        Ok(())
    }

    /// Reads the tail and applies every committed event up to it.
    async fn catch_up(&self) -> Result<(), Step> {
        let Some((tail, bytes)) = self.read_tail().await? else {
            return Ok(());
        };
        let last = tail.last_index;
        {
            let mut role = lock(&self.role);
            if !role.leader.is_leader {
                role.tail = Some((tail, bytes));
            }
        }
        self.apply_through(last).await
    }

    /// Applies committed events from TiKV up to `last` (restoring the
    /// snapshot first if the next one was purged).
    async fn apply_through(&self, last: u64) -> Result<(), Step> {
        loop {
            let next = *self.applied.borrow() + 1;
            if next > last {
                return Ok(());
            }
            // Exact keys, not a range scan: tikv-client 0.4's raw scan
            // restarts from the first key when a range that ends in the
            // last region holds fewer keys than the limit.
            let upto = last.min(next + READ_BATCH - 1);
            let keys: Vec<Vec<u8>> = (next..=upto).map(|i| self.cfg.entry_key(i)).collect();
            let mut page = self
                .call("read of the log", self.client.batch_get(keys))
                .await?;
            page.sort_by(|a, b| a.key().cmp(b.key()));
            let first = page
                .first()
                .map(|kv| self.index_of(kv.key().clone().into()))
                .transpose()?;
            if first != Some(next) {
                // Purged behind a snapshot, or missing.
                if self.restore_snapshot(next).await? {
                    continue;
                }
                return Err(self.stop(corrupt(
                    "log",
                    format!("{}/L/{next}", self.cfg.prefix),
                    format!(
                        "committed event {next} (tail {last}) is missing and no snapshot covers it"
                    ),
                )));
            }
            let mut events = Vec::with_capacity(page.len());
            for kv in page {
                let index = self.index_of(kv.key().clone().into())?;
                if index != next + events.len() as u64 {
                    // A gap: apply what comes before it; the next round
                    // restores a snapshot over it, or stops saying which
                    // event is missing.
                    break;
                }
                let e = Entry::decode(kv.value().as_slice()).map_err(|e| {
                    corrupt("log entry", format!("{}/L/{index}", self.cfg.prefix), e)
                })?;
                events.push(LoggedEvent {
                    index,
                    term: e.term,
                    payload: e.payload,
                });
            }
            self.apply_events(events)?;
        }
    }

    fn index_of(&self, key: Vec<u8>) -> Result<u64, Fatal> {
        let base = self.cfg.key(b'L', &[]);
        key.strip_prefix(base.as_slice())
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| {
                corrupt(
                    "log key",
                    format!("{:?}", String::from_utf8_lossy(&key)),
                    "not PREFIX/L + an 8-byte index",
                )
            })
    }

    /// Applies events in order; ones already applied are skipped, a gap is
    /// fatal.
    fn apply_events(&self, events: Vec<LoggedEvent>) -> Result<(), Fatal> {
        let mut machine = lock(&self.machine);
        let mut cache = lock(&self.cache);
        let mut applied = *self.applied.borrow();
        for e in events {
            if e.index <= applied {
                continue;
            }
            if e.index != applied + 1 {
                return Err(corrupt(
                    "log",
                    format!("{}/L/{}", self.cfg.prefix, e.index),
                    format!("gap: expected event {}", applied + 1),
                ));
            }
            machine.apply(&e).map_err(|detail| Fatal::Apply {
                index: e.index,
                detail,
            })?;
            applied = e.index;
            cache.events.push_back(e);
        }
        drop(cache);
        drop(machine);
        self.applied.send_replace(applied);
        Ok(())
    }

    /// The latest snapshot in TiKV, if one covers `at_least`: its meta and
    /// its bytes (every chunk, checked against the meta).
    async fn read_snapshot(&self, at_least: u64) -> Result<Option<(SnapshotMeta, Vec<u8>)>, Step> {
        let Some(bytes) = self
            .get(self.cfg.key(b'S', &[]), "read of the snapshot meta")
            .await?
        else {
            return Ok(None);
        };
        let meta = SnapshotMeta::decode(bytes.as_slice())
            .map_err(|e| corrupt("snapshot meta", format!("{}/S", self.cfg.prefix), e))?;
        if meta.last_index < at_least {
            return Ok(None);
        }
        let mut page = Vec::new();
        let all: Vec<u32> = (0..meta.chunks).collect();
        for part in all.chunks(READ_BATCH as usize) {
            let keys: Vec<Vec<u8>> = part
                .iter()
                .map(|c| self.cfg.chunk_key(meta.last_index, *c))
                .collect();
            page.extend(
                self.call("read of the snapshot", self.client.batch_get(keys))
                    .await?,
            );
        }
        page.sort_by(|a, b| a.key().cmp(b.key()));
        let location = format!("{}/C/{}", self.cfg.prefix, meta.last_index);
        if page.len() != meta.chunks as usize {
            return Err(Step::Fatal(corrupt(
                "snapshot",
                location,
                format!("{} of {} chunks found", page.len(), meta.chunks),
            )));
        }
        let mut state = Vec::with_capacity(meta.bytes as usize);
        for kv in page {
            state.extend_from_slice(kv.value());
        }
        if state.len() as u64 != meta.bytes {
            return Err(Step::Fatal(corrupt(
                "snapshot",
                location,
                format!("{} bytes, the meta says {}", state.len(), meta.bytes),
            )));
        }
        Ok(Some((meta, state)))
    }

    /// Restores the latest snapshot if it covers `next`; false if none does.
    async fn restore_snapshot(&self, next: u64) -> Result<bool, Step> {
        let Some((meta, state)) = self.read_snapshot(next).await? else {
            return Ok(false);
        };
        {
            let mut machine = lock(&self.machine);
            machine.restore(&state).map_err(|detail| {
                corrupt(
                    "snapshot",
                    format!("{}/C/{}", self.cfg.prefix, meta.last_index),
                    detail,
                )
            })?;
            let mut cache = lock(&self.cache);
            cache.events.clear();
            cache.first = meta.last_index + 1;
            cache.snapshot_term = meta.last_term;
        }
        *lock(&self.latest) = Some((meta.last_index, state));
        self.applied.send_replace(meta.last_index);
        tracing::info!(
            last_index = meta.last_index,
            "restored the TiKV log's snapshot"
        );
        Ok(true)
    }

    /// A follower keeps what the leader keeps: once the leader's snapshot
    /// covers cached events, they go (the snapshot serves older reads).
    async fn follow_snapshot(&self) -> Result<(), Step> {
        let first = lock(&self.cache).first;
        let Some((meta, state)) = self.read_snapshot(first).await? else {
            return Ok(());
        };
        if meta.last_index > *self.applied.borrow() {
            // Not applied that far yet: catch_up restores it when it must.
            return Ok(());
        }
        let mut cache = lock(&self.cache);
        while cache
            .events
            .front()
            .is_some_and(|e| e.index <= meta.last_index)
        {
            cache.events.pop_front();
        }
        cache.first = meta.last_index + 1;
        cache.snapshot_term = meta.last_term;
        drop(cache);
        *lock(&self.latest) = Some((meta.last_index, state));
        Ok(())
    }

    async fn append_as_leader(&self, events: Vec<Vec<u8>>) -> Result<AppendedRange, Step> {
        let (term, dirty) = {
            let role = lock(&self.role);
            if !role.leader.is_leader || !role.leader.ready {
                return Err(Step::Fenced("not the leader".into()));
            }
            (role.leader.term, role.dirty)
        };
        if dirty {
            // A failed append may have committed: find out, and apply it.
            let tail = self.read_tail().await?;
            match &tail {
                Some((t, _)) if t.term == term => {}
                other => {
                    return Err(Step::Fenced(format!(
                        "the tail moved to term {} (ours: {term})",
                        other.as_ref().map_or(0, |t| t.0.term)
                    )))
                }
            }
            let last = tail.as_ref().map_or(0, |t| t.0.last_index);
            lock(&self.role).tail = tail;
            self.apply_through(last).await?;
            lock(&self.role).dirty = false;
        }
        let (tail, tail_bytes) = lock(&self.role)
            .tail
            .clone()
            .ok_or_else(|| Step::Fenced("no tail yet".into()))?;
        if tail.last_index != *self.applied.borrow() {
            return Err(Step::Unavailable(format!(
                "the tail is at {} but {} is applied here",
                tail.last_index,
                *self.applied.borrow()
            )));
        }
        let first = tail.last_index + 1;
        let n = events.len() as u64;
        // Claim each index: free, or a stale uncommitted event. A few in
        // flight at a time: TiKV's latency is hidden, and the client's
        // per-call work does not pile up on the cores.
        let mut writes = Vec::with_capacity(events.len());
        for (i, payload) in events.iter().enumerate() {
            let value = Entry {
                term,
                payload: payload.clone(),
            }
            .encode_to_vec();
            writes.push(self.claim(first + i as u64, term, value));
        }
        {
            use futures::stream::{StreamExt, TryStreamExt};
            futures::stream::iter(writes)
                .buffer_unordered(CLAIMS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
        }
        if lock(&self.role)
            .valid_until
            .is_none_or(|v| Instant::now() >= v)
        {
            return Err(Step::Fenced("the lease ran out during the append".into()));
        }
        // Commit the batch: one CAS of the tail.
        let new = Tail {
            term,
            last_index: tail.last_index + n,
        };
        let new_bytes = new.encode_to_vec();
        let (prev, ok) = self
            .cas(
                self.cfg.key(b'T', &[]),
                Some(tail_bytes),
                new_bytes.clone(),
                "commit of the tail",
            )
            .await?;
        if !ok {
            let seen = prev
                .as_deref()
                .map(Tail::decode)
                .transpose()
                .map_err(|e| corrupt("tail record", format!("{}/T", self.cfg.prefix), e))?;
            return Err(Step::Fenced(format!(
                "the tail is now {:?}: a newer leader took over",
                seen.map(|t| (t.term, t.last_index))
            )));
        }
        lock(&self.role).tail = Some((new, new_bytes));
        let logged = events
            .into_iter()
            .enumerate()
            .map(|(i, payload)| LoggedEvent {
                index: first + i as u64,
                term,
                payload,
            })
            .collect();
        self.apply_events(logged)?;
        Ok(first..=first + n - 1)
    }

    /// Writes `value` at `index` if the index is free or holds an
    /// uncommitted event of this term or an older one.
    async fn claim(&self, index: u64, term: u64, value: Vec<u8>) -> Result<(), Step> {
        let key = self.cfg.entry_key(index);
        let mut expect: Option<Vec<u8>> = None;
        for _ in 0..3 {
            let (prev, ok) = self
                .cas(
                    key.clone(),
                    expect.clone(),
                    value.clone(),
                    "write of an event",
                )
                .await?;
            if ok {
                return Ok(());
            }
            let Some(prev) = prev else {
                expect = None;
                continue;
            };
            let e = Entry::decode(prev.as_slice())
                .map_err(|e| corrupt("log entry", format!("{}/L/{index}", self.cfg.prefix), e))?;
            if e.term > term {
                return Err(Step::Fenced(format!(
                    "event {index} holds term {} > ours ({term})",
                    e.term
                )));
            }
            expect = Some(prev);
        }
        Err(Step::Unavailable(format!(
            "event {index} kept changing under the writer"
        )))
    }

    fn leader_error(&self) -> AppendError {
        let role = lock(&self.role);
        AppendError::NotLeader {
            leader_id: role.leader.leader_id.filter(|id| *id != self.cfg.node_id),
            leader_addr: role
                .leader
                .leader_addr
                .clone()
                .filter(|_| role.leader.leader_id != Some(self.cfg.node_id)),
        }
    }

    async fn snapshot(&self) -> Result<u64, Step> {
        let _g = self.snapshot_lock.lock().await;
        let (state, last_index, last_term) = {
            let machine = lock(&self.machine);
            let cache = lock(&self.cache);
            let last_index = *self.applied.borrow();
            let last_term = cache.events.back().map_or(cache.snapshot_term, |e| e.term);
            (machine.snapshot(), last_index, last_term)
        };
        let meta_key = self.cfg.key(b'S', &[]);
        let current = self
            .get(meta_key.clone(), "read of the snapshot meta")
            .await?;
        let old = current
            .as_deref()
            .map(SnapshotMeta::decode)
            .transpose()
            .map_err(|e| corrupt("snapshot meta", format!("{}/S", self.cfg.prefix), e))?;
        if old.as_ref().is_some_and(|m| m.last_index >= last_index) {
            return Ok(old.map_or(0, |m| m.last_index));
        }
        let chunks: Vec<&[u8]> = state.chunks(self.cfg.chunk_bytes.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            self.call(
                "write of a snapshot chunk",
                self.client
                    .put(self.cfg.chunk_key(last_index, i as u32), c.to_vec()),
            )
            .await?;
        }
        let meta = SnapshotMeta {
            last_index,
            last_term,
            chunks: chunks.len() as u32,
            bytes: state.len() as u64,
        };
        let (_, ok) = self
            .cas(
                meta_key,
                current,
                meta.encode_to_vec(),
                "move of the snapshot meta",
            )
            .await?;
        if !ok {
            // Another replica's snapshot won; ours is garbage.
            self.call(
                "delete of a lost snapshot",
                self.plain.delete_range(
                    self.cfg.chunk_key(last_index, 0)..self.cfg.chunk_key(last_index + 1, 0),
                ),
            )
            .await?;
            return Err(Step::Unavailable(
                "another replica moved the snapshot meta at the same time".into(),
            ));
        }
        // The old snapshot and every event the new one covers go.
        if let Some(old) = old {
            self.call(
                "delete of the old snapshot",
                self.plain.delete_range(
                    self.cfg.chunk_key(old.last_index, 0)
                        ..self.cfg.chunk_key(old.last_index + 1, 0),
                ),
            )
            .await?;
        }
        self.call(
            "purge of the log",
            self.plain
                .delete_range(self.cfg.entry_key(0)..self.cfg.entry_key(last_index + 1)),
        )
        .await?;
        let mut cache = lock(&self.cache);
        while cache.events.front().is_some_and(|e| e.index <= last_index) {
            cache.events.pop_front();
        }
        cache.first = last_index + 1;
        cache.snapshot_term = last_term;
        drop(cache);
        *lock(&self.latest) = Some((last_index, state));
        Ok(last_index)
    }
}

impl<S: StateMachine> EventSource for Inner<S> {
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        let cache = lock(&self.cache);
        if from < cache.first {
            return Err(ReadError::Compacted {
                first_available: cache.first,
            });
        }
        let skip = (from - cache.first) as usize;
        Ok(cache.events.iter().skip(skip).take(max).cloned().collect())
    }

    fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

impl<S: StateMachine> EventLog for TikvLog<S> {
    async fn append(&self, events: Vec<Vec<u8>>) -> Result<AppendedRange, AppendError> {
        check_batch(&events)?;
        if let Some(f) = self.fatal() {
            return Err(AppendError::Fatal(f));
        }
        let _g = self.inner.append_lock.lock().await;
        match self.inner.append_as_leader(events).await {
            Ok(range) => Ok(range),
            Err(Step::Unavailable(e)) => {
                lock(&self.inner.role).dirty = true;
                Err(AppendError::Unavailable(e))
            }
            Err(Step::Fenced(why)) => {
                if lock(&self.inner.role).leader.is_leader {
                    self.inner.step_down(&why);
                }
                Err(self.inner.leader_error())
            }
            Err(Step::Fatal(f)) => {
                self.inner.stop(f.clone());
                Err(AppendError::Fatal(f))
            }
        }
    }

    async fn read(&self, from: u64, to: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        if let Some(f) = self.fatal() {
            return Err(ReadError::Fatal(f));
        }
        let mut events = self.inner.read_from(from.max(1), max)?;
        events.retain(|e| e.index < to);
        Ok(events)
    }

    fn subscribe(&self, from: u64) -> Subscription {
        Subscription::new(self.inner.clone(), from)
    }

    fn last_applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    fn leader(&self) -> LeaderInfo {
        let role = lock(&self.inner.role);
        let mut info = role.leader.clone();
        // Past its validity the lease is not ours, even before the
        // background task (which may be waiting on TiKV) steps down.
        if info.is_leader && role.valid_until.is_none_or(|v| Instant::now() >= v) {
            info.is_leader = false;
            info.ready = false;
        }
        info
    }

    async fn snapshot_now(&self) -> Result<u64, Fatal> {
        match self.inner.snapshot().await {
            Ok(i) => Ok(i),
            Err(Step::Fatal(f)) => {
                self.inner.stop(f.clone());
                Err(f)
            }
            Err(Step::Unavailable(e)) | Err(Step::Fenced(e)) => Err(Fatal::Io {
                what: "the TiKV snapshot".into(),
                detail: e,
            }),
        }
    }

    async fn digest(&self) -> Vec<u8> {
        lock(&self.inner.machine).digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_say_what_is_wrong() {
        let c = TikvConfig::from_url("tikv://pd1:2379,pd2:2379/orrery/prod", 1, "m:1".into())
            .expect("valid");
        assert_eq!(c.pd_endpoints, vec!["pd1:2379", "pd2:2379"]);
        assert_eq!(c.prefix, "orrery/prod");
        for (bad, says) in [
            ("raft://x:1/p", "not a TiKV store URL"),
            ("tikv://pd:2379", "no key prefix"),
            ("tikv://pd:2379/", "empty key prefix"),
            ("tikv://pd/p", "not HOST:PORT"),
            ("tikv://pd:0/p", "not HOST:PORT"),
            ("tikv://pd:2379/p q", "not ' '"),
        ] {
            let e = TikvConfig::from_url(bad, 1, String::new()).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn entry_keys_sort_in_index_order() {
        let c = TikvConfig::from_url("tikv://pd:1/p", 1, String::new()).expect("valid");
        let mut keys: Vec<Vec<u8>> = [300u64, 2, 256, 1, 70_000]
            .iter()
            .map(|i| c.entry_key(*i))
            .collect();
        keys.sort();
        let back: Vec<u64> = keys
            .iter()
            .map(|k| u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes")))
            .collect();
        assert_eq!(back, vec![1, 2, 256, 300, 70_000]);
    }
}
