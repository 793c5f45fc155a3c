//! Serving tonic routes on a bound listener until told to stop: one way for
//! the raft replica, the TiKV test double and a master on TiKV, in plain
//! TCP or mutual TLS.

use tokio::sync::oneshot;

use crate::security::{Principal, Tls};

/// The path prefix of the master-to-master services (raft and the log).
pub const RAFT_PATH_PREFIX: &str = "/orrery.raft.v1.";

/// Streams one client connection may have open at once (HTTP/2's
/// SETTINGS_MAX_CONCURRENT_STREAMS): a client past it waits on its side of
/// the connection, which is where a flood's backlog belongs. Without it a
/// flood of small unary calls opens streams faster than the server reads
/// their bodies, and h2 closes the whole connection (GOAWAY
/// ENHANCE_YOUR_CALM "too_many_data_frames": its budget for buffered small
/// DATA frames is half the connection window), failing every call in flight
/// on it with an unknown outcome — found by `orrery bench overload`.
///
/// 64 and not more: every open stream is a ready task on the server's
/// runtime, and a call the master admitted waits behind all of them at each
/// step (its wakeups join the same queue). At 1,024 per connection an
/// overload held 8,192 ready calls and admitted calls took up to 2.5 s
/// inside the master; at 64 at most 500 ms (BENCHMARKS.md, "Overload").
/// Nginx's default is 128, Go's 250; a client with more calls at once
/// queues them on its side.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The HTTP/2 connection window: h2's budget for buffered small DATA
/// frames is half of it (1 MiB: ~4,400 frames of a small call, far more than
/// [`MAX_STREAMS_PER_CONNECTION`] streams can hold).
pub const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// HTTP/2 PING interval on every server connection (and every Orrery
/// client channel): a peer that stops answering — frozen, paused, cut off
/// without a reset — has its connection closed after [`KEEPALIVE_TIMEOUT`]
/// more, which ends its streams (an agent's `Attach`, a framework's
/// `Subscribe`) instead of leaving them open to nobody.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a keepalive PING may go unanswered.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// TCP keepalive on every accepted and opened socket: the kernel's probes
/// find a peer whose host is gone even on a connection with nothing due.
pub const TCP_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// TCP keepalive on an accepted connection (tokio's socket has no setter).
pub fn set_tcp_keepalive(s: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "TCP keepalive not set on an accepted connection");
    }
}

/// Serves `routes` on `listener` until `stop` fires (or its sender is
/// dropped). With `tls`, every connection is mutual TLS (see
/// [`crate::security`]) and the raft and log services answer masters only.
/// `what` names the server in the log.
pub fn spawn_routes(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    stop: oneshot::Receiver<()>,
    what: &'static str,
    tls: Option<&Tls>,
) -> Result<tokio::task::JoinHandle<()>, crate::Fatal> {
    let Some(tls) = tls else {
        // TCP_NODELAY on every accepted connection: with Nagle on, a
        // response written in two parts waits for the client's delayed ACK
        // (~40 ms). (The TLS listener sets it too.)
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                    set_tcp_keepalive(s);
                }
                s
            },
        );
        return Ok(tokio::spawn(serve(routes, incoming, stop, what)));
    };
    let config = tls.server_config(&[b"h2"])?;
    let routes = tonic::service::Routes::from(
        routes
            .into_axum_router()
            .layer(axum::middleware::from_fn(masters_only_on_raft)),
    );
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(crate::security::tls_incoming(
            listener, config, what,
        )),
        Ok::<_, std::io::Error>,
    );
    Ok(tokio::spawn(serve(routes, incoming, stop, what)))
}

/// Serves `routes` on the `incoming` connections (plain or TLS) until
/// `stop` fires; a server that fails is logged, naming `what`.
async fn serve<IO>(
    routes: tonic::service::Routes,
    incoming: impl tokio_stream::Stream<Item = Result<IO, std::io::Error>> + Send + 'static,
    stop: oneshot::Receiver<()>,
    what: &'static str,
) where
    IO: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the {what} server stopped");
    }
}

/// The raft and log services answer only a peer holding a master
/// certificate: an agent's or a client's is refused (PERMISSION_DENIED),
/// no certificate at all is UNAUTHENTICATED. Both are logged.
async fn masters_only_on_raft(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    if !path.starts_with(RAFT_PATH_PREFIX) {
        return next.run(req).await;
    }
    let refusal = match crate::security::peer_principal(req.extensions()) {
        Some(Ok(Principal::Master(_))) => return next.run(req).await,
        Some(Ok(other)) => tonic::Status::permission_denied(format!(
            "{path} answers masters only; this is the certificate of {other}"
        )),
        Some(Err(e)) => tonic::Status::unauthenticated(format!(
            "the client certificate is not an Orrery one: {e}"
        )),
        None => tonic::Status::unauthenticated(format!(
            "{path} needs a master's client certificate; none was presented"
        )),
    };
    tracing::warn!(path, code = ?refusal.code(), "refused: {}", refusal.message());
    refusal.into_http()
}
