//! Security end to end, in process: a master over mutual TLS enforcing a
//! policy. Every negative — no credentials, a foreign CA, an expired
//! certificate, an agent certificate where a master's is due, another
//! host's agent, framework A killing B's task, a non-operator posting a
//! maintenance schedule, a principal change on re-subscribe — is refused,
//! changes nothing, and is logged (counted in
//! `orrery_requests_denied_total`). The accepted calls are recorded with
//! their principal.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use orrery_events::pb::TaskState;
use orrery_gateway::auth::{token_hash, Policy, RateLimit, Tokens};
use orrery_gateway::client::{with_leader, Transport};
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use orrery_proto::scheduler::{self as sp, scheduler_client::SchedulerClient};
use orrery_storage::security::pki::{Ca, Validity};
use orrery_storage::security::{Principal, Tls};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "a-test-token-for-the-viewer-0123456789";

const POLICY: &str = r#"
[[grant]]
principal = "operator"
allow = ["view", "operator", "jobs"]

[[grant]]
principal = "viewer"
allow = ["view"]

[[grant]]
principal = "fw-a"
framework_roles = ["*"]

[[grant]]
principal = "fw-b"
framework_roles = ["batch"]
"#;

fn secure() -> Secure {
    Secure {
        ca: Ca::generate("test CA", Validity::days(1)).expect("ca"),
        policy: Policy::parse(POLICY).expect("policy"),
        tokens: Tokens::parse(&format!(
            "[[token]]\nprincipal = \"viewer\"\nsha256 = \"{}\"",
            token_hash(TOKEN)
        ))
        .expect("tokens"),
        rate: RateLimit::default(),
    }
}

