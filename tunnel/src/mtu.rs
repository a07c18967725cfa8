//! MTU and TCP MSS for an encapsulation stack, with each term explained.
//!
//! Overheads (outer IPv4; an IPv6 outer header adds 20):
//! - VXLAN and Geneve (no options): outer IP 20 + UDP 8 + header 8 + inner Ethernet 14 = 50
//! - WireGuard: outer IP 20 + UDP 8 + data header 16 (type, receiver index, counter) + Poly1305 tag 16 = 60
//! - IPsec ESP, tunnel mode, worst-case padding: AES-GCM or ChaCha20-Poly1305 57 (IP 20 + ESP 8 + IV 8 +
//!   ICV 16 + pad length and next header 2 + padding up to 3); AES-CBC with HMAC-SHA1-96 73 (IP 20 + ESP 8 +
//!   IV 16 + ICV 12 + 2 + padding up to 15); NAT traversal adds UDP 8
//! - IP-in-IP: outer IP 20

use std::fmt;
use std::str::FromStr;

/// The smallest MTU an IPv6 link may have (RFC 8200).
pub const IPV6_MIN_MTU: u32 = 1280;
/// The smallest MTU an IPv4 host must accept (RFC 791).
pub const IPV4_MIN_MTU: u32 = 576;

/// An IPsec ESP cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpsecSuite {
    /// AES-GCM (128 or 256).
    AesGcm,
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305,
    /// AES-CBC with HMAC-SHA1-96.
    AesCbcSha1,
}

/// One layer of encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// VXLAN.
    Vxlan,
    /// Geneve without options.
    Geneve,
    /// WireGuard.
    WireGuard,
    /// IPsec ESP in tunnel mode; `nat_t` adds UDP encapsulation.
    Ipsec {
        /// Cipher suite.
        suite: IpsecSuite,
        /// UDP encapsulation for NAT traversal.
        nat_t: bool,
    },
    /// IP-in-IP.
    IpInIp,
}

/// A bad stack or MTU, worded for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MtuError {
    /// An unknown layer name.
    #[error(
        "--stack: unknown encapsulation {0:?}; fix: use vxlan, geneve, wireguard, ipsec-gcm, ipsec-chacha, ipsec-cbc-sha1 (add -natt for NAT traversal), ipip"
    )]
    UnknownEncap(String),
    /// The result is below what the inner traffic needs.
    #[error(
        "--underlay {underlay} leaves a tunnel MTU of {mtu} after {overhead} bytes of overhead, below the {family} minimum of {min}; fix: raise the underlay MTU to at least {need} or drop a layer"
    )]
    TooSmall {
        /// Underlay MTU.
        underlay: u32,
        /// Resulting MTU (may be negative).
        mtu: i64,
        /// Total overhead.
        overhead: u32,
        /// `IPv6` or `IPv4`.
        family: &'static str,
        /// The minimum.
        min: u32,
        /// The underlay MTU that would do.
        need: u32,
    },
}

impl FromStr for Encap {
    type Err = MtuError;
    fn from_str(s: &str) -> Result<Self, MtuError> {
        let t = s.trim().to_ascii_lowercase();
        let (base, nat_t) = match t.strip_suffix("-natt") {
            Some(b) => (b.to_string(), true),
            None => (t.clone(), false),
        };
        let ipsec = |suite| Encap::Ipsec { suite, nat_t };
        Ok(match base.as_str() {
            "vxlan" if !nat_t => Encap::Vxlan,
            "geneve" if !nat_t => Encap::Geneve,
            "wireguard" | "wg" if !nat_t => Encap::WireGuard,
            "ipip" | "ip-in-ip" if !nat_t => Encap::IpInIp,
            "ipsec" | "ipsec-gcm" => ipsec(IpsecSuite::AesGcm),
            "ipsec-chacha" => ipsec(IpsecSuite::ChaCha20Poly1305),
            "ipsec-cbc-sha1" => ipsec(IpsecSuite::AesCbcSha1),
            _ => return Err(MtuError::UnknownEncap(s.to_string())),
        })
    }
}

/// One term of the calculation: bytes and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The layer.
    pub encap: Encap,
    /// Bytes it costs.
    pub bytes: u32,
    /// What the bytes are.
    pub why: String,
}

