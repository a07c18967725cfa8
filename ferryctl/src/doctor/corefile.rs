//! Reading a CoreDNS Corefile far enough to know where each zone is forwarded (pure): server blocks
//! (`zone[:port] … {`) and, in each, its `forward FROM TO…` (and the older `proxy`) lines. Nested blocks
//! (`kubernetes cluster.local { … }`, a `forward`'s own options) are skipped; comments are dropped.

use std::net::IpAddr;

/// One server block: the zones it serves and where it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerBlock {
    /// Zones, normalised: lower case, no port, no scheme, no trailing dot (`.` stays `.`).
    pub zones: Vec<String>,
    /// `forward` lines: the zone forwarded (normalised) and its targets as written.
    pub forwards: Vec<(String, Vec<String>)>,
}

/// A zone as CoreDNS keys it: `dns://Cluster.Local.:53` → `cluster.local`.
pub fn zone(raw: &str) -> String {
    let z = raw.trim().to_ascii_lowercase();
    let z = z.split_once("://").map_or(z.as_str(), |(_, r)| r).to_string();
    let z = match z.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => z,
    };
    if z == "." || z.is_empty() {
        ".".into()
    } else {
        z.trim_end_matches('.').to_string()
    }
}

/// The IP address a forward target names, if it names one (`/etc/resolv.conf` does not):
/// `10.96.0.10`, `10.96.0.10:53`, `dns://10.96.0.10`, `tls://[fd00::a]:853`.
pub fn target_ip(t: &str) -> Option<IpAddr> {
    let t = t.split_once("://").map_or(t, |(_, r)| r);
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    t.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
}

/// The server blocks of a Corefile, in order.
pub fn parse(corefile: &str) -> Vec<ServerBlock> {
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<ServerBlock> = None;
    for line in corefile.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| *w != "{" && *w != "}")
            .collect();
        if depth == 0 && opens > 0 {
            current = Some(ServerBlock {
                zones: words
                    .iter()
                    .flat_map(|w| w.split(','))
                    .filter(|w| !w.is_empty())
                    .map(zone)
                    .collect(),
                forwards: Vec::new(),
            });
        } else if depth == 1
            && let Some(b) = current.as_mut()
            && matches!(words.first(), Some(&"forward") | Some(&"proxy"))
            && words.len() >= 3
        {
            b.forwards
                .push((zone(words[1]), words[2..].iter().map(|w| w.to_string()).collect()));
        }
        depth = (depth + opens).saturating_sub(closes);
        if depth == 0
            && let Some(b) = current.take()
        {
            blocks.push(b);
        }
    }
    blocks
}

/// Where names of `name`'s zone are sent: the targets of the most specific server block that serves it
/// (the longest zone that is `name` or a parent of it), from that block's `forward` of `.` or of a zone
/// `name` falls under. `None`: no block serves it, or the block answers it without forwarding.
pub fn forward_targets(blocks: &[ServerBlock], name: &str) -> Option<Vec<String>> {
    let name = zone(name);
    let under = |z: &str| z == "." || name == z || name.ends_with(&format!(".{z}"));
    let block = blocks
        .iter()
        .filter_map(|b| {
            b.zones
                .iter()
                .filter(|z| under(z))
                .map(|z| if z == "." { 0 } else { z.len() + 1 })
                .max()
                .map(|len| (len, b))
        })
        .max_by_key(|(len, _)| *len)?
        .1;
    block
        .forwards
        .iter()
        .filter(|(from, _)| under(from))
        .max_by_key(|(from, _)| from.len())
        .map(|(_, to)| to.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
# ferry's stanza
clusterset.local:53 {
    errors
    cache 5
    forward . 10.96.0.53
}
"#;

    #[test]
    fn a_kubeadm_corefile_with_ferrys_stanza_is_read_block_by_block() {
        let b = parse(KUBEADM);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].zones, ["."]);
        // the forward's own options block and the kubernetes block are skipped
        assert_eq!(
            b[0].forwards,
            [(".".to_string(), vec!["/etc/resolv.conf".to_string()])]
        );
        assert_eq!(b[1].zones, ["clusterset.local"]);
        assert_eq!(
            forward_targets(&b, "web.ns.svc.clusterset.local").unwrap(),
            ["10.96.0.53"]
        );
        assert_eq!(forward_targets(&b, "example.com").unwrap(), ["/etc/resolv.conf"]);
    }

    #[test]
    fn zones_and_targets_are_normalised() {
        assert_eq!(zone("dns://Cluster.Local.:53"), "cluster.local");
        assert_eq!(zone(".:53"), ".");
        assert_eq!(zone("."), ".");
        assert_eq!(target_ip("10.97.0.10"), Some("10.97.0.10".parse().unwrap()));
        assert_eq!(
            target_ip("dns://10.97.0.10:53"),
            Some("10.97.0.10".parse().unwrap())
        );
        assert_eq!(target_ip("tls://[fd00::a]:853"), Some("fd00::a".parse().unwrap()));
        assert_eq!(target_ip("/etc/resolv.conf"), None);
    }

    #[test]
    fn the_most_specific_block_and_forward_win_and_a_block_without_forward_forwards_nothing() {
        let b = parse(
            "example.org example.com:53 {\n forward . 1.1.1.1\n}\n.:53 {\n forward corp.example.org 10.0.0.1\n forward . 8.8.8.8 8.8.4.4\n}\ncluster.local {\n kubernetes\n}\n",
        );
        assert_eq!(b[0].zones, ["example.org", "example.com"]);
        assert_eq!(forward_targets(&b, "a.example.com").unwrap(), ["1.1.1.1"]);
        assert_eq!(forward_targets(&b, "x.net").unwrap(), ["8.8.8.8", "8.8.4.4"]);
        // served by example.org's block, whose forward of `.` applies (the root block's is not consulted)
        assert_eq!(forward_targets(&b, "x.corp.example.org").unwrap(), ["1.1.1.1"]);
        assert_eq!(forward_targets(&b, "svc.cluster.local"), None);
        // a name no block serves
        assert_eq!(forward_targets(&b[..1], "x.net"), None);
        // a suffix that is not a parent zone does not count
        assert_eq!(
            forward_targets(&b, "notexample.com").unwrap(),
            ["8.8.8.8", "8.8.4.4"]
        );
    }

    #[test]
    fn garbage_and_unbalanced_braces_never_panic() {
        for s in [
            "}}}",
            "{{{",
            ". {\n forward\n}",
            "forward . 1.2.3.4",
            "a {\n}\n}\nb {",
        ] {
            let _ = parse(s);
            let _ = forward_targets(&parse(s), ".");
        }
        assert!(parse("").is_empty());
    }
}
