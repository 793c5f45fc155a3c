//! Serving the master's HTTP (admin, Mesos APIs, web UI) with the limits a
//! server facing slow or hostile clients needs, which `axum::serve` leaves
//! out: it sets no timer, so hyper's header read timeout is off, a request
//! that declares a body and never sends it is held forever, and nothing
//! bounds the connections (500 such connections stayed open 90 s).
//!
//! Here, as nginx and Go's `http.Server` do it:
//! - request headers must arrive within [`HEADER_READ_TIMEOUT`] of their
//!   first byte (hyper's own timer);
//! - a connection from which nothing has been read for [`IDLE_TIMEOUT`] is
//!   shut down gracefully: an idle keep-alive connection closes at once, a
//!   response still being written (a Mesos event stream) is finished first;
//! - a request's body must arrive whole within [`BODY_READ_TIMEOUT`], or the
//!   answer is 408 and the connection is closed ([`read_body_within`]);
//! - at most [`CONNECTIONS_MAX`] connections at once; past it the accept
//!   waits, so the backlog stays in the kernel.
//!
//! Why hyper-util's connection builder and not a crate of its own: it is
//! what axum and tonic serve with already; the only thing missing was its
//! timer and the bounds around it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tower::ServiceExt as _;

/// A request's headers must arrive within this of their first byte
/// (hyper's default, once it has a timer).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection the client has sent nothing on for this long is shut down
/// gracefully (nginx's keep-alive timeout is 75 s, Go's servers commonly
/// 60 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request's whole body must arrive within this after its headers. The
/// APIs take small JSON or protobuf calls (kilobytes); 10 s is a slow
/// client on a bad link, not a stalled one.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (axum's default limit, which the routes had).
pub const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Connections served at once; past it new ones wait in the kernel's
/// backlog. Every open connection is a task and its buffers.
pub const CONNECTIONS_MAX: usize = 1024;

/// The read deadlines of one server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub idle: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        header_read: HEADER_READ_TIMEOUT,
        body_read: BODY_READ_TIMEOUT,
        idle: IDLE_TIMEOUT,
    };
}

/// A connection's I/O that notes when a read last brought bytes.
struct Watched<T> {
    io: T,
    last_read: Arc<std::sync::Mutex<tokio::time::Instant>>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            *self.last_read.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Reads the request's body whole within `limit` before the route sees
/// it: 408 (and the connection closed) when it does not come, 413 when it
/// is over [`BODY_BYTES_MAX`].
async fn read_body_with(req: Request, next: Next, limit: Duration) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, BODY_BYTES_MAX)).await {
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONNECTION, "close")],
            format!(
                "the request body did not arrive within {limit:?} of its headers; the connection is closed\n"
            ),
        )
            .into_response(),
        Ok(Err(e)) => {
            let too_long = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_long {
                (
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    [(axum::http::header::CONNECTION, "close")],
                    format!("the request body is over {BODY_BYTES_MAX} bytes\n"),
                )
                    .into_response()
            } else {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    [(axum::http::header::CONNECTION, "close")],
                    format!("the request body could not be read: {e}\n"),
                )
                    .into_response()
            }
        }
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}

/// Serves `router` on `listener` until `stop`, each request carrying its
/// connection's address as `ConnectInfo<L::Addr>`. In-flight connections
/// are told to finish (graceful shutdown) when `stop` fires.
pub async fn serve<L>(listener: L, router: axum::Router, stop: impl Future<Output = ()>)
where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    serve_with(listener, router, stop, Limits::DEFAULT).await
}

/// [`serve`] with other read deadlines (tests).
pub async fn serve_with<L>(
    mut listener: L,
    router: axum::Router,
    stop: impl Future<Output = ()>,
    limits: Limits,
) where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let body_read = limits.body_read;
    let router = router.layer(axum::middleware::from_fn(move |r, n| {
        read_body_with(r, n, body_read)
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (io, addr) = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let router = router.clone();
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(addr.clone()));
                    router.clone().oneshot(req.map(Body::new))
                });
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(orrery_storage::serve::KEEPALIVE_INTERVAL))
                .keep_alive_timeout(orrery_storage::serve::KEEPALIVE_TIMEOUT);
            let last_read = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
            let io = Watched {
                io,
                last_read: last_read.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut shutting = false;
            loop {
                let idle_at = *last_read.lock().unwrap_or_else(|e| e.into_inner()) + limits.idle;
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "an HTTP connection ended with an error");
                        }
                        break;
                    }
                    changed = closing.changed(), if !shutting => {
                        if changed.is_err() || *closing.borrow() {
                            shutting = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = tokio::time::sleep_until(idle_at), if !shutting => {
                        let idle_at = *last_read.lock().unwrap_or_else(|e| e.into_inner()) + limits.idle;
                        if tokio::time::Instant::now() >= idle_at {
                            shutting = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    let _ = closing.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/echo",
            axum::routing::post(|b: axum::body::Bytes| async move { format!("{}", b.len()) }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            header_read: Duration::from_millis(300),
            body_read: Duration::from_millis(300),
            idle: Duration::from_millis(500),
        };
        tokio::spawn(serve_with(
            listener,
            router,
            async {
                let _ = rx.await;
            },
            limits,
        ));
        (addr, tx)
    }

    #[tokio::test]
    async fn a_declared_body_never_sent_is_answered_408_and_the_connection_closed() {
        let (addr, _stop) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            .await
            .unwrap();
        let mut out = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        assert!(read.is_ok(), "the connection was not closed");
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("did not arrive within"), "{out}");
    }

    #[tokio::test]
    async fn headers_never_finished_and_an_idle_connection_are_closed() {
        let (addr, _stop) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a half-sent header was held past its timeout");
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "an idle connection was held past the header timeout"
        );
    }

    #[tokio::test]
    async fn a_whole_body_is_served_and_an_oversized_one_refused() {
        let (addr, _stop) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("\r\n\r\n3"), "{out}");

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            BODY_BYTES_MAX + 1
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(&vec![b'x'; BODY_BYTES_MAX + 1]).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    }
}
