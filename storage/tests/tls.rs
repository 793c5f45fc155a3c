//! Raft between masters over mutual TLS: three replicas replicate, and the
//! raft service refuses every peer that is not a master.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orrery_proto::raft as pb;
use orrery_storage::conformance::CheckingMachine;
use orrery_storage::raft::{RaftConfig, RaftNode};
use orrery_storage::security::pki::{Ca, Validity};
use orrery_storage::security::{Principal, Tls};
use orrery_storage::EventLog;

fn free_port() -> u16 {
    orrery_storage::ports::free_port().expect("a free port")
}

fn master(ca: &Ca, name: &str) -> Arc<Tls> {
    Arc::new(ca.local(&Principal::Master(name.into())).expect("cert"))
}

async fn three(ca: &Ca, dir: &tempfile::TempDir) -> Vec<RaftNode<CheckingMachine>> {
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let starts = (1..=3u64).map(|id| {
        let mut c = RaftConfig::new(
            id,
            peers[&id].parse().expect("addr"),
            peers.clone(),
            PathBuf::from(dir.path()).join(id.to_string()),
        );
        c.election_timeout_ms = 300;
        c.heartbeat_ms = 50;
        c.tls = Some(master(ca, &format!("m{id}")));
        RaftNode::start(c, CheckingMachine::default())
    });
    futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|n| n.expect("start"))
        .collect()
}

/// The raft Status call, over `tls` (or plain TCP), as a peer makes it.
async fn status(addr: &str, tls: Option<&Tls>) -> Result<pb::StatusResponse, tonic::Status> {
    let mut c = orrery_storage::raft::network::client(addr, tls)
        .map_err(tonic::Status::invalid_argument)?;
    c.status(pb::StatusRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// A client certificate refused in the TLS 1.3 handshake: the server
/// closes the connection after the client thought it was done, so the call
/// fails as UNAVAILABLE, CANCELLED or UNKNOWN (a broken pipe), never reaching a service.
fn assert_handshake_refused(e: &tonic::Status) {
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_replicate_over_mutual_tls_and_refuse_non_masters() {
    let ca = Ca::generate("test CA", Validity::days(1)).expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three(&ca, &dir).await;
    nodes[0]
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader over TLS");
    let leader = nodes
        .iter()
        .find(|n| n.leader().is_leader)
        .or_else(|| nodes.first())
        .expect("nodes");
    let mut appended = None;
    for _ in 0..50 {
        let leader = nodes
            .iter()
            .find(|n| n.leader().is_leader)
            .unwrap_or(leader);
        if let Ok(r) = leader.append(vec![vec![1, 2, 3]]).await {
            appended = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = *appended.expect("an append committed").end();
    for n in &nodes {
        for _ in 0..100 {
            if n.last_applied() >= last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(n.last_applied() >= last, "every replica applied over TLS");
    }

    let addr = nodes[0].local_addr().to_string();
    let before = nodes[0].last_applied();
    // A master's certificate is answered.
    status(&addr, Some(&master(&ca, "m9")))
        .await
        .expect("a master is answered");
    // An agent's certificate is refused by the raft service.
    let agent = ca.local(&Principal::Agent("h1".into())).expect("cert");
    let e = status(&addr, Some(&agent))
        .await
        .expect_err("agent refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("masters only"), "{}", e.message());
    // So is a client's.
    let client = ca.local(&Principal::Client("alice".into())).expect("cert");
    let e = status(&addr, Some(&client))
        .await
        .expect_err("client refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Plain TCP does not get through a TLS port.
    let e = status(&addr, None).await.expect_err("plain refused");
    assert_ne!(e.code(), tonic::Code::Ok);
    // A certificate from another CA fails the handshake.
    let other = Ca::generate("another CA", Validity::days(1)).expect("ca");
    let pair = other
        .issue(&Principal::Master("m1".into()), &[], Validity::days(1))
        .expect("cert");
    let foreign =
        Tls::from_pem_unchecked(&ca.pair.cert_pem, &pair.cert_pem, &pair.key_pem).expect("tls");
    let e = status(&addr, Some(&foreign))
        .await
        .expect_err("foreign CA refused");
    assert_handshake_refused(&e);
    // An expired master certificate fails the handshake.
    let expired = ca
        .issue(
            &Principal::Master("m1".into()),
            &[],
            Validity {
                from_secs: -7200,
                until_secs: -3600,
            },
        )
        .expect("cert");
    let expired = Tls::from_pem_unchecked(&ca.pair.cert_pem, &expired.cert_pem, &expired.key_pem)
        .expect("tls");
    let e = status(&addr, Some(&expired))
        .await
        .expect_err("expired refused");
    assert_handshake_refused(&e);
    assert_eq!(nodes[0].last_applied(), before, "nothing changed");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_holding_an_agent_certificate_is_not_taken_for_a_master() {
    let ca = Ca::generate("test CA", Validity::days(1)).expect("ca");
    let agent = ca.local(&Principal::Agent("h1".into())).expect("cert");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_stop, rx) = tokio::sync::oneshot::channel();
    let routes = tonic::service::Routes::default();
    let _server =
        orrery_storage::serve::spawn_routes(listener, routes, rx, "impostor", Some(&agent))
            .expect("serve");
    let e = status(&addr, Some(&master(&ca, "m1")))
        .await
        .expect_err("an agent's certificate is no master's");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let detail = format!("{e:?}");
    assert!(detail.contains("not of a master"), "{detail}");
}