impl Encap {
    /// Overhead in bytes and its breakdown, over an IPv4 (`outer_v6 = false`) or IPv6 outer header.
    pub fn overhead(self, outer_v6: bool) -> Term {
        let ip = if outer_v6 { 40 } else { 20 };
        let ipn = if outer_v6 {
            "outer IPv6 40"
        } else {
            "outer IPv4 20"
        };
        let (bytes, why) = match self {
            Encap::Vxlan => (
                ip + 8 + 8 + 14,
                format!("{ipn} + UDP 8 + VXLAN 8 + inner Ethernet 14"),
            ),
            Encap::Geneve => (
                ip + 8 + 8 + 14,
                format!("{ipn} + UDP 8 + Geneve 8 + inner Ethernet 14"),
            ),
            Encap::WireGuard => (
                ip + 8 + 16 + 16,
                format!("{ipn} + UDP 8 + WireGuard data header 16 + Poly1305 tag 16"),
            ),
            Encap::IpInIp => (ip, ipn.to_string()),
            Encap::Ipsec { suite, nat_t } => {
                let (iv, icv, pad, name) = match suite {
                    IpsecSuite::AesGcm => (8, 16, 3, "AES-GCM"),
                    IpsecSuite::ChaCha20Poly1305 => (8, 16, 3, "ChaCha20-Poly1305"),
                    IpsecSuite::AesCbcSha1 => (16, 12, 15, "AES-CBC/HMAC-SHA1-96"),
                };
                let udp = if nat_t { 8 } else { 0 };
                let natt = if nat_t { " + NAT-T UDP 8" } else { "" };
                (
                    ip + udp + 8 + iv + icv + 2 + pad,
                    format!(
                        "{ipn}{natt} + ESP 8 + IV {iv} + ICV {icv} + trailer 2 + padding up to {pad} ({name})"
                    ),
                )
            }
        };
        Term {
            encap: self,
            bytes,
            why,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encap::Vxlan => write!(f, "vxlan"),
            Encap::Geneve => write!(f, "geneve"),
            Encap::WireGuard => write!(f, "wireguard"),
            Encap::IpInIp => write!(f, "ipip"),
            Encap::Ipsec { suite, nat_t } => {
                let s = match suite {
                    IpsecSuite::AesGcm => "ipsec-gcm",
                    IpsecSuite::ChaCha20Poly1305 => "ipsec-chacha",
                    IpsecSuite::AesCbcSha1 => "ipsec-cbc-sha1",
                };
                write!(f, "{s}{}", if *nat_t { "-natt" } else { "" })
            }
        }
    }
}

/// The result: tunnel MTU and the MSS to clamp TCP SYNs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtuPlan {
    /// Underlay MTU.
    pub underlay: u32,
    /// Each layer's cost.
    pub terms: Vec<Term>,
    /// MTU of the innermost interface (what pods get).
    pub mtu: u32,
    /// MSS for IPv4 inner TCP (MTU − 40).
    pub mss_v4: u32,
    /// MSS for IPv6 inner TCP (MTU − 60).
    pub mss_v6: u32,
}

impl MtuPlan {
    /// Parses a comma-separated stack, e.g. `vxlan,wireguard`.
    pub fn parse_stack(s: &str) -> Result<Vec<Encap>, MtuError> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    /// Computes the plan. `outer_v6`: the underlay (every outer header) is IPv6. `inner_v6`: pods carry IPv6,
    /// so the result must be at least 1280.
    pub fn compute(underlay: u32, stack: &[Encap], outer_v6: bool, inner_v6: bool) -> Result<Self, MtuError> {
        let terms: Vec<Term> = stack.iter().map(|e| e.overhead(outer_v6)).collect();
        let overhead: u32 = terms.iter().map(|t| t.bytes).sum();
        let mtu = i64::from(underlay) - i64::from(overhead);
        let (family, min) = if inner_v6 {
            ("IPv6", IPV6_MIN_MTU)
        } else {
            ("IPv4", IPV4_MIN_MTU)
        };
        if mtu < i64::from(min) {
            return Err(MtuError::TooSmall {
                underlay,
                mtu,
                overhead,
                family,
                min,
                need: min + overhead,
            });
        }
        let mtu = mtu as u32;
        Ok(Self {
            underlay,
            terms,
            mtu,
            mss_v4: mtu - 40,
            mss_v6: mtu - 60,
        })
    }

