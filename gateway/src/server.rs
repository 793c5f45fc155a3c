//! A master replica, wired: the raft log, the `Master` actor, the gRPC
//! services on the log's address, and the HTTP admin endpoints.
//!
//! `orrery master` runs one; the in-process tests run three. Must be
//! called inside an actix `System` (the actor starts on its arbiter).

use std::net::SocketAddr;

use actix::Addr;
use orrery_actors::cluster_machine::ClusterMachine;
use orrery_actors::master::{Log, Master, Settings, Stop};
use orrery_storage::raft::{RaftConfig, RaftNode};
use orrery_storage::Fatal;
use tokio::sync::oneshot;

/// A running master replica.
#[derive(Debug)]
pub struct RunningMaster {
    pub node: Log,
    pub master: Addr<Master>,
    /// The gRPC (and raft) address.
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    http_stop: Option<oneshot::Sender<()>>,
}

/// Starts a replica. `settings.addr` and `settings.http_addr` are filled in
/// from what was actually bound.
pub async fn start(
    config: RaftConfig,
    mut settings: Settings,
    http: Option<SocketAddr>,
) -> Result<RunningMaster, Fatal> {
    // The process's metrics recorder, before anything records.
    let _ = crate::metrics::handle();
    orrery_actors::telemetry::describe();
    let http_listener = match http {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| Fatal::Io {
                    what: format!("listening for HTTP on {a}"),
                    detail: e.to_string(),
                })?,
        ),
        None => None,
    };
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().map_err(|e| Fatal::Io {
            what: "the HTTP socket".into(),
            detail: e.to_string(),
        })?),
        None => None,
    };
    settings.http_addr = http_addr.map(|a| a.to_string()).unwrap_or_default();
    settings.addr = config
        .peers
        .get(&config.node_id)
        .cloned()
        .unwrap_or_else(|| config.listen.to_string());
    let ping_ms = settings.agent_ping_timeout.as_millis() as u64;
    let mut started: Option<Addr<Master>> = None;
    let node = RaftNode::start_with_services(config, ClusterMachine::default(), |node, routes| {
        let master = actix::Actor::start(Master::new(settings, node.clone()));
        started = Some(master.clone());
        crate::grpc::routes(routes, master, node.clone(), ping_ms)
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
    let mut http_stop = None;
    if let Some(listener) = http_listener {
        let (tx, rx) = oneshot::channel::<()>();
        http_stop = Some(tx);
        let router = crate::http::router(crate::http::Admin {
            master: master.clone(),
            log: node.clone(),
        });
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP admin server stopped");
            }
        });
    }
    Ok(RunningMaster {
        addr: node.local_addr(),
        node,
        master,
        http_addr,
        http_stop,
    })
}

impl RunningMaster {
    /// Stops the actor, the HTTP server and the replica.
    pub async fn shutdown(mut self) {
        let _ = self.master.send(Stop).await;
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
    }
}
