//! `ferry-lab flood`: many idle TCP connections to one server, for the abuse tests of the servers that face
//! peers. Opens `count` connections from source addresses `127.0.1.<1..=sources>` (one address has only
//! ~28,000 ephemeral ports), sends nothing, then reports how many the server closed at once (over its
//! limits) and how many after `hold` seconds (its idle timeout). A process can hold at most its open-file
//! limit; the tests run several floods side by side for more.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What one flood saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloodReport {
    /// Connections the kernel completed.
    pub opened: usize,
    /// Seconds opening them took.
    pub open_seconds: f64,
    /// Closed by the server within `settle` after the last was opened.
    pub closed_at_once: usize,
    /// Closed by the server after `hold` seconds.
    pub closed_after_hold: usize,
}

/// How many of `conns` the server has closed (a read sees EOF or an error at once).
async fn closed(conns: &mut [(TcpStream, bool)]) -> usize {
    for (c, done) in conns.iter_mut().filter(|(_, d)| !*d) {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await {
            *done = true;
        }
    }
    conns.iter().filter(|(_, d)| *d).count()
}

/// Opens `count` connections to `to` from `sources` loopback addresses, 500 at a time, then reports.
pub async fn flood(
    to: SocketAddr,
    count: usize,
    sources: u8,
    settle: Duration,
    hold: Duration,
) -> FloodReport {
    // as many descriptors as this process may have
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let start = Instant::now();
    let mut conns: Vec<(TcpStream, bool)> = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let batch: Vec<_> = (i..(i + 500).min(count))
            .map(|k| async move {
                let s = tokio::net::TcpSocket::new_v4().ok()?;
                let src = std::net::Ipv4Addr::new(127, 0, 1, 1 + (k % usize::from(sources.max(1))) as u8);
                s.bind((src, 0).into()).ok()?;
                tokio::time::timeout(Duration::from_secs(10), s.connect(to))
                    .await
                    .ok()?
                    .ok()
            })
            .collect();
        conns.extend(
            futures::future::join_all(batch)
                .await
                .into_iter()
                .flatten()
                .map(|c| (c, false)),
        );
        i += 500;
    }
    let opened = conns.len();
    let open_seconds = start.elapsed().as_secs_f64();
    let settled = Instant::now() + settle;
    let mut closed_at_once = closed(&mut conns).await;
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(200)).await;
        closed_at_once = closed(&mut conns).await;
    }
    tokio::time::sleep(hold.saturating_sub(settle)).await;
    let closed_after_hold = closed(&mut conns).await;
    FloodReport {
        opened,
        open_seconds,
        closed_at_once,
        closed_after_hold,
    }
}
