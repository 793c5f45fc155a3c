//! A master replica, wired: the log (raft, or TiKV), the `Master` actor,
//! the gRPC services (on the raft address, or their own listener with
//! TiKV), and the HTTP admin endpoints.
//!
//! `orrery master` runs one; the in-process tests run three. Must be
//! called inside an actix `System` (the actor starts on its arbiter).

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use orrery_actors::cluster_machine::ClusterMachine;
use orrery_actors::master::{Log, Master, Settings, Stop};
use orrery_storage::raft::{RaftConfig, RaftNode};
use orrery_storage::tikv::{TikvConfig, TikvLog};
use orrery_storage::Fatal;
use tokio::sync::oneshot;

use crate::auth::Security;

/// A running master replica.
#[derive(Debug)]
pub struct RunningMaster {
    pub node: Log,
    pub master: Addr<Master>,
    /// The gRPC (and raft) address.
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    http_stop: Option<oneshot::Sender<()>>,
    /// The gRPC server's own stop (TiKV store; with raft the log's server
    /// serves gRPC and stops with it).
    grpc_stop: Option<oneshot::Sender<()>>,
}

/// Starts a replica. `settings.addr` and `settings.http_addr` are filled in
/// from what was actually bound.
pub async fn start(
    mut config: RaftConfig,
    mut settings: Settings,
    http: Option<SocketAddr>,
    security: Option<Arc<Security>>,
) -> Result<RunningMaster, Fatal> {
    config.tls = security.as_ref().map(|s| s.tls.clone());
    warn_if_insecure(&security);
    let (http_listener, http_addr) = bind_http(http).await?;
    settings.http_addr = http_addr.map(|a| a.to_string()).unwrap_or_default();
    settings.addr = config
        .peers
        .get(&config.node_id)
        .cloned()
        .unwrap_or_else(|| config.listen.to_string());
    let ping_ms = crate::grpc::AgentPing::of(&settings);
    let node_id = settings.node_id;
    let admission = crate::admission::Admission::new(settings.max_pending_commands);
    let mut started: Option<Addr<Master>> = None;
    let node = RaftNode::start_with_services(config, ClusterMachine::default(), |node, routes| {
        let log = Log::from(node.clone());
        let master = actix::Actor::start(Master::new(settings, log.clone()));
        started = Some(master.clone());
        crate::grpc::routes(routes, master, log, ping_ms, security.clone(), admission)
    })
    .await;
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            if let Some(m) = started {
                m.do_send(Stop);
            }
            return Err(e);
        }
    };
    let master = started.ok_or_else(|| Fatal::Refused("the master actor did not start".into()))?;
    let addr = node.local_addr();
    let node = Log::from(node);
    crate::masters::spawn_settler(master.clone(), node.clone());
    let http_stop = serve_http(http_listener, &master, &node, &security, node_id)?;
    Ok(RunningMaster {
        addr,
        node,
        master,
        http_addr,
        http_stop,
        grpc_stop: None,
    })
}

/// Starts a replica whose log is kept in TiKV: the gRPC services get their
/// own listener (`listen`; no raft traffic between masters: they meet in
/// TiKV).
pub async fn start_tikv(
    mut config: TikvConfig,
    listen: SocketAddr,
    mut settings: Settings,
    http: Option<SocketAddr>,
    security: Option<Arc<Security>>,
) -> Result<RunningMaster, Fatal> {
    warn_if_insecure(&security);
    let (http_listener, http_addr) = bind_http(http).await?;
    let (grpc, addr) = bind("gRPC", listen).await?;
    settings.http_addr = http_addr.map(|a| a.to_string()).unwrap_or_default();
    settings.addr = addr.to_string();
    config.addr = addr.to_string();
    let ping_ms = crate::grpc::AgentPing::of(&settings);
    let node_id = settings.node_id;
    let node = Log::from(TikvLog::open(config, ClusterMachine::default()).await?);
    let admission = crate::admission::Admission::new(settings.max_pending_commands);
    let master = actix::Actor::start(Master::new(settings, node.clone()));
    let routes = crate::grpc::routes(
        tonic::service::Routes::default(),
        master.clone(),
        node.clone(),
        ping_ms,
        security.clone(),
        admission,
    );
    let (tx, rx) = oneshot::channel::<()>();
    orrery_storage::serve::spawn_routes(
        grpc,
        routes,
        rx,
        "gRPC",
        security.as_ref().map(|s| &*s.tls),
    )?;
    let http_stop = serve_http(http_listener, &master, &node, &security, node_id)?;
    Ok(RunningMaster {
        addr,
        node,
        master,
        http_addr,
        http_stop,
        grpc_stop: Some(tx),
    })
}

async fn bind_http(
    http: Option<SocketAddr>,
) -> Result<(Option<tokio::net::TcpListener>, Option<SocketAddr>), Fatal> {
    // The process's metrics recorder, before anything records.
    let _ = crate::metrics::handle();
    orrery_actors::telemetry::describe();
    let Some(a) = http else {
        return Ok((None, None));
    };
    let (listener, addr) = bind("HTTP", a).await?;
    Ok((Some(listener), Some(addr)))
}

/// Binds `addr`; errors name what was to listen there.
async fn bind(
    what: &str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), Fatal> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Io {
            what: format!("listening for {what} on {addr}"),
            detail: e.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|e| Fatal::Io {
        what: format!("the {what} socket"),
        detail: e.to_string(),
    })?;
    Ok((listener, bound))
}

/// An `--insecure` master says so at start-up, every time.
fn warn_if_insecure(security: &Option<Arc<Security>>) {
    if security.is_none() {
        tracing::warn!(
            "INSECURE: plain TCP and no authentication; anyone who reaches this master can run commands on every agent"
        );
    }
}

fn serve_http(
    listener: Option<tokio::net::TcpListener>,
    master: &Addr<Master>,
    log: &Log,
    security: &Option<Arc<Security>>,
    node_id: u64,
) -> Result<Option<oneshot::Sender<()>>, Fatal> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let (tx, rx) = oneshot::channel::<()>();
    let router = crate::http::router(
        crate::http::Admin {
            master: master.clone(),
            log: log.clone(),
            mesos: Default::default(),
            ui: Default::default(),
            node_id,
            tls: security.is_some(),
            security: security.clone(),
        },
        security.clone(),
    );
    let stop = async {
        let _ = rx.await;
    };
    match security {
        None => {
            tokio::spawn(orrery_actors::http_serve::serve(listener, router, stop));
        }
        Some(sec) => {
            let listener = crate::auth::TlsListener::new(listener, &sec.tls)?;
            tokio::spawn(orrery_actors::http_serve::serve(listener, router, stop));
        }
    }
    Ok(Some(tx))
}

impl RunningMaster {
    /// Stops the actor, the HTTP server and the replica.
    pub async fn shutdown(mut self) {
        let _ = self.master.send(Stop).await;
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.grpc_stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
    }
}
