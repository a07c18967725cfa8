//! Value parsers for the binaries' flags, so a bad value is refused by the parser, before anything is
//! written, with the flag's name (clap adds it) and the fix.

use ipnet::IpNet;

/// A CIDR such as `10.244.0.0/16` or `fd00:10:244::/48` (the host bits must be zero).
pub fn cidr(s: &str) -> Result<IpNet, String> {
    let n: IpNet = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR; fix: e.g. 10.244.0.0/16 or fd00:10:244::/48"))?;
    if n.trunc() != n {
        return Err(format!(
            "{s:?} has host bits set; fix: use the network address, {}",
            n.trunc()
        ));
    }
    Ok(n)
}

/// A `host:port` address to listen on or dial (`[v6]:port` for IPv6); the port must be given.
pub fn host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port; fix: host:port, e.g. 0.0.0.0:8443 or [::]:8443"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number 0-65535; fix: host:port"))?;
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return Err(format!(
            "{s:?}: the host is missing or an IPv6 address without brackets; fix: e.g. 0.0.0.0:8443 or [::1]:8443"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_refused_with_the_fix() {
        assert_eq!(cidr("10.244.0.0/16").unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(cidr("fd00:10:244::/48").unwrap().prefix_len(), 48);
        assert!(cidr("10.244.0.0").unwrap_err().contains("not a CIDR"));
        assert!(cidr("10.244.0.0/33").unwrap_err().contains("fix:"));
        let e = cidr("10.244.1.0/16").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.244.0.0/16"), "{e}");
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(host_port("127.0.0.1:8443").unwrap(), "127.0.0.1:8443");
        assert!(host_port("[::1]:8443").is_ok());
        assert!(host_port("gw.example:51820").is_ok());
        assert!(host_port("127.0.0.1").unwrap_err().contains("no port"));
        assert!(host_port("127.0.0.1:99999").unwrap_err().contains("port"));
        assert!(host_port("::1:8443").unwrap_err().contains("brackets"));
        assert!(host_port(":8443").unwrap_err().contains("host is missing"));
    }
}
