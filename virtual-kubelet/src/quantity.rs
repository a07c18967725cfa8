//! Kubernetes resource quantities as numbers, and the resource arithmetic of a virtual node (no I/O).
//!
//! [`parse`] reads `100m`, `1.5`, `8Gi`, `1e3`; [`Amounts`] adds pod requests and node allocatables and
//! takes the minimum of a grant and what is free. Amounts are kept in milli-units (CPU in millicores,
//! memory in milli-bytes) as `i128`, so sums of ten thousand pods stay exact.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity; fix: write e.g. 500m, 2, 8Gi")]
pub struct BadQuantity(pub String);

/// The quantity `q` in milli-units (`1` → 1000, `100m` → 100, `1Ki` → 1_024_000).
pub fn parse(q: &str) -> Result<i128, BadQuantity> {
    let bad = || BadQuantity(q.to_string());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    // (multiplier numerator, denominator) relative to milli-units
    let (mul, div): (i128, i128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "P" => (1000 * 1_000_000_000_000_000, 1),
        "E" => (1000 * 1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| bad())?;
            let mul = 10i128.checked_pow(exp).and_then(|p| p.checked_mul(1000));
            (mul.ok_or_else(bad)?, 1)
        }
        _ => return Err(bad()),
    };
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty()) || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let scale = 10i128.checked_pow(frac.len() as u32).ok_or_else(bad)?;
    let whole: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    // round up, as Kubernetes does when it cannot represent a fraction; a value too large for i128 (far
    // beyond any real cluster) is refused rather than wrapped
    let den = scale.checked_mul(div).ok_or_else(bad)?;
    let v = whole
        .checked_mul(mul)
        .and_then(|n| n.checked_add(den - 1))
        .ok_or_else(bad)?
        / den;
    Ok(if neg { -v } else { v })
}

/// The largest amount ferry accepts from a peer for one resource: 2^80 milli-units (about 1.2e21 cores or
/// pods, or a zettabyte of memory), far beyond any real cluster, and 2^47 of them still sum within i128.
pub const MAX_AMOUNT: i128 = 1 << 80;

/// A quantity that came from a peer: it must parse, be zero or more, and stay below [`MAX_AMOUNT`].
pub fn parse_bounded(q: &str) -> Result<i128, String> {
    let v = parse(q).map_err(|e| e.to_string())?;
    if v < 0 {
        return Err(format!("{q:?} is negative; fix: ask for zero or more"));
    }
    if v > MAX_AMOUNT {
        return Err(format!(
            "{q:?} is larger than ferry accepts; fix: ask for a real amount, e.g. 8 or 16Gi"
        ));
    }
    Ok(v)
}

/// CPU, memory and pods, in milli-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Millicores.
    pub cpu: i128,
    /// Milli-bytes.
    pub memory: i128,
    /// Milli-pods.
    pub pods: i128,
}

impl Amounts {
    /// From a resource map (missing entries are zero; unparseable ones too, after a warning upstream).
    pub fn from_map(m: Option<&BTreeMap<String, Quantity>>) -> Self {
        let get = |k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(|q| parse(&q.0).ok())
                .unwrap_or(0)
        };
        Self {
            cpu: get("cpu"),
            memory: get("memory"),
            pods: get("pods"),
        }
    }

    /// From a ferry `ResourceAmounts` (a grant or what is available); extended resources are not counted.
    pub fn from_resource_amounts(r: &ferry_crds::common::ResourceAmounts) -> Self {
        let q = |v: &Option<Quantity>| v.as_ref().and_then(|q| parse(&q.0).ok()).unwrap_or(0);
        Self {
            cpu: q(&r.cpu),
            memory: q(&r.memory),
            pods: q(&r.pods),
        }
    }

    /// What a pod takes on a node: the sum of its containers' requests (or the largest init container
    /// request, whichever is more), and one pod.
    pub fn of_pod(p: &Pod) -> Self {
        let Some(spec) = &p.spec else {
            return Self::default();
        };
        fn req(c: &k8s_openapi::api::core::v1::Container) -> Option<&BTreeMap<String, Quantity>> {
            c.resources.as_ref()?.requests.as_ref()
        }
        Self::of_requests(
            spec.containers.iter().map(req),
            spec.init_containers.iter().flatten().map(req),
        )
    }

    /// What a pod of these containers' and init containers' requests takes on a node (see [`Self::of_pod`]).
    pub fn of_requests<'a>(
        containers: impl IntoIterator<Item = Option<&'a BTreeMap<String, Quantity>>>,
        init_containers: impl IntoIterator<Item = Option<&'a BTreeMap<String, Quantity>>>,
    ) -> Self {
        let mut sum = containers
            .into_iter()
            .map(Self::from_map)
            .fold(Self::default(), Self::plus);
        for init in init_containers {
            sum = sum.max(Self::from_map(init));
        }
        sum.pods = 1000;
        sum
    }

    /// A node's allocatable (falling back to capacity).
    pub fn of_node(n: &Node) -> Self {
        let s = n.status.as_ref();
        Self::from_map(
            s.and_then(|s| s.allocatable.as_ref())
                .or(s.and_then(|s| s.capacity.as_ref())),
        )
    }

    /// Element-wise sum.
    pub fn plus(self, o: Self) -> Self {
        Self {
            cpu: self.cpu + o.cpu,
            memory: self.memory + o.memory,
            pods: self.pods + o.pods,
        }
    }

    /// Element-wise difference, floored at zero.
    pub fn minus(self, o: Self) -> Self {
        Self {
            cpu: (self.cpu - o.cpu).max(0),
            memory: (self.memory - o.memory).max(0),
            pods: (self.pods - o.pods).max(0),
        }
    }

    /// Element-wise minimum.
    pub fn min(self, o: Self) -> Self {
        Self {
            cpu: self.cpu.min(o.cpu),
            memory: self.memory.min(o.memory),
            pods: self.pods.min(o.pods),
        }
    }

    /// Element-wise maximum.
    pub fn max(self, o: Self) -> Self {
        Self {
            cpu: self.cpu.max(o.cpu),
            memory: self.memory.max(o.memory),
            pods: self.pods.max(o.pods),
        }
    }

    /// As Kubernetes quantities: CPU in millicores, memory in whole bytes (rounded down), whole pods.
    pub fn to_quantities(self) -> (Quantity, Quantity, Quantity) {
        (
            Quantity(format!("{}m", self.cpu)),
            Quantity(format!("{}", self.memory / 1000)),
            Quantity(format!("{}", self.pods / 1000)),
        )
    }
}

