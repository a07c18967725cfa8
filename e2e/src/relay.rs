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

/// Binds a TCP listener inside network namespace `netns` (`/run/netns/<netns>`). Only a short-lived
/// thread enters the namespace; the caller's threads stay where they are, and the socket keeps the
/// namespace it was made in.
pub fn listen_in_netns(netns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let path = format!("/run/netns/{netns}");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let bound = std::thread::spawn(move || -> Result<std::net::TcpListener> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the host namespace")?;
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    Ok(bound)
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
