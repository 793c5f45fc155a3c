//! Serving tonic routes on a bound listener until told to stop: one way for
//! the raft replica, the TiKV test double and a master on TiKV.

use tokio::sync::oneshot;

/// Serves `routes` on `listener` until `stop` fires (or its sender is
/// dropped). `what` names the server in the error log if it fails.
pub fn spawn_routes(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    stop: oneshot::Receiver<()>,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // TCP_NODELAY on every accepted connection: with Nagle on, a
        // response written in two parts waits for the client's delayed
        // ACK (~40 ms).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            },
        );
        let result = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the {what} server stopped");
        }
    })
}