/// What a tenant may use now: its grant, but never more than it already uses plus what the provider's nodes
/// still have free.
pub fn available(granted: Amounts, tenant_used: Amounts, cluster_free: Amounts) -> Amounts {
    granted.min(tenant_used.plus(cluster_free))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_in_milli_units() {
        for (q, v) in [
            ("1", 1000),
            ("100m", 100),
            ("1.5", 1500),
            ("0.1", 100),
            ("2k", 2_000_000),
            ("1Ki", 1_024_000),
            ("8Gi", 8 * 1000 * (1 << 30)),
            ("1G", 1000 * 1_000_000_000),
            ("1e3", 1_000_000),
            ("250u", 1),
            ("-1", -1000),
            ("110", 110_000),
        ] {
            assert_eq!(parse(q), Ok(v), "{q}");
        }
        for q in ["", "Gi", "1Q", "1..5", "abc", "1e", "--1"] {
            let e = parse(q).unwrap_err();
            assert!(e.to_string().contains("fix:"), "{q}: {e}");
        }
    }

    #[test]
    fn huge_negative_and_overflowing_quantities_from_a_peer_are_refused() {
        // 40 digits times the Ei multiplier overflows i128: an error, never a panic or a wrapped value
        assert!(parse("9999999999999999999999999999999999999999Ei").is_err());
        assert!(parse("1e40").is_err());
        // found by the fuzz target: 10^38 fits i128, times 1000 (milli-units) does not
        assert!(parse("5410e38").is_err());
        assert!(parse("1e38").is_err());
        assert!(parse_bounded("-1").unwrap_err().contains("negative"));
        assert!(
            parse_bounded("2000000Ei")
                .unwrap_err()
                .contains("larger than ferry accepts")
        );
        assert!(parse_bounded("2Ei").is_ok());
        assert_eq!(parse_bounded("16Gi").unwrap(), 16 * 1000 * (1 << 30));
        assert_eq!(parse_bounded("0").unwrap(), 0);
    }

    #[test]
    fn a_pod_takes_its_requests_and_its_largest_init_container() {
        let p: Pod = serde_json::from_value(json!({"spec": {
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "1Mi"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}},
            {"name": "c"}
        ]}}))
        .unwrap();
        let a = Amounts::of_pod(&p);
        assert_eq!(a.cpu, 3000);
        assert_eq!(a.memory, 128 * 1000 * (1 << 20));
        assert_eq!(a.pods, 1000);
    }

    #[test]
    fn availability_is_capped_by_the_grant_and_by_what_is_free() {
        let g = Amounts {
            cpu: 8000,
            memory: 16,
            pods: 110_000,
        };
        let used = Amounts {
            cpu: 2000,
            memory: 4,
            pods: 2000,
        };
        let free = Amounts {
            cpu: 1000,
            memory: 100,
            pods: 500_000,
        };
        assert_eq!(
            available(g, used, free),
            Amounts {
                cpu: 3000,
                memory: 16,
                pods: 110_000
            }
        );
        let (c, m, p) = available(g, used, free).to_quantities();
        assert_eq!((c.0.as_str(), m.0.as_str(), p.0.as_str()), ("3000m", "0", "110"));
        let ra = ferry_crds::common::ResourceAmounts {
            cpu: Some(Quantity("8".into())),
            pods: Some(Quantity("110".into())),
            ..Default::default()
        };
        assert_eq!(
            Amounts::from_resource_amounts(&ra),
            Amounts {
                cpu: 8000,
                memory: 0,
                pods: 110_000
            }
        );
        assert_eq!(
            Amounts::default().minus(g),
            Amounts::default(),
            "never below zero"
        );
    }
}
