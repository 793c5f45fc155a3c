//! A framework client for tests: subscribes through whichever master
//! leads and speaks the scheduler API. Shared by the gateway's in-process
//! tests and the agent's process tests (`#[path]`-included).

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orrery_events::pb::{self, TaskState};
use orrery_gateway::client::{with_leader, Transport};
use orrery_proto::operator as op;
use orrery_proto::scheduler::{self as sp, scheduler_client::SchedulerClient};
use tokio::sync::mpsc;
use tonic::Status;

pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- a framework client -------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct FrameworkIds {
    pub framework_id: String,
    pub stream_id: String,
    pub subscriptions: u64,
}

/// A scheduler: subscribes through whichever master leads, forwards every
/// event to `events`, and (with `failover`) resubscribes with its id when
/// the stream breaks.
pub struct Framework {
    pub transport: Transport,
    pub masters: Vec<String>,
    pub info: sp::FrameworkInfo,
    pub ids: Arc<Mutex<FrameworkIds>>,
    pub events: mpsc::UnboundedReceiver<sp::Event>,
    /// Updates received while `next` waited for something else, for a
    /// later `next` (offers and heartbeats are not kept: stale).
    stash: std::collections::VecDeque<sp::event::Event>,
    stop: Arc<AtomicBool>,
}

impl Drop for Framework {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn framework_info(
    name: &str,
    role: &str,
    capabilities: &[pb::FrameworkCapability],
) -> sp::FrameworkInfo {
    sp::FrameworkInfo {
        framework_id: String::new(),
        name: name.into(),
        role: role.into(),
        capabilities: capabilities.iter().map(|c| *c as i32).collect(),
        checkpoint: true,
        failover_timeout_ms: 60_000,
        principal: String::new(),
    }
}

pub async fn subscribe_once(
    transport: &Transport,
    masters: &[String],
    info: &sp::FrameworkInfo,
) -> Result<(tonic::Streaming<sp::Event>, sp::Subscribed), Status> {
    let (mut stream, _) = with_leader(transport, masters, PATIENCE, |ch| {
        let req = sp::SubscribeRequest {
            framework: Some(info.clone()),
        };
        async move {
            SchedulerClient::new(ch)
                .subscribe(req)
                .await
                .map(|r| r.into_inner())
        }
    })
    .await?;
    match stream.message().await? {
        Some(sp::Event {
            event: Some(sp::event::Event::Subscribed(s)),
        }) => Ok((stream, s)),
        other => Err(Status::internal(format!(
            "expected Subscribed first, got {other:?}"
        ))),
    }
}

impl Framework {
    pub async fn subscribe(
        masters: Vec<String>,
        info: sp::FrameworkInfo,
        failover: bool,
    ) -> Framework {
        Self::subscribe_via(Transport::Plain, masters, info, failover).await
    }

    /// As [`Framework::subscribe`], over `transport` (its certificate).
    pub async fn subscribe_via(
        transport: Transport,
        masters: Vec<String>,
        info: sp::FrameworkInfo,
        failover: bool,
    ) -> Framework {
        let (stream, subscribed) = subscribe_once(&transport, &masters, &info)
            .await
            .expect("subscribed");
        let ids = Arc::new(Mutex::new(FrameworkIds {
            framework_id: subscribed.framework_id.clone(),
            stream_id: subscribed.stream_id.clone(),
            subscriptions: 1,
        }));
        let (tx, events) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut info = info;
        info.framework_id = subscribed.framework_id.clone();
        tokio::spawn(reader(
            (transport.clone(), masters.clone()),
            info.clone(),
            stream,
            ids.clone(),
            tx,
            failover,
            stop.clone(),
        ));
        Framework {
            transport,
            masters,
            info,
            ids,
            events,
            stash: std::collections::VecDeque::new(),
            stop,
        }
    }

    pub fn id(&self) -> String {
        self.ids.lock().unwrap().framework_id.clone()
    }

    pub async fn call(&self, call: sp::call::Call) -> Result<u64, Status> {
        let ids = self.ids.lock().unwrap().clone();
        self.call_as(&ids.stream_id, call).await
    }

    /// A call with a given stream id (to play a stale instance).
    pub async fn call_as(&self, stream_id: &str, call: sp::call::Call) -> Result<u64, Status> {
        let framework_id = self.id();
        let stream_id = stream_id.to_owned();
        with_leader(&self.transport, &self.masters, PATIENCE, |ch| {
            let c = sp::Call {
                framework_id: framework_id.clone(),
                stream_id: stream_id.clone(),
                call: Some(call.clone()),
            };
            async move {
                SchedulerClient::new(ch)
                    .call(c)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map(|(r, _)| r.committed_index)
    }

    /// The next event `pick` accepts (others are dropped), within `limit`.
    pub async fn next<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut pick: impl FnMut(sp::event::Event) -> Option<T>,
    ) -> T {
        let mut kept = std::collections::VecDeque::new();
        while let Some(ev) = self.stash.pop_front() {
            if let Some(v) = pick(ev.clone()) {
                kept.extend(self.stash.drain(..));
                self.stash = kept;
                return v;
            }
            kept.push_back(ev);
        }
        self.stash = kept;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
                .unwrap_or_else(|| panic!("the event stream ended while waiting for {what}"));
            let Some(ev) = ev.event else {
                continue;
            };
            if let Some(v) = pick(ev.clone()) {
                return v;
            }
            if matches!(ev, sp::event::Event::Update(_)) {
                self.stash.push_back(ev);
            }
        }
    }

    pub async fn offers(&mut self, limit: Duration) -> Vec<sp::Offer> {
        self.next("offers", limit, |e| match e {
            sp::event::Event::Offers(o) => Some(o.offers),
            _ => None,
        })
        .await
    }
}

async fn reader(
    (transport, masters): (Transport, Vec<String>),
    info: sp::FrameworkInfo,
    mut stream: tonic::Streaming<sp::Event>,
    ids: Arc<Mutex<FrameworkIds>>,
    tx: mpsc::UnboundedSender<sp::Event>,
    failover: bool,
    stop: Arc<AtomicBool>,
) {
    loop {
        while let Ok(Some(ev)) = stream.message().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
        if !failover || stop.load(Ordering::SeqCst) {
            return;
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match subscribe_once(&transport, &masters, &info).await {
                Ok((s, subscribed)) => {
                    let mut ids = ids.lock().unwrap();
                    ids.stream_id = subscribed.stream_id;
                    ids.subscriptions += 1;
                    stream = s;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

pub fn launch(
    offer: &sp::Offer,
    task_id: &str,
    cpus_milli: u64,
    refuse_seconds: Option<f64>,
) -> sp::call::Call {
    sp::call::Call::Accept(sp::Accept {
        offer_ids: vec![offer.offer_id.clone()],
        launches: vec![sp::TaskInfo {
            task_id: task_id.into(),
            name: task_id.into(),
            resources: Some(pb::Resources {
                cpus_milli,
                mem_mb: 16,
                disk_mb: 0,
                ports: vec![],
                ..Default::default()
            }),
            command: Some(pb::CommandInfo {
                shell: "sleep 1000".into(),
                argv: vec![],
                environment: vec![],
            }),
        }],
        filters: Some(sp::Filters { refuse_seconds }),
    })
}

pub fn task_state(state: &op::State, framework_id: &str, task_id: &str) -> Option<TaskState> {
    state
        .tasks
        .iter()
        .find(|t| t.framework_id == framework_id && t.task_id == task_id)
        .and_then(|t| TaskState::try_from(t.state).ok())
}
