//! Finding the leader from the client side (the CLI, agents, framework
//! clients, tests): ask every master at once which one leads, remember the
//! answer, follow `orrery-leader` answers, and retry UNAVAILABLE until the
//! caller's patience runs out.
//!
//! Every connection and every call has a deadline, and every channel sends
//! HTTP/2 keepalive pings and sets TCP keepalive: a master that is frozen
//! (SIGSTOP, a VM pause, a cut without a reset) accepts TCP connections in
//! its kernel but answers nothing, and without a deadline a caller waits on
//! it forever. With them, one frozen master costs a caller at most one call
//! deadline, once: the leader is then looked for among all masters in
//! parallel ([`discover`]), each asked with a short deadline, so the frozen
//! one is simply the one that does not answer (Mesos' leader detection).
//!
//! Why the discovery asks a read-only question first instead of sending the
//! call itself to every master: a call sent in parallel could take effect
//! twice across a leader change (a new agent registered under two ids), so
//! it goes to one master only.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::LEADER_METADATA;
use orrery_proto::operator as op;
use orrery_storage::security::Tls;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How a client reaches the masters: mutual TLS with its certificate (the
/// masters must prove they are masters), or plain TCP (`--insecure`).
#[derive(Clone, Debug, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<Tls>),
}

/// The keepalives of every Orrery channel, client and server alike: a
/// connection whose peer stops answering HTTP/2 PINGs is closed, which ends
/// every stream on it (an agent's `Attach`, a framework's `Subscribe`).
pub use orrery_storage::serve::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, TCP_KEEPALIVE};

/// Refuses at once a master address that cannot be one (a scheme, or
/// nothing), rather than after a name lookup's timeout.
fn check_addr(addr: &str) -> Result<(), Status> {
    if addr.contains("://") || addr.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "master address {addr:?} is not HOST:PORT (no scheme: the transport is chosen by --insecure or the certificates)"
        )));
    }
    Ok(())
}

impl Transport {
    fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        check_addr(addr)?;
        match self {
            Transport::Plain => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Status::invalid_argument(format!("{addr:?} is not HOST:PORT: {e}"))),
            Transport::Tls(tls) => tls.endpoint(addr).map_err(Status::invalid_argument),
        }
    }
}

/// The deadlines of one call to a master: to open its connection (TCP,
/// TLS and HTTP/2 together), and for the call's answer (a unary answer, or a
/// stream's first headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub connect: Duration,
    pub call: Duration,
}

impl Deadlines {
    /// 1 s to connect (loopback and a data centre connect in well under a
    /// millisecond; a second is many retransmits), 10 s for an answer (a
    /// commit takes milliseconds; a dry run or a long log read more).
    pub const DEFAULT: Deadlines = Deadlines {
        connect: Duration::from_secs(1),
        call: Duration::from_secs(10),
    };

    /// The process-wide deadlines: the CLI sets them from `--connect-timeout`
    /// and `--call-timeout` ([`set_deadlines`]).
    pub fn current() -> Deadlines {
        let ms = |a: &AtomicU64, d: Duration| match a.load(Ordering::Relaxed) {
            0 => d,
            v => Duration::from_millis(v),
        };
        Deadlines {
            connect: ms(&CONNECT_MS, Self::DEFAULT.connect),
            call: ms(&CALL_MS, Self::DEFAULT.call),
        }
    }
}

