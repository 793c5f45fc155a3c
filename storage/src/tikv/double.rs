//! **A test double** for PD and TiKV: one in-process gRPC server that speaks
//! the few PD and TiKV raw-KV calls the TiKV backend makes through
//! tikv-client, over a single region held in a `BTreeMap`.
//!
//! It exists so that `.ci/run`, where no TiKV can be installed, still runs
//! the backend's own code — tikv-client, its gRPC calls, the key layout, the
//! compare-and-swap fencing — against something that answers on the wire.
//! It is not a TiKV: one region, no replication, no TTLs, no transactions.
//! The same tests run against a real TiKV when `ORRERY_TIKV_PD` is set
//! (README, "TiKV backend").
//!
//! Fault switches for the failure tests: [`TikvTestDouble::set_down`] makes
//! every call fail with `UNAVAILABLE` (TiKV unreachable, as a client sees
//! it), and [`TikvTestDouble::stop`] closes the port.
//!
//! The message and service definitions are a subset of kvproto with its
//! field numbers (`proto/proto/tikv/`), generated server-side only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use orrery_proto::tikv_double::kvrpcpb as kv;
use orrery_proto::tikv_double::metapb;
use orrery_proto::tikv_double::pdpb as pd;
use orrery_proto::tikv_double::pdpb::pd_server::{Pd, PdServer};
use orrery_proto::tikv_double::tikvpb::tikv_server::{Tikv, TikvServer};
use tonic::{Request, Response, Status};

const CLUSTER_ID: u64 = 0x0e7e_e7e7;
const REGION_ID: u64 = 2;
const STORE_ID: u64 = 1;
const PEER_ID: u64 = 3;

#[derive(Default)]
struct Shared {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    down: AtomicBool,
    calls: AtomicU64,
    addr: Mutex<String>,
}

impl Shared {
    fn data(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the TiKV test double is set down"));
        }
        Ok(())
    }

    fn addr(&self) -> String {
        self.addr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn header(&self) -> Option<pd::ResponseHeader> {
        Some(pd::ResponseHeader {
            cluster_id: CLUSTER_ID,
            error: None,
        })
    }

    fn region(&self) -> pd::GetRegionResponse {
        let peer = metapb::Peer {
            id: PEER_ID,
            store_id: STORE_ID,
        };
        pd::GetRegionResponse {
            header: self.header(),
            region: Some(metapb::Region {
                id: REGION_ID,
                start_key: Vec::new(),
                end_key: Vec::new(),
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers: vec![peer],
            }),
            leader: Some(peer),
        }
    }

    fn store(&self) -> metapb::Store {
        metapb::Store {
            id: STORE_ID,
            address: self.addr(),
            state: 0,
        }
    }
}

