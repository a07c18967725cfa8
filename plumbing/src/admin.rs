//! The admin server every ferry component serves on a plain-HTTP port of its own (never the port a peer
//! reaches): `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (every part
//! that registered with [`Health`] says it is ready, else 503 naming the parts that are not).
//! It is bounded like anything else that listens: 64 connections at once, 5 s to send a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections the admin server holds at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Readiness of a component's parts, by name.
#[derive(Default)]
pub struct Health {
    parts: Mutex<BTreeMap<String, Result<(), String>>>,
}

impl Health {
    /// Registers `part` as not ready yet (`why`).
    pub fn register(&self, part: &str, why: &str) {
        self.set(part, Err(why.to_string()));
    }

    /// Records whether `part` is ready.
    pub fn set(&self, part: &str, state: Result<(), String>) {
        self.parts.lock().expect("lock").insert(part.to_string(), state);
    }

    /// `Ok` when every part is ready, else the parts that are not, each with why.
    pub fn ready(&self) -> Result<(), String> {
        let parts = self.parts.lock().expect("lock");
        let waiting: Vec<String> = parts
            .iter()
            .filter_map(|(p, s)| s.as_ref().err().map(|why| format!("{p}: {why}")))
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join("\n"))
        }
    }
}

/// What renders `/metrics`.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The answer to one request line's path: status line, content type, body. Pure.
pub fn respond(path: &str, health: &Health, metrics: &Render) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(),
        ),
        "/healthz" | "/livez" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => match health.ready() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".into()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Render) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(c) => c,
            // out of file descriptors or a reset before accept: the listener stays up
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = respond(path, &health, &metrics);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(resp.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_not_ready() {
        let h = Health::default();
        let m: Render = Arc::new(|| "ferry_up 1\n".into());
        assert_eq!(respond("/readyz", &h, &m).0, "200 OK");
        h.register("broker", "not listening yet");
        h.set("dns", Ok(()));
        let (status, _, body) = respond("/readyz", &h, &m);
        assert_eq!(status, "503 Service Unavailable");
        assert!(
            body.contains("broker: not listening yet") && !body.contains("dns"),
            "{body}"
        );
        h.set("broker", Ok(()));
        assert_eq!(respond("/readyz", &h, &m).0, "200 OK");
        assert_eq!(respond("/healthz", &h, &m).0, "200 OK");
        assert_eq!(respond("/metrics", &h, &m).2, "ferry_up 1\n");
        assert_eq!(respond("/nope", &h, &m).0, "404 Not Found");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = Arc::new(Health::default());
        h.register("x", "starting");
        tokio::spawn(serve(l, h.clone(), Arc::new(|| "m 1\n".into())));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        h.set("x", Ok(()));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.ends_with("m 1\n"));
    }
}
