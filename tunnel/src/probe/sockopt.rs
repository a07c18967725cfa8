//! The one place in ferry with `unsafe`: nix exposes no `IP_MTU_DISCOVER` on Linux, and a path-MTU probe
//! needs `IP_PMTUDISC_PROBE` (DF set, never fragment locally, ignore the cached path MTU), so this calls
//! `setsockopt` directly on a socket it borrows.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Sets `IP_PMTUDISC_PROBE` (IPv4) or `IPV6_PMTUDISC_PROBE` (IPv6) on a UDP socket.
pub fn set_pmtudisc_probe(sock: &impl AsRawFd, ipv6: bool) -> std::io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE)
    };
    // SAFETY: `fd` is a live socket owned by the caller for the duration of the call; `value` is a c_int
    // on our stack and we pass its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
