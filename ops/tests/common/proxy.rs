//! A TCP proxy in the test process whose two directions can be cut apart:
//! a cut direction stops being read (its bytes wait in the kernel, its
//! sender's window fills), as a link that silently drops packets looks to
//! TCP; healed, the bytes flow again, as retransmits deliver them. Nothing
//! is closed by a cut, so neither side learns of it from the socket.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct Proxy {
    pub addr: String,
    /// Client → upstream cut.
    pub up_cut: Arc<AtomicBool>,
    /// Upstream → client cut.
    pub down_cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream`.
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let up_cut = Arc::new(AtomicBool::new(false));
        let down_cut = Arc::new(AtomicBool::new(false));
        let (up, down) = (up_cut.clone(), down_cut.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                conns.spawn(pipe(cr, sw, up.clone()));
                conns.spawn(pipe(sr, cw, down.clone()));
            }
        });
        Proxy {
            addr,
            up_cut,
            down_cut,
            task,
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read while whole, held if cut meanwhile: the bytes go on after
        // the heal, in order.
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
