//! The built-in echo server that lab pods run (no container runtime exists here) and its client.
//!
//! The server speaks two protocols on one port: an HTTP request (`GET`, `HEAD`, `POST`, `PUT`) gets a JSON
//! answer naming the pod, the address it was reached on and the client's address as the pod sees it (so
//! tests can check NAT); anything else is echoed back byte for byte until the client closes.
//! The client sends N bytes, reads the echo concurrently, and compares SHA-256 digests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HTTP_METHODS: [&[u8]; 4] = [b"GET ", b"HEAD", b"POST", b"PUT "];

/// Serves forever on `[::]:port` (IPv4 too) or `0.0.0.0:port` where IPv6 is off; exits on SIGTERM.
pub async fn serve(port: u16, pod: String) -> Result<()> {
    let listener = match TcpListener::bind(("::", port)).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding port {port}"))?,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            accepted = listener.accept() => {
                let (sock, peer) = accepted?;
                let pod = pod.clone();
                tokio::spawn(async move { let _ = handle(sock, peer, &pod).await; });
            }
        }
    }
}

async fn handle(mut sock: TcpStream, peer: SocketAddr, pod: &str) -> Result<()> {
    let mut first = [0u8; 4];
    let n = sock.peek(&mut first).await?;
    if n == 4 && HTTP_METHODS.contains(&&first[..]) {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let local = sock.local_addr()?;
        let path = String::from_utf8_lossy(&req)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let body = serde_json::json!({
            "pod": pod, "server": unmap(local).ip().to_string(), "client": unmap(peer).ip().to_string(), "path": path
        })
        .to_string()
            + "\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        sock.shutdown().await?;
        return Ok(());
    }
    let (mut r, mut w) = sock.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(())
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// What one echo round trip measured.
#[derive(Debug, Serialize, PartialEq)]
pub struct EchoReport {
    /// Bytes sent (and received back).
    pub bytes: u64,
    /// SHA-256 of what was sent.
    pub sent_sha256: String,
    /// SHA-256 of what came back.
    pub received_sha256: String,
    /// Both digests match and every byte came back.
    pub ok: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Deterministic, incompressible-looking payload byte `i` (xorshift-like).
fn payload_block(block: u64, buf: &mut [u8]) {
    let mut x = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Sends `bytes` to an echo server at `addr` and checks that exactly the same bytes come back, within
/// `timeout` (a stalled transfer is an error, which is how an MTU blackhole shows).
pub async fn round_trip(addr: SocketAddr, bytes: u64, timeout: Duration) -> Result<EchoReport> {
    let start = Instant::now();
    let work = async {
        let sock = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut r, mut w) = sock.into_split();
        let writer = tokio::spawn(async move {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            let mut block = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                payload_block(block, &mut buf[..n]);
                w.write_all(&buf[..n]).await?;
                h.update(&buf[..n]);
                sent += n as u64;
                block += 1;
            }
            w.shutdown().await?;
            anyhow::Ok(hex::encode(h.finalize()))
        });
        let mut h = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n as u64;
        }
        let sent = writer.await??;
        let received = hex::encode(h.finalize());
        anyhow::Ok(EchoReport {
            bytes: got,
            ok: got == bytes && sent == received,
            sent_sha256: sent,
            received_sha256: received,
            seconds: 0.0,
        })
    };
    let mut report = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "echo of {bytes} bytes to {addr} stalled: no completion within {}s",
            timeout.as_secs()
        ),
    };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// GETs `path` from the echo server at `addr` and returns the JSON body.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<serde_json::Value> {
    let work = async {
        let mut sock = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        sock.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut resp = String::new();
        sock.read_to_string(&mut resp).await?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("no HTTP body")?;
        anyhow::Ok(serde_json::from_str(body.trim())?)
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("GET {addr}{path} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_round_trip_and_http_on_one_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, p) = l.accept().await.unwrap();
                tokio::spawn(async move { handle(s, p, "ns/pod").await.unwrap() });
            }
        });
        let r = round_trip(addr, 3 * 1024 * 1024 + 17, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.bytes, 3 * 1024 * 1024 + 17);
        let j = http_get(addr, "/hello", Duration::from_secs(5)).await.unwrap();
        assert_eq!(j["pod"], "ns/pod");
        assert_eq!(j["client"], "127.0.0.1");
        assert_eq!(j["path"], "/hello");
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_is_reported_as_a_stall() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // accepts and never reads: the transfer must stall, and the client must say so
        tokio::spawn(async move {
            let _keep = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = round_trip(addr, 64 * 1024 * 1024, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
    }

    #[test]
    fn payload_differs_between_blocks() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        payload_block(0, &mut a);
        payload_block(1, &mut b);
        assert_ne!(a, b);
    }
}
