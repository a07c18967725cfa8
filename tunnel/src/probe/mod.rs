//! Probes over UDP, answered by the peer gateway's responder:
//! - **path MTU** on the underlay (DPLPMTUD-like, RFC 8899): DF probes of a given size, binary search,
//!   no reliance on ICMP "fragmentation needed", which the network may drop (the MTU blackhole);
//! - **health** inside the tunnel: a probe every 500 ms, the tunnel counts as down after 3 misses.
//!
//! Wire format: `FYPM` + 8-byte nonce + padding (MTU probe) or `FYHB` + nonce (heartbeat); the responder
//! answers `FYAK` + the nonce + the 4-byte size it received.

pub mod sockopt;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

const MTU_MAGIC: &[u8; 4] = b"FYPM";
const HB_MAGIC: &[u8; 4] = b"FYHB";
const ACK_MAGIC: &[u8; 4] = b"FYAK";

/// The port of the heartbeat responder on each side's tunnel address (inside the tunnel every link has
/// its own addresses, so one well-known port serves all; the two sides' underlay ports may differ).
pub const TUNNEL_PROBE_PORT: u16 = 51819;

/// Answers probes on `bind` until the task is dropped.
pub async fn respond(bind: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(bind).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        if n >= 12 && (&buf[..4] == MTU_MAGIC || &buf[..4] == HB_MAGIC) {
            let mut ack = Vec::with_capacity(16);
            ack.extend_from_slice(ACK_MAGIC);
            ack.extend_from_slice(&buf[4..12]);
            ack.extend_from_slice(&(n as u32).to_be_bytes());
            let _ = sock.send_to(&ack, from).await;
        }
    }
}

fn header_bytes(peer: &IpAddr) -> usize {
    if peer.is_ipv4() { 20 + 8 } else { 40 + 8 }
}

async fn probe_once(
    sock: &UdpSocket,
    peer: SocketAddr,
    magic: &[u8; 4],
    size: usize,
    wait: Duration,
) -> Option<Duration> {
    let nonce: u64 = rand_nonce();
    let payload = size.saturating_sub(header_bytes(&peer.ip())).max(12);
    let mut msg = vec![0u8; payload];
    msg[..4].copy_from_slice(magic);
    msg[4..12].copy_from_slice(&nonce.to_be_bytes());
    let start = Instant::now();
    // EMSGSIZE: larger than the local link: counts as lost
    sock.send_to(&msg, peer).await.ok()?;
    let mut buf = [0u8; 64];
    let deadline = start + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let Ok(Ok((n, _))) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            return None;
        };
        if n >= 16 && &buf[..4] == ACK_MAGIC && buf[4..12] == nonce.to_be_bytes() {
            return Some(start.elapsed());
        }
    }
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A UDP socket for path MTU probes to `peer`: DF set, never fragmented locally, the kernel's cached path
/// MTU ignored (`IP_PMTUDISC_PROBE`).
pub async fn mtu_socket(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    sockopt::set_pmtudisc_probe(&sock, peer.is_ipv6())?;
    Ok(sock)
}

/// How long an MTU probe waits for its answer.
pub const MTU_PROBE_WAIT: Duration = Duration::from_millis(150);

/// One DF probe of `size` bytes (the whole IP packet) to `peer`'s responder: answered in time or not.
pub async fn mtu_probe(sock: &UdpSocket, peer: SocketAddr, size: u32) -> bool {
    probe_once(sock, peer, MTU_MAGIC, size as usize, MTU_PROBE_WAIT)
        .await
        .is_some()
}

/// Finds the largest IP packet size in `[lo, hi]` that reaches `peer`'s responder with DF set: one search
/// of [`crate::pmtud::Pmtud`]. Returns `None` when not even `lo` gets through (peer down or not answering).
pub async fn path_mtu(peer: SocketAddr, lo: u32, hi: u32) -> std::io::Result<Option<u32>> {
    let sock = mtu_socket(peer).await?;
    let mut m = crate::pmtud::Pmtud::new(lo, hi);
    loop {
        let (size, _) = m.next();
        match m.observe(mtu_probe(&sock, peer, size).await) {
            crate::pmtud::Outcome::Pending => {}
            crate::pmtud::Outcome::Settled { to, .. } => return Ok(Some(to)),
            crate::pmtud::Outcome::NoAnswer { .. } => return Ok(None),
        }
    }
}

/// One heartbeat to the peer's responder inside the tunnel; the round-trip time if it came back.
pub async fn heartbeat(sock: &UdpSocket, peer: SocketAddr, wait: Duration) -> Option<Duration> {
    probe_once(sock, peer, HB_MAGIC, 64, wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responder_answers_heartbeats_and_mtu_probes_on_loopback() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let task = tokio::spawn(respond(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(heartbeat(&sock, addr, Duration::from_secs(1)).await.is_some());
        // loopback's MTU is 65536: the search tops out at hi
        assert_eq!(path_mtu(addr, 1280, 9000).await.unwrap(), Some(9000));
        task.abort();
        // nobody answers: no heartbeat, no MTU
        let silent: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            heartbeat(&sock, silent, Duration::from_millis(200))
                .await
                .is_none()
        );
        assert_eq!(path_mtu(silent, 1280, 1500).await.unwrap(), None);
    }
}