/// The number of refusals counted so far, by reason.
fn denied(reason: &str) -> u64 {
    let text = orrery_actors::telemetry::prometheus()
        .expect("the recorder")
        .render();
    let key = format!("orrery_requests_denied_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn get_state(t: &Transport, m: &Masters) -> Result<op::State, tonic::Status> {
    with_leader(t, &m.addrs(), Duration::from_secs(3), |ch| async move {
        OperatorClient::new(ch)
            .get_state(op::GetStateRequest {})
            .await
            .map(|r| r.into_inner())
    })
    .await
    .map(|(s, _)| s)
}

/// A client with only the CA: it can check the master, but presents no
/// certificate.
async fn anonymous(m: &Masters, token: Option<&str>) -> Result<op::State, tonic::Status> {
    let ca = tonic::transport::Certificate::from_pem(&m.secure.as_ref().unwrap().ca.pair.cert_pem);
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", m.addrs()[0]))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("127.0.0.1"),
        )
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(op::GetStateRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    OperatorClient::new(ch)
        .get_state(req)
        .await
        .map(|r| r.into_inner())
}

/// One HTTP/1.1 request over TLS to the master's admin port, trusting the
/// CA and presenting no certificate; `token` goes in `Authorization`.
async fn https(
    m: &Masters,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    https_with(m, method, path, &auth, body).await
}

/// As [`https`], with `headers` (each line ending in CRLF) as given.
async fn https_with(
    m: &Masters,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let sec = m.secure.as_ref().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(sec.ca.pair.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = m.running.values().next().unwrap().http_addr.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the admin port speaks TLS");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: orrery\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn the_http_admin_is_tls_and_checks_who_asks() {
    run(LIMIT, async {
        let m = Masters::start_secure(1, test_settings(), secure()).await;
        m.leader().await;
        // Open: health checks and Prometheus.
        let (code, _) = https(&m, "GET", "/health", None, "").await;
        assert_eq!(code, 200);
        let (code, text) = https(&m, "GET", "/metrics", None, "").await;
        assert_eq!(code, 200, "{text}");
        // The rest: 401 without credentials, 403 without the permission.
        let before = denied("unauthenticated");
        let (code, text) = https(&m, "GET", "/state", None, "").await;
        assert_eq!(code, 401, "{text}");
        assert!(denied("unauthenticated") > before, "logged");
        let (code, text) = https(&m, "GET", "/state", Some("wrong"), "").await;
        assert_eq!(code, 401, "{text}");
        let (code, text) = https(&m, "GET", "/state", Some(TOKEN), "").await;
        assert_eq!(code, 200, "the viewer reads: {text}");
        let schedule = r#"{"windows":[{"machine_ids":[{"hostname":"h1","ip":"127.0.0.1"}],"unavailability":{"start":{"nanoseconds":1}}}]}"#;
        let (code, text) = https(&m, "POST", "/maintenance/schedule", Some(TOKEN), schedule).await;
        assert_eq!(code, 403, "a viewer may not post a schedule: {text}");
        assert!(text.contains("operator"), "{text}");
        let (code, text) = https(&m, "POST", "/machine/down", None, "[]").await;
        assert_eq!(code, 401, "{text}");
        let (_, text) = https(&m, "GET", "/maintenance/schedule", Some(TOKEN), "").await;
        assert!(!text.contains("h1"), "nothing was scheduled: {text}");
        m.shutdown().await;
    });
}

#[test]
fn the_web_ui_signs_a_browser_in_with_a_token_cookie_for_ui_pages_only() {
    run(LIMIT, async {
        let m = Masters::start_secure(1, test_settings(), secure()).await;
        m.leader().await;
        // No credentials: a browser is sent to the sign-in form (open, as
        // are the UI's assets).
        let (code, text) = https(&m, "GET", "/ui/overview", None, "").await;
        assert_eq!(code, 303, "{text}");
        assert!(text.contains("location: /ui/login"), "{text}");
        let (code, text) = https(&m, "GET", "/ui/login", None, "").await;
        assert_eq!(code, 200, "{text}");
        let (code, _) = https(&m, "GET", "/ui/assets/htmx.min.js", None, "").await;
        assert_eq!(code, 200);
        // A wrong token, a missing one: refused, no cookie.
        let form = "Content-Type: application/x-www-form-urlencoded\r\n";
        let (code, text) = https_with(&m, "POST", "/ui/login", form, "token=wrong").await;
        assert_eq!(code, 401, "{text}");
        assert!(!text.to_ascii_lowercase().contains("set-cookie"), "{text}");
        let (code, text) = https_with(&m, "POST", "/ui/login", form, "nothing=here").await;
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("the form has no token"), "{text}");
        // The viewer's token: a cookie for /ui, HttpOnly, Secure.
        let (code, text) =
            https_with(&m, "POST", "/ui/login", form, &format!("token={TOKEN}")).await;
        assert_eq!(code, 303, "{text}");
        let cookie = text
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("a cookie: {text}"));
        for part in ["Path=/ui", "HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let jar = format!("Cookie: {}\r\n", cookie.split(';').next().unwrap());
        let (code, text) = https_with(&m, "GET", "/ui/overview", &jar, "").await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("Masters"), "{text}");
        // The cookie is the UI's only: not a credential for the rest.
        let (code, text) = https_with(&m, "GET", "/state", &jar, "").await;
        assert_eq!(code, 401, "{text}");
        let bad = "Cookie: orrery_token=wrong\r\n";
        let (code, _) = https_with(&m, "GET", "/ui/overview", bad, "").await;
        assert_eq!(code, 303, "an unknown cookie is sent to sign in again");
        m.shutdown().await;
    });
}

fn handshake_refused(e: &tonic::Status) -> bool {
    // At connect, the client sees the refusal as such (UNAUTHENTICATED);
    // on a lazily opened channel it surfaces in the call.
    matches!(
        e.code(),
        Code::Unauthenticated | Code::Unavailable | Code::Cancelled | Code::Unknown
    ) && !e.message().contains("no credentials")
}

