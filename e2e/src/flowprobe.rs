//! What a failover does to traffic, seen from a pod: [`serve`] echoes UDP datagrams and TCP streams on one
//! port; [`run`] sends a UDP probe every interval and a continuous TCP stream (a small write every
//! interval) to it, and reports the longest gap between UDP answers, the longest stall of the TCP echo,
//! and whether the TCP connection survived (no error, every byte echoed back in the end). `ferry-lab
//! flow-probe serve|run` runs them inside a pod's network namespace (`nsenter -t <pid> -n`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes of each TCP write.
const CHUNK: usize = 64;

/// What [`run`] saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    /// UDP probes sent.
    pub udp_sent: u64,
    /// UDP answers received.
    pub udp_answered: u64,
    /// The longest time without a UDP answer, seconds (from the start: before the first answer counts).
    pub gap_seconds: f64,
    /// When that gap began, seconds after the start.
    pub gap_at_seconds: f64,
    /// The TCP connection lived through the run: no error, every byte echoed.
    pub tcp_survived: bool,
    /// Why not, when it did not.
    pub tcp_error: Option<String>,
    /// The longest time without TCP echo bytes, seconds.
    pub tcp_stall_seconds: f64,
    /// Bytes written and echoed back.
    pub tcp_bytes: u64,
}

