//! A small TCP proxy on loopback that can cut, refuse and stall the connections it carries.
//!
//! No fault-injection proxy can be installed on the machines this runs on, and killing a
//! broker's or a database's connections from outside needs privileges; so the chaos suite
//! points a worker at this proxy instead of at the server, and breaks the link on a schedule.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Pass,
    /// Keep connections open but forward nothing, as a network partition or a stalled server
    /// looks from the client.
    Stall,
    /// Close new connections at once, as a server that is down.
    Refuse,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// The forwarding tasks of open connections, so `cut` can end them all.
    open: Mutex<Vec<AbortHandle>>,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            mode,
            open: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, target, shared.clone())).abort_handle();
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection now; new ones are accepted as before.
    pub fn cut(&self) {
        let open = std::mem::take(&mut *self.open());
        for task in open {
            task.abort();
        }
    }

    /// Stops forwarding (connections stay open and silent) until `resume`.
    pub fn stall(&self) {
        self.shared.mode.send_replace(Mode::Stall);
    }

    /// Cuts every connection and refuses new ones until `resume`, as a server that is down.
    pub fn refuse(&self) {
        self.shared.mode.send_replace(Mode::Refuse);
        self.cut();
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.shared.mode.send_replace(Mode::Pass);
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // The mode is read and the connection registered under the lock `cut` takes, so a
        // connection accepted while `refuse` runs is either refused or cut, never missed.
        let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
        if *shared.mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        let mode = shared.mode.subscribe();
        let task = tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending ends the connection.
            tokio::select! {
                _ = pump(client_read, server_write, mode.clone()) => {}
                _ = pump(server_read, client_write, mode) => {}
            }
        });
        open.retain(|t| !t.is_finished());
        open.push(task.abort_handle());
    }
}

/// Copies bytes one way, holding them while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn it_forwards_stalls_cuts_and_refuses() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let long = Duration::from_secs(5);
        assert_eq!(round_trip(&mut s, long).await, Some(b"ping".to_vec()));

        proxy.stall();
        assert_eq!(round_trip(&mut s, Duration::from_millis(300)).await, None);
        proxy.resume();
        // The stalled ping arrives, then the next one.
        let mut held = [0u8; 4];
        s.read_exact(&mut held).await.unwrap();
        assert_eq!(round_trip(&mut s, long).await, Some(b"ping".to_vec()));

        proxy.cut();
        let mut buf = [0u8; 4];
        let closed = tokio::time::timeout(long, s.read(&mut buf)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "the connection is closed");

        proxy.refuse();
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut refused, Duration::from_millis(500)).await,
            None
        );
        proxy.resume();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, long).await, Some(b"ping".to_vec()));
    }
}