static CONNECT_MS: AtomicU64 = AtomicU64::new(0);
static CALL_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the deadlines [`with_leader`] uses in this process.
pub fn set_deadlines(d: Deadlines) {
    CONNECT_MS.store(d.connect.as_millis().max(1) as u64, Ordering::Relaxed);
    CALL_MS.store(d.call.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// Opens a channel to `addr` (HOST:PORT) within the default deadlines.
pub async fn connect(transport: &Transport, addr: &str) -> Result<Channel, Status> {
    connect_within(transport, addr, Deadlines::current()).await
}

/// Opens a channel to `addr` (HOST:PORT): keepalives on, the whole
/// connection (TCP, TLS, HTTP/2) bound by `d.connect`. Calls on it are
/// bound by their caller ([`with_leader_within`] bounds each by `d.call`),
/// not by the channel: a stream may rightly last for days.
pub async fn connect_within(
    transport: &Transport,
    addr: &str,
    d: Deadlines,
) -> Result<Channel, Status> {
    let endpoint = transport
        .endpoint(addr)?
        .connect_timeout(d.connect)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connected = tokio::time::timeout(d.connect, endpoint.connect())
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "cannot connect to {addr}: no answer within {:?}",
                d.connect
            ))
        })?;
    connected.map_err(|e| {
        let message = format!("cannot connect to {addr}: {}", chain(&e));
        // A certificate the other side refuses (or that we refuse) will
        // not be accepted on a retry: say so at once.
        if orrery_storage::security::is_certificate_refusal(&e) {
            Status::unauthenticated(message)
        } else {
            Status::unavailable(message)
        }
    })
}

/// An error and its sources, `a: b: c` (tonic's own says only "transport
/// error"; the TLS reason, such as an unknown CA, is further down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// The leader named by an UNAVAILABLE answer, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The last master that answered as leader, per list of masters (a process
/// may talk to several clusters: tests do).
static REMEMBERED: Mutex<BTreeMap<Vec<String>, String>> = Mutex::new(BTreeMap::new());

fn remembered(masters: &[String]) -> Option<String> {
    REMEMBERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(masters)
        .cloned()
}

fn remember(masters: &[String], addr: &str) {
    let mut r = REMEMBERED.lock().unwrap_or_else(|e| e.into_inner());
    if r.get(masters).map(String::as_str) != Some(addr) {
        r.insert(masters.to_vec(), addr.to_owned());
    }
}

/// Forgets the leader remembered for `masters` (it stopped answering): the
/// next call looks for the leader among all of them.
pub fn forget_leader(masters: &[String]) {
    REMEMBERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(masters);
}

/// What one master said when asked who leads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// It serves as the leader in this term.
    Serving(u64),
    /// It knows of a leader elsewhere (in this term).
    Hint(String, u64),
    /// It knows of none yet.
    NoLeader,
    /// An older master without the discovery service: a candidate to call.
    Unknown,
}

/// The leader among `masters`, asked of all of them in parallel, each with
/// `d`'s deadlines. The first master that says it serves wins; otherwise a
/// leader named by the others, when it is not among the masters asked (one
/// asked and silent is frozen or gone, whatever the others still believe).
/// Errors when no leader can be named now (the caller retries).
pub async fn discover(
    transport: &Transport,
    masters: &[String],
    d: Deadlines,
) -> Result<String, Status> {
    use futures::StreamExt as _;
    let mut asks: futures::stream::FuturesUnordered<_> = masters
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            async move {
                let answer = async {
                    let ch = connect_within(transport, &addr, d).await?;
                    let mut c = op::discovery_client::DiscoveryClient::new(ch);
                    match tokio::time::timeout(d.call, c.leader(op::LeaderRequest {})).await {
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "{addr} did not say who leads within {:?}",
                            d.call
                        ))),
                        Ok(Err(s)) if s.code() == Code::Unimplemented => Ok(Answer::Unknown),
                        Ok(Err(s)) => Err(s),
                        Ok(Ok(r)) => {
                            let r = r.into_inner();
                            Ok(if r.serving {
                                Answer::Serving(r.term)
                            } else if r.leader_addr.is_empty() {
                                Answer::NoLeader
                            } else {
                                Answer::Hint(r.leader_addr, r.term)
                            })
                        }
                    }
                }
                .await;
                (addr, answer)
            }
        })
        .collect();
    let mut hints: Vec<(u64, String)> = Vec::new();
    let mut unknown: Option<String> = None;
    let mut last: Option<Status> = None;
    while let Some((addr, answer)) = asks.next().await {
        match answer {
            Ok(Answer::Serving(_)) => return Ok(addr),
            Ok(Answer::Hint(h, term)) => hints.push((term, h)),
            Ok(Answer::NoLeader) => {}
            Ok(Answer::Unknown) => unknown = unknown.or(Some(addr)),
            // A refusal of the caller itself (its certificate, its token)
            // will not change on a retry.
            Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(s)
            }
            Err(s) => last = Some(s),
        }
    }
    hints.sort();
    if let Some((_, h)) = hints.into_iter().rev().find(|(_, h)| !masters.contains(h)) {
        return Ok(h);
    }
    if let Some(addr) = unknown {
        return Ok(addr);
    }
    Err(Status::unavailable(match last {
        Some(s) => format!("no master says it leads yet; last error: {}", s.message()),
        None => "no master says it leads yet (an election may be under way)".to_owned(),
    }))
}

