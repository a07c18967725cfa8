//! The lab node's path to its apiserver. A real node reaches the apiserver over the cluster network; a lab
//! cluster's host namespace (where `ferry-gateway` runs with hostNetwork semantics) has its own loopback and
//! no route to the root namespace's `127.0.0.1`, where the lab's apiservers listen. The lab kubelet
//! therefore opens a listener on the host namespace's `127.0.0.1:<apiserver port>` and relays each
//! connection to the apiserver. TLS passes through untouched (the serving cert names 127.0.0.1), so the
//! cluster's kubeconfig works unchanged from inside the host namespace.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use tracing::{debug, warn};

/// Runs `make` on a short-lived thread inside network namespace `netns` (`/run/netns/<netns>`): the
/// caller's threads stay where they are, and a socket made there keeps that namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    make: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the host namespace")?;
        make()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Binds a TCP listener inside network namespace `netns` ([`in_netns`]).
pub fn listen_in_netns(netns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    in_netns(netns, move || {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// Binds a UDP socket to an ephemeral port inside network namespace `netns` ([`in_netns`]).
pub fn udp_in_netns(netns: &str) -> Result<std::net::UdpSocket> {
    in_netns(netns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

/// Relays every connection accepted on `listener` to `target` (dialled from the caller's namespace).
pub async fn relay(listener: std::net::TcpListener, target: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (mut inbound, from) = listener.accept().await?;
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(mut out) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = out.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut out).await {
                        debug!("relay {from} -> {target}: {e}");
                    }
                }
                Err(e) => warn!("relay {from} -> {target}: {e}"),
            }
        });
    }
}