    /// A human explanation, one line per term.
    pub fn explain(&self) -> String {
        let mut s = format!("  {:>5}  underlay MTU\n", self.underlay);
        for t in &self.terms {
            s.push_str(&format!("- {:>5}  {} ({})\n", t.bytes, t.encap, t.why));
        }
        s.push_str(&format!("= {:>5}  tunnel MTU\n", self.mtu));
        s.push_str(&format!(
            "  TCP MSS clamp: {} for IPv4 (MTU - 40), {} for IPv6 (MTU - 60)\n",
            self.mss_v4, self.mss_v6
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(u: u32, s: &str, v6: bool) -> Result<MtuPlan, MtuError> {
        MtuPlan::compute(u, &MtuPlan::parse_stack(s)?, v6, false)
    }

    #[test]
    fn vxlan_plus_wireguard_over_1500_is_1390() {
        let p = plan(1500, "vxlan,wireguard", false).unwrap();
        assert_eq!(p.mtu, 1390);
        assert_eq!(p.mss_v4, 1350);
        assert_eq!(p.mss_v6, 1330);
        let text = p.explain();
        assert!(text.contains("-    50  vxlan"), "{text}");
        assert!(text.contains("-    60  wireguard"), "{text}");
        assert!(text.contains("=  1390  tunnel MTU"), "{text}");
    }

    #[test]
    fn known_overheads() {
        let cases = [
            ("vxlan", false, 50),
            ("geneve", false, 50),
            ("vxlan", true, 70),
            ("wireguard", false, 60),
            ("wireguard", true, 80),
            ("ipip", false, 20),
            ("ipsec-gcm", false, 57),
            ("ipsec-chacha", false, 57),
            ("ipsec-cbc-sha1", false, 73),
            ("ipsec-gcm-natt", false, 65),
        ];
        for (s, v6, want) in cases {
            assert_eq!(plan(1500, s, v6).unwrap().mtu, 1500 - want, "{s} v6={v6}");
        }
    }

    #[test]
    fn unknown_layer_names_the_flag_and_lists_the_choices() {
        let e = plan(1500, "vxlan,gre", false).unwrap_err().to_string();
        assert!(e.starts_with("--stack: unknown encapsulation \"gre\""), "{e}");
        assert!(e.contains("fix: use vxlan"), "{e}");
        assert!(matches!(
            plan(1500, "vxlan-natt", false),
            Err(MtuError::UnknownEncap(_))
        ));
    }

    #[test]
    fn ipv6_inner_traffic_needs_1280_after_overhead() {
        let stack = MtuPlan::parse_stack("wireguard").unwrap();
        // 1360 - 80 = 1280: just enough
        assert_eq!(MtuPlan::compute(1360, &stack, true, true).unwrap().mtu, 1280);
        let e = MtuPlan::compute(1359, &stack, true, true).unwrap_err();
        assert_eq!(
            e,
            MtuError::TooSmall {
                underlay: 1359,
                mtu: 1279,
                overhead: 80,
                family: "IPv6",
                min: 1280,
                need: 1360
            }
        );
        assert!(e.to_string().contains("raise the underlay MTU to at least 1360"));
        // an underlay smaller than the overhead is an error too, not an underflow
        assert!(plan(40, "vxlan,wireguard", false).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in [
            "vxlan",
            "geneve",
            "wireguard",
            "ipip",
            "ipsec-gcm",
            "ipsec-chacha",
            "ipsec-cbc-sha1",
            "ipsec-cbc-sha1-natt",
        ] {
            assert_eq!(s.parse::<Encap>().unwrap().to_string(), s);
        }
    }

    proptest! {
        #[test]
        fn mtu_is_underlay_minus_the_sum_and_order_does_not_matter(
            underlay in 1280u32..9001,
            layers in proptest::collection::vec(0usize..5, 0..4),
            v6 in any::<bool>(),
        ) {
            let all = ["vxlan", "wireguard", "ipip", "ipsec-gcm", "ipsec-cbc-sha1"];
            let stack: Vec<Encap> = layers.iter().map(|i| all[*i].parse().unwrap()).collect();
            let mut rev = stack.clone();
            rev.reverse();
            let sum: u32 = stack.iter().map(|e| e.overhead(v6).bytes).sum();
            match MtuPlan::compute(underlay, &stack, v6, false) {
                Ok(p) => {
                    prop_assert_eq!(p.mtu, underlay - sum);
                    prop_assert_eq!(MtuPlan::compute(underlay, &rev, v6, false).unwrap().mtu, p.mtu);
                    prop_assert!(p.mss_v4 + 40 == p.mtu && p.mss_v6 + 60 == p.mtu);
                }
                Err(_) => prop_assert!(i64::from(underlay) - i64::from(sum) < i64::from(IPV4_MIN_MTU)),
            }
        }
    }
}
