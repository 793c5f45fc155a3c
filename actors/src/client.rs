//! Finding the leader from the client side (the CLI, agents, framework
//! clients, tests): try the given masters, follow `orrery-leader` answers,
//! and retry UNAVAILABLE until a deadline.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use crate::LEADER_METADATA;
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

impl Transport {
    fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        match self {
            Transport::Plain => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Status::invalid_argument(format!("{addr:?} is not HOST:PORT: {e}"))),
            Transport::Tls(tls) => tls.endpoint(addr).map_err(Status::invalid_argument),
        }
    }
}

/// Opens a channel to `addr` (HOST:PORT).
pub async fn connect(transport: &Transport, addr: &str) -> Result<Channel, Status> {
    let endpoint = transport
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(|e| {
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

/// Runs `call` against the leader among `masters`, following redirects and
/// retrying UNAVAILABLE (no leader yet, a leader recovering, a master down)
/// until `patience` runs out. Returns the answer and the leader's address.
pub async fn with_leader<T, F, Fut>(
    transport: &Transport,
    masters: &[String],
    patience: Duration,
    mut call: F,
) -> Result<(T, String), Status>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    if masters.is_empty() {
        return Err(Status::invalid_argument("no master address given"));
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    loop {
        let addr = hint.take().unwrap_or_else(|| {
            let a = masters[next % masters.len()].clone();
            next += 1;
            a
        });
        let outcome = match connect(transport, &addr).await {
            Ok(channel) => call(channel).await,
            Err(e) => Err(e),
        };
        let last = match outcome {
            Ok(v) => return Ok((v, addr)),
            Err(s) if s.code() == Code::Unavailable => {
                hint = leader_hint(&s).filter(|h| *h != addr);
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