/// Runs `call` against the leader among `masters` with the process's
/// [`Deadlines::current`].
pub async fn with_leader<T, F, Fut>(
    transport: &Transport,
    masters: &[String],
    patience: Duration,
    call: F,
) -> Result<(T, String), Status>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    with_leader_within(transport, masters, patience, Deadlines::current(), call).await
}

/// Runs `call` against the leader among `masters`, following redirects and
/// retrying UNAVAILABLE (no leader yet, a leader recovering, a master down
/// or frozen) until `patience` runs out. Each attempt is bound by `d`; the
/// leader is the one remembered from the last answer, else [`discover`]ed.
/// Returns the answer and the leader's address.
pub async fn with_leader_within<T, F, Fut>(
    transport: &Transport,
    masters: &[String],
    patience: Duration,
    d: Deadlines,
    mut call: F,
) -> Result<(T, String), Status>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    if masters.is_empty() {
        return Err(Status::invalid_argument("no master address given"));
    }
    // The address check only: building each endpoint here (for TLS, its
    // certificates) would cost every call, status updates included.
    for m in masters {
        check_addr(m)?;
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut hint: Option<String> = None;
    loop {
        let target = match hint.take().or_else(|| remembered(masters)) {
            Some(a) => Ok(a),
            // A single master needs no question: call it.
            None if masters.len() == 1 => Ok(masters[0].clone()),
            None => discover(transport, masters, d).await,
        };
        let outcome = match &target {
            Ok(addr) => match connect_within(transport, addr, d).await {
                Ok(channel) => match tokio::time::timeout(d.call, call(channel)).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{addr} did not answer within {:?}",
                        d.call
                    ))),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e.clone()),
        };
        let last = match outcome {
            Ok(v) => {
                let addr = target.unwrap_or_default();
                remember(masters, &addr);
                return Ok((v, addr));
            }
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                forget_leader(masters);
                if let Ok(addr) = &target {
                    hint = leader_hint(&s).filter(|h| h != addr);
                }
                s
            }
            Err(s) => return Err(s),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::unavailable(format!(
                "no leader answered within {patience:?}; last answer: {}",
                last.message()
            )));
        }
        if hint.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_with_a_scheme_is_refused_at_once_by_name() {
        let e = Transport::Plain
            .endpoint("http://127.0.0.1:5050")
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("is not HOST:PORT"), "{}", e.message());
    }

    #[test]
    fn deadlines_set_for_the_process_are_the_ones_used() {
        let d = Deadlines {
            connect: Duration::from_millis(300),
            call: Duration::from_millis(700),
        };
        set_deadlines(d);
        assert_eq!(Deadlines::current(), d);
        set_deadlines(Deadlines::DEFAULT);
    }

    #[tokio::test]
    async fn a_master_that_accepts_but_never_answers_costs_one_deadline() {
        // A listener whose process never reads: the kernel completes the
        // handshake, nothing more — as with a SIGSTOPped master.
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = frozen.local_addr().unwrap().to_string();
        let d = Deadlines {
            connect: Duration::from_millis(200),
            call: Duration::from_millis(300),
        };
        let started = std::time::Instant::now();
        let e = with_leader_within(
            &Transport::Plain,
            &[addr],
            Duration::from_millis(100),
            d,
            |ch| async move {
                op::discovery_client::DiscoveryClient::new(ch)
                    .leader(op::LeaderRequest {})
                    .await
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(frozen);
    }
}