/// A running PD + TiKV test double on `127.0.0.1:<free port>`.
pub struct TikvTestDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TikvTestDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TikvTestDouble")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TikvTestDouble {
    /// Starts the double on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        *shared.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr.to_string();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let routes = tonic::service::Routes::new(PdServer::new(Service(shared.clone())))
            .add_service(TikvServer::new(Service(shared.clone())));
        let server =
            crate::serve::spawn_routes(listener, routes, stop_rx, "TiKV test double", None)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            shared,
            addr,
            stop: Some(stop_tx),
            server: Some(server),
        })
    }

    /// The PD endpoint to give the backend (`127.0.0.1:PORT`).
    pub fn pd_endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// While down, every call fails with `UNAVAILABLE`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Calls answered so far (a test can see that traffic happened).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Every key and value held, in key order.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.shared
            .data()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Overwrites one key directly (a test's way to corrupt or fence).
    pub fn put_raw(&self, key: Vec<u8>, value: Vec<u8>) {
        self.shared.data().insert(key, value);
    }

    /// Closes the port and waits for the server to end.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl Drop for TikvTestDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

struct Service(Arc<Shared>);

type Reply<T> = Result<Response<T>, Status>;

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

#[tonic::async_trait]
impl Pd for Service {
    async fn get_members(
        &self,
        _: Request<pd::GetMembersRequest>,
    ) -> Reply<pd::GetMembersResponse> {
        self.0.check()?;
        let me = pd::Member {
            name: "orrery-tikv-test-double".into(),
            member_id: 1,
            peer_urls: vec![format!("http://{}", self.0.addr())],
            client_urls: vec![format!("http://{}", self.0.addr())],
        };
        Ok(Response::new(pd::GetMembersResponse {
            header: self.0.header(),
            members: vec![me.clone()],
            leader: Some(me.clone()),
            etcd_leader: Some(me),
        }))
    }

    async fn get_store(&self, r: Request<pd::GetStoreRequest>) -> Reply<pd::GetStoreResponse> {
        self.0.check()?;
        if r.get_ref().store_id != STORE_ID {
            return Err(Status::not_found(format!(
                "the test double has one store ({STORE_ID}), not {}",
                r.get_ref().store_id
            )));
        }
        Ok(Response::new(pd::GetStoreResponse {
            header: self.0.header(),
            store: Some(self.0.store()),
        }))
    }

    async fn get_all_stores(
        &self,
        _: Request<pd::GetAllStoresRequest>,
    ) -> Reply<pd::GetAllStoresResponse> {
        self.0.check()?;
        Ok(Response::new(pd::GetAllStoresResponse {
            header: self.0.header(),
            stores: vec![self.0.store()],
        }))
    }

    async fn get_region(&self, _: Request<pd::GetRegionRequest>) -> Reply<pd::GetRegionResponse> {
        self.0.check()?;
        Ok(Response::new(self.0.region()))
    }

    async fn get_prev_region(
        &self,
        _: Request<pd::GetRegionRequest>,
    ) -> Reply<pd::GetRegionResponse> {
        self.0.check()?;
        Ok(Response::new(self.0.region()))
    }

    async fn get_region_by_id(
        &self,
        r: Request<pd::GetRegionByIdRequest>,
    ) -> Reply<pd::GetRegionResponse> {
        self.0.check()?;
        if r.get_ref().region_id != REGION_ID {
            return Err(Status::not_found("the test double has one region"));
        }
        Ok(Response::new(self.0.region()))
    }
}

#[tonic::async_trait]
impl Tikv for Service {
    async fn raw_get(&self, r: Request<kv::RawGetRequest>) -> Reply<kv::RawGetResponse> {
        self.0.check()?;
        let value = self.0.data().get(&r.get_ref().key).cloned();
        Ok(Response::new(kv::RawGetResponse {
            not_found: value.is_none(),
            value: value.unwrap_or_default(),
            ..Default::default()
        }))
    }

    async fn raw_batch_get(
        &self,
        r: Request<kv::RawBatchGetRequest>,
    ) -> Reply<kv::RawBatchGetResponse> {
        self.0.check()?;
        let data = self.0.data();
        let pairs = r
            .get_ref()
            .keys
            .iter()
            .filter_map(|k| {
                data.get(k).map(|v| kv::KvPair {
                    key: k.clone(),
                    value: v.clone(),
                })
            })
            .collect();
        Ok(Response::new(kv::RawBatchGetResponse {
            pairs,
            ..Default::default()
        }))
    }

    async fn raw_put(&self, r: Request<kv::RawPutRequest>) -> Reply<kv::RawPutResponse> {
        self.0.check()?;
        let r = r.into_inner();
        self.0.data().insert(r.key, r.value);
        Ok(Response::new(kv::RawPutResponse::default()))
    }

    async fn raw_batch_put(
        &self,
        r: Request<kv::RawBatchPutRequest>,
    ) -> Reply<kv::RawBatchPutResponse> {
        self.0.check()?;
        let mut data = self.0.data();
        for p in r.into_inner().pairs {
            data.insert(p.key, p.value);
        }
        Ok(Response::new(kv::RawBatchPutResponse::default()))
    }

    async fn raw_delete(&self, r: Request<kv::RawDeleteRequest>) -> Reply<kv::RawDeleteResponse> {
        self.0.check()?;
        self.0.data().remove(&r.get_ref().key);
        Ok(Response::new(kv::RawDeleteResponse::default()))
    }

    async fn raw_delete_range(
        &self,
        r: Request<kv::RawDeleteRangeRequest>,
    ) -> Reply<kv::RawDeleteRangeResponse> {
        self.0.check()?;
        let r = r.into_inner();
        self.0
            .data()
            .retain(|k, _| !in_range(k, &r.start_key, &r.end_key));
        Ok(Response::new(kv::RawDeleteRangeResponse::default()))
    }

    async fn raw_scan(&self, r: Request<kv::RawScanRequest>) -> Reply<kv::RawScanResponse> {
        self.0.check()?;
        let r = r.into_inner();
        let data = self.0.data();
        let limit = r.limit as usize;
        let pick = |(k, v): (&Vec<u8>, &Vec<u8>)| kv::KvPair {
            key: k.clone(),
            value: if r.key_only { Vec::new() } else { v.clone() },
        };
        let kvs: Vec<kv::KvPair> = if r.reverse {
            // Reverse scans run from start_key (exclusive) down to end_key.
            data.iter()
                .rev()
                .filter(|(k, _)| {
                    (r.start_key.is_empty() || k.as_slice() < r.start_key.as_slice())
                        && k.as_slice() >= r.end_key.as_slice()
                })
                .take(limit)
                .map(pick)
                .collect()
        } else {
            data.range(r.start_key.clone()..)
                .filter(|(k, _)| in_range(k, &r.start_key, &r.end_key))
                .take(limit)
                .map(pick)
                .collect()
        };
        Ok(Response::new(kv::RawScanResponse {
            kvs,
            ..Default::default()
        }))
    }

    async fn raw_compare_and_swap(
        &self,
        r: Request<kv::RawCasRequest>,
    ) -> Reply<kv::RawCasResponse> {
        self.0.check()?;
        let r = r.into_inner();
        let mut data = self.0.data();
        let current = data.get(&r.key).cloned();
        let matches = match &current {
            None => r.previous_not_exist,
            Some(v) => !r.previous_not_exist && *v == r.previous_value,
        };
        if matches {
            data.insert(r.key, r.value);
        }
        Ok(Response::new(kv::RawCasResponse {
            succeed: matches,
            previous_not_exist: current.is_none(),
            previous_value: current.unwrap_or_default(),
            ..Default::default()
        }))
    }
}
