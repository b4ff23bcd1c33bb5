//! A TCP forwarder that a test can stop and start again on the same port, to make a dependency
//! unreachable for one application without stopping the shared server other tests are using.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
    task::JoinSet,
};

/// Forwards `127.0.0.1:<port>` to `target` while running.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    running: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl TcpProxy {
    /// Starts forwarding from a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy port");
        let port = listener.local_addr().expect("bound").port();
        let proxy = Self { port, target, running: Arc::new(Mutex::new(None)) };
        proxy.serve(listener).await;
        proxy
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listener and every forwarded connection: clients see connection refused/reset.
    pub async fn stop(&self) {
        if let Some(mut tasks) = self.running.lock().await.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Listens on the same port again.
    pub async fn resume(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("re-bind proxy port");
        self.serve(listener).await;
    }

    async fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.running.lock().await = Some(tasks);
    }
}
