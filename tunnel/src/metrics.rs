//! The gateway's metrics. [`GatewayMetrics`]: one tunnel's `/metrics` and `/health` on a listener of its
//! own (`--metrics-addr`, port + link): tunnel up, heartbeat latency, bytes each way, tunnel MTU,
//! re-applies. [`observe_peer`] / [`forget_peer`]: every tunnel of this gateway, labelled by peer, in the
//! process's registry that the admin port (`--admin-listen`) serves with its health, so one scrape sees
//! them all, and `ferry_gateway_tunnels` is there (0) when there is none.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ferry_plumbing::metrics::Labels;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// Every tunnel of this gateway, by peer (the admin port's registry).
struct Peers {
    tunnels: Gauge,
    connected: Family<Labels, Gauge>,
    latency: Family<Labels, Gauge<f64, AtomicU64>>,
    handshake_age: Family<Labels, Gauge>,
    loss: Family<Labels, Gauge<f64, AtomicU64>>,
    mtu: Family<Labels, Gauge>,
    received: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    rules_removed: Family<Labels, Counter>,
    /// What the counters were last set from, by peer: WireGuard's own counters restart with a new session
    /// (a redial), so the exported counters move by what each one grew.
    last: std::sync::Mutex<std::collections::HashMap<String, (u64, u64, u64)>>,
}

fn peers() -> &'static Peers {
    static P: std::sync::OnceLock<Peers> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let p = Peers {
            tunnels: Gauge::default(),
            connected: Family::default(),
            latency: Family::default(),
            handshake_age: Family::default(),
            loss: Family::default(),
            mtu: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            rules_removed: Family::default(),
            last: Default::default(),
        };
        use ferry_plumbing::metrics::register as r;
        r("gateway_tunnels", "tunnels this gateway runs", p.tunnels.clone());
        r(
            "gateway_tunnel_connected",
            "1 while heartbeats through the peer's tunnel are answered",
            p.connected.clone(),
        );
        r(
            "gateway_tunnel_latency_seconds",
            "last heartbeat round trip through the peer's tunnel",
            p.latency.clone(),
        );
        r(
            "gateway_tunnel_handshake_age_seconds",
            "seconds since WireGuard's last handshake with the peer",
            p.handshake_age.clone(),
        );
        r(
            "gateway_tunnel_loss_ratio",
            "heartbeats lost among the last 20 (10 s)",
            p.loss.clone(),
        );
        r("gateway_tunnel_mtu_bytes", "the peer's tunnel MTU", p.mtu.clone());
        r(
            "gateway_tunnel_received_bytes",
            "bytes received through the peer's tunnel",
            p.received.clone(),
        );
        r(
            "gateway_tunnel_sent_bytes",
            "bytes sent through the peer's tunnel",
            p.sent.clone(),
        );
        r(
            "gateway_tunnel_rules_removed",
            "times the peer's nftables rules were found removed and re-applied",
            p.rules_removed.clone(),
        );
        p
    })
}

fn peer_labels(peer: &str) -> Labels {
    vec![("peer".to_string(), peer.to_string())]
}

/// Registers the gateway's metrics, so that they are served (`ferry_gateway_tunnels 0`) before any tunnel.
pub fn register_gateway() {
    peers();
}

/// Copies the status of `peer`'s tunnel into the admin registry.
pub fn observe_peer(peer: &str, s: &GatewayStatus) {
    let p = peers();
    let l = peer_labels(peer);
    p.connected.get_or_create(&l).set(i64::from(s.connected));
    p.latency
        .get_or_create(&l)
        .set(s.latency_ms.unwrap_or(0.0) / 1000.0);
    if let Some(a) = s.diagnostics.handshake_age_seconds {
        p.handshake_age.get_or_create(&l).set(a as i64);
    }
    p.loss
        .get_or_create(&l)
        .set(s.diagnostics.loss_percent.unwrap_or(0.0) / 100.0);
    p.mtu.get_or_create(&l).set(i64::from(s.tunnel_mtu));
    let mut last = p.last.lock().expect("lock");
    let was = last.insert(
        peer.to_string(),
        (s.rx_bytes, s.tx_bytes, s.diagnostics.rules_removed),
    );
    let (rx0, tx0, rr0) = was.unwrap_or_default();
    let grew = |now: u64, before: u64| if now >= before { now - before } else { now };
    p.received.get_or_create(&l).inc_by(grew(s.rx_bytes, rx0));
    p.sent.get_or_create(&l).inc_by(grew(s.tx_bytes, tx0));
    p.rules_removed
        .get_or_create(&l)
        .inc_by(grew(s.diagnostics.rules_removed, rr0));
    p.tunnels.set(last.len() as i64);
}

/// Removes `peer`'s tunnel from the admin registry (it was taken down).
pub fn forget_peer(peer: &str) {
    let p = peers();
    let l = peer_labels(peer);
    p.connected.remove(&l);
    p.latency.remove(&l);
    p.handshake_age.remove(&l);
    p.loss.remove(&l);
    p.mtu.remove(&l);
    p.received.remove(&l);
    p.sent.remove(&l);
    p.rules_removed.remove(&l);
    let mut last = p.last.lock().expect("lock");
    last.remove(peer);
    p.tunnels.set(last.len() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tunnel_is_labelled_by_peer_its_bytes_only_grow_and_it_goes_when_taken_down() {
        register_gateway();
        let v = |name: &str, peer: &str| {
            ferry_plumbing::metrics::sample(&ferry_plumbing::metrics::render(), name, &[("peer", peer)])
        };
        let mut s = GatewayStatus {
            connected: true,
            latency_ms: Some(3.0),
            rx_bytes: 1000,
            tx_bytes: 500,
            tunnel_mtu: 1440,
            ..Default::default()
        };
        s.diagnostics.handshake_age_seconds = Some(12);
        s.diagnostics.loss_percent = Some(10.0);
        observe_peer("m-peer", &s);
        assert_eq!(v("ferry_gateway_tunnel_connected", "m-peer"), Some(1.0));
        assert_eq!(v("ferry_gateway_tunnel_latency_seconds", "m-peer"), Some(0.003));
        assert_eq!(
            v("ferry_gateway_tunnel_handshake_age_seconds", "m-peer"),
            Some(12.0)
        );
        assert_eq!(v("ferry_gateway_tunnel_loss_ratio", "m-peer"), Some(0.1));
        assert_eq!(
            v("ferry_gateway_tunnel_received_bytes_total", "m-peer"),
            Some(1000.0)
        );
        // a redial restarts WireGuard's counters: the exported counter keeps growing
        s.rx_bytes = 300;
        observe_peer("m-peer", &s);
        assert_eq!(
            v("ferry_gateway_tunnel_received_bytes_total", "m-peer"),
            Some(1300.0)
        );
        s.rx_bytes = 400;
        observe_peer("m-peer", &s);
        assert_eq!(
            v("ferry_gateway_tunnel_received_bytes_total", "m-peer"),
            Some(1400.0)
        );
        assert!(
            ferry_plumbing::metrics::render().contains("# TYPE ferry_gateway_tunnel_received_bytes counter")
        );
        forget_peer("m-peer");
        assert_eq!(v("ferry_gateway_tunnel_connected", "m-peer"), None);
    }

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
