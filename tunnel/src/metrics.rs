//! The gateway's `/metrics` (Prometheus text format, prometheus-client) and `/health`, on a plain
//! HTTP/1.1 listener: tunnel up, heartbeat latency, bytes each way, tunnel MTU, re-applies.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::health::GatewayStatus;

/// The gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    connected: Gauge,
    latency: Gauge<f64, AtomicU64>,
    rx: Gauge,
    tx: Gauge,
    mtu: Gauge,
    path_mtu: Gauge,
    mtu_changes: Gauge,
    reapplied: Gauge,
}

impl GatewayMetrics {
    /// Registers every metric under `ferry_tunnel_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry_tunnel");
        let (connected, latency, rx, tx, mtu, reapplied) = (
            Gauge::default(),
            Gauge::<f64, AtomicU64>::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "connected",
            "1 while heartbeats inside the tunnel are answered",
            connected.clone(),
        );
        registry.register("latency_seconds", "last heartbeat round trip", latency.clone());
        registry.register(
            "rx_bytes",
            "bytes received through the tunnel (WireGuard counter)",
            rx.clone(),
        );
        registry.register(
            "tx_bytes",
            "bytes sent through the tunnel (WireGuard counter)",
            tx.clone(),
        );
        registry.register("mtu_bytes", "tunnel interface MTU", mtu.clone());
        let (path_mtu, mtu_changes) = (Gauge::default(), Gauge::default());
        registry.register(
            "path_mtu_bytes",
            "underlay path MTU to the peer, as last probed (DF probes, no ICMP needed)",
            path_mtu.clone(),
        );
        registry.register(
            "mtu_changes",
            "times the path MTU changed while the tunnel was up",
            mtu_changes.clone(),
        );
        registry.register(
            "rules_reapplied",
            "times the NAT rules were found missing and re-applied",
            reapplied.clone(),
        );
        Self {
            registry,
            connected,
            latency,
            rx,
            tx,
            mtu,
            path_mtu,
            mtu_changes,
            reapplied,
        }
    }

    /// Copies a status into the gauges.
    pub fn observe(&self, s: &GatewayStatus) {
        self.connected.set(i64::from(s.connected));
        self.latency.set(s.latency_ms.unwrap_or(0.0) / 1000.0);
        self.rx.set(s.rx_bytes as i64);
        self.tx.set(s.tx_bytes as i64);
        self.mtu.set(i64::from(s.tunnel_mtu));
        self.path_mtu.set(i64::from(s.path_mtu));
        self.mtu_changes.set(s.mtu_changes as i64);
        self.reapplied.set(s.reapplied as i64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/health` (200 while connected, 503 otherwise) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<GatewayMetrics>) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, ctype) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/health" if metrics.connected.get() == 1 => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/health" => (
                    "503 Service Unavailable",
                    "tunnel not connected\n".to_string(),
                    "text/plain",
                ),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_becomes_metrics() {
        let m = GatewayMetrics::new();
        m.observe(&GatewayStatus {
            connected: true,
            latency_ms: Some(2.5),
            rx_bytes: 10,
            tx_bytes: 20,
            tunnel_mtu: 1440,
            reapplied: 1,
            ..Default::default()
        });
        let text = m.render();
        assert!(text.contains("ferry_tunnel_connected 1"), "{text}");
        assert!(text.contains("ferry_tunnel_latency_seconds 0.0025"), "{text}");
        assert!(text.contains("ferry_tunnel_tx_bytes 20"), "{text}");
        assert!(text.contains("ferry_tunnel_mtu_bytes 1440"), "{text}");
        assert!(text.contains("ferry_tunnel_rules_reapplied 1"), "{text}");
        m.observe(&GatewayStatus::default());
        assert!(m.render().contains("ferry_tunnel_connected 0"));
    }

    #[tokio::test]
    async fn health_follows_the_tunnel_and_metrics_are_served() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = Arc::new(GatewayMetrics::new());
        let task = tokio::spawn(serve(l, m.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        m.observe(&GatewayStatus {
            connected: true,
            ..Default::default()
        });
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("ferry_tunnel_connected 1"));
        task.abort();
    }
}
