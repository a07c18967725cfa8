//! Lab glue for multi-cluster services: name resolution and HTTP from inside a pod's network namespace,
//! through ferry-dns at the pod's default gateway (the cluster's host namespace, where a cluster's CoreDNS
//! would forward `clusterset.local`).

use std::process::Command;

use crate::workload::PodView;

/// The pod's default IPv4 gateway: the host namespace address where ferry-dns answers.
pub fn gateway_of(p: &PodView) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", &p.netns, "-4", "route", "show", "default"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_string)
}

/// `dig +short NAME A` from inside pod `p` at ferry-dns: the sorted addresses.
pub fn resolve(p: &PodView, name: &str) -> Vec<String> {
    let Some(gw) = gateway_of(p) else {
        return Vec::new();
    };
    let Ok(out) = Command::new("ip")
        .args(["netns", "exec", &p.netns, "dig", "+short", "+time=1", "+tries=1"])
        .arg(format!("@{gw}"))
        .args([name, "A"])
        .output()
    else {
        return Vec::new();
    };
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| l.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// `curl URL` from inside pod `p`, its resolver pointed at ferry-dns (`ip netns exec` bind-mounts
/// `/etc/netns/<ns>/resolv.conf` over `/etc/resolv.conf`): the JSON the echo server answers.
pub fn curl(p: &PodView, url: &str) -> Option<serde_json::Value> {
    let gw = gateway_of(p)?;
    let dir = format!("/etc/netns/{}", p.netns);
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(format!("{dir}/resolv.conf"), format!("nameserver {gw}\n")).ok()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &p.netns, "curl", "-s", "--max-time", "5", url])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_slice(&out.ok()?.stdout).ok()
}