#[test]
fn every_negative_is_refused_changes_nothing_and_is_logged() {
    run(LIMIT, async {
        let m = Masters::start_secure(1, test_settings(), secure()).await;
        let sec = m.secure.as_ref().unwrap();
        let operator = m.client();
        m.leader().await;

        // --- authentication ------------------------------------------------
        let before = denied("unauthenticated");
        let e = anonymous(&m, None).await.expect_err("no credentials");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("no credentials"), "{}", e.message());
        let e = anonymous(&m, Some("not-a-token"))
            .await
            .expect_err("unknown token");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(denied("unauthenticated") >= before + 2, "logged");
        // A known bearer token authenticates its principal.
        anonymous(&m, Some(TOKEN))
            .await
            .expect("the viewer's token reads the state");

        // A certificate from another CA, and an expired one, fail the
        // handshake.
        let other = Ca::generate("another CA", Validity::days(1)).unwrap();
        let pair = other
            .issue(
                &Principal::Client("operator".into()),
                &[],
                Validity::days(1),
            )
            .unwrap();
        let foreign = Transport::Tls(Arc::new(
            Tls::from_pem_unchecked(&sec.ca.pair.cert_pem, &pair.cert_pem, &pair.key_pem).unwrap(),
        ));
        let e = get_state(&foreign, &m).await.expect_err("foreign CA");
        assert!(handshake_refused(&e), "{e:?}");
        let expired = sec
            .ca
            .issue(
                &Principal::Client("operator".into()),
                &[],
                Validity {
                    from_secs: -7200,
                    until_secs: -3600,
                },
            )
            .unwrap();
        let expired = Transport::Tls(Arc::new(
            Tls::from_pem_unchecked(&sec.ca.pair.cert_pem, &expired.cert_pem, &expired.key_pem)
                .unwrap(),
        ));
        let e = get_state(&expired, &m).await.expect_err("expired");
        assert!(handshake_refused(&e), "{e:?}");

        // --- roles -----------------------------------------------------------
        let forbidden = denied("forbidden");
        // An agent's certificate is not an operator's, nor a master's.
        let agent_h1 = sec.transport(Principal::Agent("h1".into()));
        let e = get_state(&agent_h1, &m)
            .await
            .expect_err("agent as operator");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = with_leader(&agent_h1, &m.addrs(), WAIT, |ch| async move {
            orrery_proto::raft::raft_client::RaftClient::new(ch)
                .status(orrery_proto::raft::StatusRequest::default())
                .await
        })
        .await
        .expect_err("agent as master");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("masters only"), "{}", e.message());

        // An agent registers only for its own host.
        let e = with_leader(&agent_h1, &m.addrs(), WAIT, |ch| async move {
            orrery_proto::agent::agent_link_client::AgentLinkClient::new(ch)
                .register(orrery_proto::agent::RegisterRequest {
                    version: String::new(),
                    incarnation: String::new(),
                    agent_id: String::new(),
                    info: Some(orrery_proto::agent::AgentInfo {
                        hostname: "h2".into(),
                        ip: "127.0.0.1".into(),
                        resources: Some(orrery_events::pb::Resources {
                            cpus_milli: 1000,
                            mem_mb: 1024,
                            disk_mb: 0,
                            ports: vec![],
                            ..Default::default()
                        }),
                        attributes: vec![],
                        domain: None,
                    }),
                    tasks: vec![],
                })
                .await
        })
        .await
        .expect_err("h1's agent registering h2");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // --- frameworks -----------------------------------------------------------
        let agent = SimAgent::spawn_via(agent_h1.clone(), m.addrs(), "h1", 4);
        let fw_a = sec.transport(Principal::Client("fw-a".into()));
        let fw_b = sec.transport(Principal::Client("fw-b".into()));
        // fw-b may register in "batch" only.
        let e = subscribe_once(&fw_b, &m.addrs(), &framework_info("b", "prod", &[]))
            .await
            .expect_err("fw-b in prod");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // A framework may not claim another principal.
        let mut claims = framework_info("a", "batch", &[]);
        claims.principal = "fw-b".into();
        let e = subscribe_once(&fw_a, &m.addrs(), &claims)
            .await
            .expect_err("fw-a claiming fw-b");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        let mut b = Framework::subscribe_via(
            fw_b.clone(),
            m.addrs(),
            framework_info("b", "batch", &[]),
            false,
        )
        .await;
        let offers = b.offers(WAIT).await;
        b.call(launch(&offers[0], "b-task", 500, None))
            .await
            .expect("fw-b launches its task");
        let running = eventually("b-task runs", WAIT, || async {
            let s = get_state(&operator, &m).await.ok()?;
            (task_state(&s, &b.id(), "b-task") == Some(TaskState::TaskRunning)).then_some(s)
        })
        .await;
        let b_principal = running
            .frameworks
            .iter()
            .find(|f| f.framework_id == b.id())
            .map(|f| f.principal.clone());
        assert_eq!(
            b_principal.as_deref(),
            Some("fw-b"),
            "bound at registration"
        );

        // fw-a kills fw-b's task: under fw-b's framework id it is refused
        // at the door; under its own, the task is not one of its own.
        let a = Framework::subscribe_via(
            fw_a.clone(),
            m.addrs(),
            framework_info("a", "batch", &[]),
            false,
        )
        .await;
        let b_id = b.id();
        let b_stream = b.ids.lock().unwrap().stream_id.clone();
        let e = with_leader(&fw_a, &m.addrs(), WAIT, |ch| {
            let call = sp::Call {
                framework_id: b_id.clone(),
                stream_id: b_stream.clone(),
                call: Some(sp::call::Call::Kill(sp::Kill {
                    task_id: "b-task".into(),
                })),
            };
            async move { SchedulerClient::new(ch).call(call).await }
        })
        .await
        .expect_err("fw-a killing fw-b's task");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = a
            .call(sp::call::Call::Kill(sp::Kill {
                task_id: "b-task".into(),
            }))
            .await
            .expect_err("not fw-a's task");
        assert_ne!(e.code(), Code::Ok);

        // An oversized message is refused by size, before any decoding.
        let e = a
            .call(sp::call::Call::Decline(sp::Decline {
                offer_ids: vec!["x".repeat(orrery_gateway::grpc::MESSAGE_BYTES_MAX + 1)],
                filters: None,
            }))
            .await
            .expect_err("17 MiB call");
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

        // A re-subscription with fw-b's id under another principal: the
        // core refuses the principal change.
        let mut failover = framework_info("b", "batch", &[]);
        failover.framework_id = b.id();
        let e = subscribe_once(&fw_a, &m.addrs(), &failover)
            .await
            .expect_err("principal change on failover");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("principal"), "{}", e.message());

        // --- operator actions -------------------------------------------------------
        let viewer = sec.transport(Principal::Client("viewer".into()));
        get_state(&viewer, &m).await.expect("the viewer reads");
        let e = with_leader(&viewer, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .update_schedule(op::MaintenanceSchedule {
                    windows: vec![orrery_events::pb::MaintenanceWindow {
                        machines: vec![orrery_events::pb::MachineId {
                            hostname: "h1".into(),
                            ip: "127.0.0.1".into(),
                        }],
                        unavailability: Some(orrery_events::pb::Unavailability {
                            start_ns: 1,
                            duration_ns: Some(1_000_000_000),
                        }),
                    }],
                })
                .await
        })
        .await
        .expect_err("a viewer posting a schedule");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("operator"), "{}", e.message());
        let e = with_leader(&fw_a, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .start_maintenance(op::Hosts {
                    hostnames: vec!["h1".into()],
                })
                .await
        })
        .await
        .expect_err("a framework draining a host");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // Seven refusals at the door (the raft one is refused, and logged,
        // by storage's guard; the two the core refuses are counted in
        // orrery_rejections_total).
        assert!(
            denied("forbidden") >= forbidden + 7,
            "each refusal is counted: {} then {}",
            forbidden,
            denied("forbidden")
        );

        // Nothing the refused calls asked for happened.
        let after = get_state(&operator, &m).await.unwrap();
        assert_eq!(
            task_state(&after, &b.id(), "b-task"),
            Some(TaskState::TaskRunning)
        );
        assert!(after.agents.iter().all(|a| a.hostname == "h1"));
        let schedule = with_leader(&operator, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .get_schedule(op::GetScheduleRequest {})
                .await
        })
        .await
        .unwrap()
        .0
        .into_inner();
        assert!(schedule.windows.is_empty(), "no schedule was posted");
        let hosts = with_leader(&operator, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .query_hosts(op::QueryHostsRequest { states: vec![] })
                .await
        })
        .await
        .unwrap()
        .0
        .into_inner();
        assert!(
            hosts.hosts.iter().all(|h| h.state == "HOST_STATE_UP"),
            "no host was drained: {hosts:?}"
        );

        // --- audit ---------------------------------------------------------------------
        // The operator's drain is recorded with its principal, as are the
        // agent's registration and the framework's calls.
        with_leader(&operator, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .start_maintenance(op::Hosts {
                    hostnames: vec!["h1".into()],
                })
                .await
        })
        .await
        .expect("the operator drains h1");
        let log = with_leader(&operator, &m.addrs(), WAIT, |ch| async move {
            OperatorClient::new(ch)
                .read_log(op::ReadLogRequest {
                    from: 1,
                    max: 10_000,
                })
                .await
        })
        .await
        .unwrap()
        .0
        .into_inner();
        let principals: std::collections::BTreeSet<String> = log
            .events
            .iter()
            .map(|b| {
                <orrery_events::pb::Envelope as prost::Message>::decode(b.as_slice())
                    .unwrap()
                    .principal
            })
            .collect();
        for p in [
            "client:operator",
            "agent:h1",
            "client:fw-b",
            "client:fw-a",
            "",
        ] {
            assert!(principals.contains(p), "{p:?} in {principals:?}");
        }
        drop(agent);
        m.shutdown().await;
    });
}