/// Echoes UDP and TCP on `port` (all addresses) until killed.
pub async fn serve(port: u16) -> Result<()> {
    let udp = tokio::net::UdpSocket::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding UDP {port}"))?;
    let tcp = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding TCP {port}"))?;
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        }
    });
    loop {
        let (mut s, _) = tcp.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// The longest gap in `answers` (instants in order) over `[start, end]`, and when it began.
pub fn longest_gap(start: Instant, answers: &[Instant], end: Instant) -> (Duration, Duration) {
    let mut prev = start;
    let mut best = (Duration::ZERO, Duration::ZERO);
    for &t in answers.iter().chain([&end]) {
        let gap = t.saturating_duration_since(prev);
        if gap > best.0 {
            best = (gap, prev.saturating_duration_since(start));
        }
        prev = t;
    }
    best
}

/// Probes `to` for `seconds` (UDP every `interval`, and the TCP stream), then waits up to 10 s for the
/// last TCP bytes to come back.
pub async fn run(to: SocketAddr, seconds: f64, interval: Duration) -> Result<Flow> {
    run_with(to, seconds, interval, CHUNK).await
}

/// [`run`] with TCP writes of `chunk` bytes. The TCP writer is a task of its own: a stalled stream (its
/// send buffer full while TCP backs off) must not hold up the UDP probes, or the UDP gap would measure
/// TCP's retransmission timer rather than the path.
async fn run_with(to: SocketAddr, seconds: f64, interval: Duration, chunk: usize) -> Result<Flow> {
    let udp = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
    udp.connect(to).await?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
        .await
        .with_context(|| format!("connecting to {to}: no answer in 5s"))?
        .with_context(|| format!("connecting to {to}"))?;
    tcp.set_nodelay(true)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let drain_until = end + Duration::from_secs(10);
    let (mut rd, mut wr) = tcp.into_split();
    let mut writer = tokio::spawn(async move {
        let bytes = vec![b'f'; chunk];
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut written = 0u64;
        // the write half comes back with the result: dropping it here would send a FIN, the echo server
        // would close, and that EOF could be read before the last echo is counted
        loop {
            tick.tick().await;
            if Instant::now() >= end {
                return (written, None, wr);
            }
            match wr.write_all(&bytes).await {
                Ok(()) => written += chunk as u64,
                Err(e) => return (written, Some(format!("write: {e}")), wr),
            }
        }
    });
    let mut flow = Flow::default();
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // (bytes written, its error) once the writer is done; its write half is kept open until the end
    let mut wrote: Option<(u64, Option<String>)> = None;
    let mut write_half = None;
    let mut echoed = 0u64;
    let mut last_echo = start;
    let mut stall = Duration::ZERO;
    let mut ubuf = [0u8; 64];
    let mut tbuf = [0u8; 4096];
    let mut read_error: Option<String> = None;
    let mut sending = true;
    loop {
        let write_error = wrote.as_ref().and_then(|w| w.1.clone());
        if let Some((written, _)) = &wrote
            && !sending
            && (echoed >= *written || write_error.is_some() || read_error.is_some())
        {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if sending => {
                if Instant::now() >= end {
                    sending = false;
                    continue;
                }
                flow.udp_sent += 1;
                let _ = udp.send(&flow.udp_sent.to_be_bytes()).await;
            }
            r = udp.recv(&mut ubuf), if sending => {
                if r.is_ok() {
                    flow.udp_answered += 1;
                    answers.push(Instant::now());
                }
            }
            r = rd.read(&mut tbuf), if read_error.is_none() => match r {
                Ok(0) => read_error = Some("closed by the peer".into()),
                Ok(n) => {
                    let now = Instant::now();
                    stall = stall.max(now - last_echo);
                    last_echo = now;
                    echoed += n as u64;
                }
                Err(e) => read_error = Some(format!("read: {e}")),
            },
            w = &mut writer, if wrote.is_none() => {
                wrote = Some(match w {
                    Ok((n, e, half)) => {
                        write_half = Some(half);
                        (n, e)
                    }
                    Err(e) => (0, Some(format!("the writer: {e}"))),
                });
            }
            _ = tokio::time::sleep_until(drain_until) => break,
        }
    }
    if wrote.is_none() {
        writer.abort();
    }
    drop(write_half);
    let (written, write_error) =
        wrote.unwrap_or((echoed, Some("a write still blocked 10s after the end".into())));
    let (gap, at) = longest_gap(start, &answers, end);
    flow.gap_seconds = round3(gap.as_secs_f64());
    flow.gap_at_seconds = round3(at.as_secs_f64());
    flow.tcp_stall_seconds = round3(stall.as_secs_f64());
    flow.tcp_bytes = echoed;
    let mut error = write_error.or(read_error);
    if error.is_none() && echoed < written {
        error = Some(format!("{} of {written} bytes never echoed", written - echoed));
    }
    flow.tcp_survived = error.is_none();
    flow.tcp_error = error;
    Ok(flow)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_start_and_the_end() {
        let s = Instant::now();
        let ms = |m: u64| s + Duration::from_millis(m);
        // answers every 10 ms, then nothing from 100 to 2600, then again
        let mut a: Vec<Instant> = (1..=10).map(|i| ms(i * 10)).collect();
        a.extend((0..10).map(|i| ms(2600 + i * 10)));
        let (gap, at) = longest_gap(s, &a, ms(2700));
        assert_eq!(gap, Duration::from_millis(2500));
        assert_eq!(at, Duration::from_millis(100));
        // no answer at all: the whole run is the gap
        assert_eq!(longest_gap(s, &[], ms(3000)).0, Duration::from_millis(3000));
        // the path never came back: the gap runs to the end
        assert_eq!(longest_gap(s, &a[..10], ms(5000)).0, Duration::from_millis(4900));
    }

    #[tokio::test]
    async fn a_healthy_path_has_no_gap_and_the_stream_survives() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        tokio::spawn(serve(port));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let f = run(
            format!("127.0.0.1:{port}").parse().unwrap(),
            0.5,
            Duration::from_millis(10),
        )
        .await
        .unwrap();
        assert!(f.tcp_survived, "{f:?}");
        assert!(f.udp_answered > 20 && f.udp_answered <= f.udp_sent, "{f:?}");
        assert!(f.gap_seconds < 0.3, "{f:?}");
        assert!(f.tcp_bytes > 20 * CHUNK as u64, "{f:?}");
        // nobody there: the connection is refused, an error naming it
        let e = run(
            format!("127.0.0.1:{}", port + 1).parse().unwrap(),
            0.1,
            Duration::from_millis(10),
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("connecting to"), "{e:#}");
    }

    #[tokio::test]
    async fn a_stalled_tcp_stream_does_not_hold_up_the_udp_probes() {
        // the UDP echo answers, the TCP peer accepts and never reads: the stream's buffers fill and its
        // writes block, as in an outage while TCP backs off
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        tokio::spawn(async move {
            let (_held, _) = tcp.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let f = tokio::time::timeout(
            Duration::from_secs(20),
            run_with(
                format!("127.0.0.1:{port}").parse().unwrap(),
                1.0,
                Duration::from_millis(2),
                1 << 20,
            ),
        )
        .await
        .expect("the probe ends even when the stream never drains")
        .unwrap();
        assert!(f.udp_answered > 100, "{f:?}");
        assert!(f.gap_seconds < 0.3, "the UDP probes went on: {f:?}");
        assert!(!f.tcp_survived && f.tcp_error.is_some(), "{f:?}");
    }
}
