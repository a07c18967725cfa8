//! Listening where peers (or anyone) can reach: a deep accept queue, connection caps in total and per
//! source address, accept errors (EMFILE in a flood) survived, and the process's fd limit raised. Shared
//! by the broker, the webhook and ferry-dns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Limits of a server that faces peers (the broker, the webhook, ferry-dns over TCP).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections held at once, in total; more are closed at once.
    pub max_connections: usize,
    /// Connections held at once from one source address; more are closed at once.
    pub max_per_source: usize,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a request's headers to arrive (also how long an idle keep-alive connection is kept) and for
    /// its body.
    pub idle_timeout: Duration,
    /// The longest a connection lives; then it is closed gracefully after its request in flight.
    pub max_lifetime: Duration,
    /// What becomes of a connection past `max_connections`.
    pub when_full: WhenFull,
}

/// What becomes of a connection past [`Limits::max_connections`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Closed at once (a server facing peers: a flood is refused, not queued).
    #[default]
    Close,
    /// Left in the kernel's accept queue until a held connection ends (the pod webhook: its callers are
    /// this cluster's apiservers, whose reviews must wait rather than fail, and each connection held costs
    /// its TLS and HTTP buffers).
    Wait,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            when_full: WhenFull::Close,
        }
    }
}

/// Default [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default [`Limits::max_per_source`].
pub const DEFAULT_MAX_PER_SOURCE: usize = 128;
/// Default [`Limits::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Limits::max_lifetime`].
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(300);

/// Counts held connections, in total and per source address; a [`ConnSlot`] gives its place back when
/// dropped.
#[derive(Debug, Default)]
pub struct ConnTracker {
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed at once because a limit was reached.
    pub refused: AtomicU64,
    /// Told each time a held connection ends.
    freed: tokio::sync::Notify,
}

/// One admitted connection's place in a [`ConnTracker`].
#[derive(Debug)]
pub struct ConnSlot {
    tracker: Arc<ConnTracker>,
    source: IpAddr,
}

impl ConnTracker {
    /// A place for a connection from `source` within `limits`, or `None` (close it).
    pub fn admit(self: &Arc<Self>, source: IpAddr, limits: &Limits) -> Option<ConnSlot> {
        let mut per = self.per_source.lock().expect("lock");
        let n = per.get(&source).copied().unwrap_or(0);
        if n >= limits.max_per_source || self.total.load(Ordering::Relaxed) >= limits.max_connections {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        per.insert(source, n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot {
            tracker: self.clone(),
            source,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per = self.tracker.per_source.lock().expect("lock");
        if let Some(n) = per.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.source);
            }
        }
        self.tracker.total.fetch_sub(1, Ordering::Relaxed);
        self.tracker.freed.notify_one();
    }
}

/// Accepts the next connection admitted by `tracker`. Errors of `accept` (EMFILE when the process is out of
/// file descriptors, ECONNABORTED, ...) are logged at most once a second and retried after a pause, never
/// fatal: the server outlives a flood.
pub async fn accept_admitted(
    listener: &TcpListener,
    tracker: &Arc<ConnTracker>,
    limits: &Limits,
) -> (TcpStream, SocketAddr, ConnSlot) {
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        if limits.when_full == WhenFull::Wait {
            // a connection ending stores its notice if no one waits yet: none is missed
            while tracker.held() >= limits.max_connections {
                tracker.freed.notified().await;
            }
        }
        match listener.accept().await {
            Ok((tcp, peer)) => match tracker.admit(peer.ip(), limits) {
                Some(slot) => return (tcp, peer, slot),
                None => drop(tcp),
            },
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!("accept: {e} (retrying; {} connections held)", tracker.held());
                    last_warning = Some(std::time::Instant::now());
                }
                // out of descriptors or memory: give held connections time to end
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A listening socket for a server that faces peers: a deep accept queue (4096), so a burst of connections
/// waits in the kernel instead of being dropped and retried.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Raises this process's open-file limit to its hard limit (a server facing peers needs many).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!("raising the open-file limit from {soft} to {hard}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_source_and_in_total_and_slots_come_back() {
        let t = Arc::new(ConnTracker::default());
        let limits = Limits {
            max_connections: 3,
            max_per_source: 2,
            ..Default::default()
        };
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = t.admit(a, &limits).unwrap();
        let _s2 = t.admit(a, &limits).unwrap();
        assert!(t.admit(a, &limits).is_none(), "a third from one source");
        let _s3 = t.admit(b, &limits).unwrap();
        assert!(t.admit(b, &limits).is_none(), "over the total");
        assert_eq!(t.held(), 3);
        drop(s1);
        assert_eq!(t.held(), 2);
        assert!(
            t.admit(a, &limits).is_some(),
            "a slot comes back when its connection ends"
        );
        assert_eq!(t.refused.load(Ordering::Relaxed), 2);
    }

    /// Past the cap, a waiting server leaves the next connection in the accept queue (its client gets no
    /// answer yet, and no close) and takes it as soon as a held one ends.
    #[tokio::test]
    async fn a_waiting_server_takes_a_connection_past_the_cap_only_when_one_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            max_per_source: 1,
            when_full: WhenFull::Wait,
            ..Default::default()
        };
        let tracker = Arc::new(ConnTracker::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn({
            let tracker = tracker.clone();
            async move {
                loop {
                    let (mut tcp, _, slot) = accept_admitted(&listener, &tracker, &limits).await;
                    // greets, then holds the connection (and its slot) until told to let it go
                    tcp.write_all(b"hi").await.unwrap();
                    tx.send((tcp, slot)).unwrap();
                }
            }
        });
        let greeted = |mut c: tokio::net::TcpStream| async move {
            let mut b = [0u8; 2];
            tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut b))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
        };
        let first = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(greeted(first).await, "the first connection is taken");
        let held = rx.recv().await.unwrap();
        let second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut second_r, mut second_w) = second.into_split();
        let mut b = [0u8; 2];
        let early = tokio::time::timeout(Duration::from_millis(300), second_r.read_exact(&mut b)).await;
        assert!(
            early.is_err(),
            "past the cap: left waiting, neither greeted nor closed"
        );
        assert_eq!(tracker.refused.load(Ordering::Relaxed), 0);
        drop(held);
        let later = tokio::time::timeout(Duration::from_secs(2), second_r.read_exact(&mut b)).await;
        assert!(matches!(later, Ok(Ok(_))), "taken once the held one ended");
        assert_eq!(&b, b"hi");
        second_w.shutdown().await.ok();
        server.abort();
    }
}
