//! The tunnel's health as a pure state machine: [`step`] takes what was observed (a heartbeat's answer or
//! its absence, a check of the host's rules and counters) and returns the new [`Health`] and the
//! [`Effect`]s the gateway carries out (log a change, check the host, re-apply the rules, report). Time is
//! an input (`now`, since the tunnel came up), so every transition is tested here without sockets or a
//! clock; `gateway` only measures and applies.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a heartbeat is sent through the tunnel.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A tunnel with no answered heartbeat for this long is `NotConnected` (3 heartbeats).
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// A side that dials (it has the peer's endpoints) and has heard nothing through the tunnel for this
/// long looks for the peer's active gateway: it probes the underlay responder (port + 1) of each of the
/// peer's endpoints — only the active replica runs one — and dials the one that answers with a fresh
/// handshake (the new active is a new process that knows no session), every heartbeat until the tunnel
/// answers again.
pub const REDIAL_AFTER: Duration = Duration::from_millis(1000);
/// How often a silent side probes the peer's endpoints (and at most dials again).
pub const SEEK_EVERY: Duration = Duration::from_millis(250);

/// Whether this side is looking for the peer now (pure): silent for [`REDIAL_AFTER`] (counted from the
/// start when it never answered) and not dialled again within the last heartbeat (a handshake takes a
/// round trip; the next heartbeat tells). Times are since the tunnel came up.
pub fn seeking(last_ok: Option<Duration>, last_redial: Option<Duration>, now: Duration) -> bool {
    now.saturating_sub(last_ok.unwrap_or_default()) >= REDIAL_AFTER
        && last_redial.is_none_or(|r| now.saturating_sub(r) >= HEARTBEAT)
}

/// Whether a seeking side still hears its peer (pure), from WireGuard's rx counter read at this seek
/// (`now`) and at the one before (`before`; `None` at the first seek of a silence): bytes still arrive
/// (data, or the peer's 1 s keepalive), so the peer is there and only the heartbeats are late behind the
/// tunnel's own traffic. A re-dial then would replace the peer in the middle of that traffic (a new
/// handshake, the device's counters from 0), so it waits. The first seek only takes the reading; a device
/// that does not answer counts as quiet (dial, as without the counter). A lower reading than before is a
/// replaced peer, not bytes: quiet.
pub fn still_hearing(before: Option<u64>, now: Option<u64>) -> bool {
    match (before, now) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(b), Some(n)) => n > b,
    }
}

/// Which endpoint to dial (pure), given which ones' responders answered just now: the first answering
/// one after `current` (a standby that took over), else `current` itself if it answers (the same
/// address, a new process), else none (the path is down: nothing to gain from dialling).
pub fn redial(answered: &[bool], current: usize) -> Option<usize> {
    let n = answered.len();
    (1..=n).map(|k| (current + k) % n).find(|&i| answered[i])
}

/// The host (WireGuard counters, rules intact) is checked every this many heartbeats: it spawns
/// processes, so not on every 500 ms tick.
pub const CHECK_EVERY: u64 = 4;

/// What the gateway knows about its tunnel: the status it reports, and the two facts behind it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// When the last heartbeat was answered (time since the tunnel came up).
    pub last_ok: Option<Duration>,
    /// Heartbeats sent.
    pub ticks: u64,
    /// The last [`LOSS_WINDOW`] heartbeats, newest in bit 0: 1 = not answered in time.
    pub lost: u32,
    /// WireGuard's byte counters as read, and what earlier peers of this tunnel had counted.
    pub counters: Counters,
    /// What is reported: [`step`] keeps its health fields (connected, phase, latency, heartbeat age,
    /// counters, re-applies); the gateway sets the rest (MTUs, remaps, backend) once at tunnel-up.
    pub status: GatewayStatus,
}

/// The tunnel's byte counters, kept monotonic: a re-dial ([`redial`]) replaces WireGuard's peer, and the
/// device counts that peer's bytes from 0 again. A read lower than the one before (either counter) means
/// a new peer, whose counts are added to what the earlier ones had counted at their last read (the bytes
/// since that read, at most [`CHECK_EVERY`] heartbeats' worth, are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// (rx, tx) counted by the peers before the current one.
    earlier: (u64, u64),
    /// (rx, tx) of the current peer at the last read.
    last: (u64, u64),
}

impl Counters {
    /// Takes a read of WireGuard's (rx, tx) and returns the tunnel's (rx, tx) since it came up.
    pub fn observe(&mut self, (rx, tx): (u64, u64)) -> (u64, u64) {
        if rx < self.last.0 || tx < self.last.1 {
            self.earlier = (
                self.earlier.0.saturating_add(self.last.0),
                self.earlier.1.saturating_add(self.last.1),
            );
        }
        self.last = (rx, tx);
        (
            self.earlier.0.saturating_add(rx),
            self.earlier.1.saturating_add(tx),
        )
    }
}

/// What the gateway reports (the `PeerNetwork` status).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Heartbeats answered within the last 3 intervals.
    pub connected: bool,
    /// `Connected` / `NotConnected`.
    pub phase: String,
    /// Last heartbeat round trip, milliseconds.
    pub latency_ms: Option<f64>,
    /// Milliseconds since the last answered heartbeat.
    pub last_heartbeat_age_ms: Option<u64>,
    /// Underlay path MTU (probed or configured).
    pub path_mtu: u32,
    /// Tunnel MTU.
    pub tunnel_mtu: u32,
    /// MSS clamp on.
    pub mss_clamp: bool,
    /// Remote CIDR → local view.
    pub remaps: BTreeMap<String, String>,
    /// Bytes received / sent through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// WireGuard backend.
    pub backend: String,
    /// Times the rules were found missing and re-applied.
    pub reapplied: u64,
    /// Times the path MTU changed while the tunnel was up ([`crate::pmtud`]).
    #[serde(default)]
    pub mtu_changes: u64,
    /// The last such change, worded for the operator, with its time.
    #[serde(default)]
    pub last_mtu_change: Option<String>,
    /// What `ferryctl doctor` reads: handshake age, loss, rules removed, DF probes, conntrack, ports.
    #[serde(default)]
    pub diagnostics: ferry_crds::PeerNetworkDiagnostics,
}

/// How many of the latest heartbeats the loss is counted over (10 s).
pub const LOSS_WINDOW: u32 = 20;

/// What a host check measured besides the counters and the rules, each `None` when it could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    /// When it was measured (RFC 3339).
    pub at: String,
    /// Seconds since WireGuard's last handshake.
    pub handshake_age: Option<u64>,
    /// The DF probes through the tunnel.
    pub df_probe: Option<ferry_crds::DfProbe>,
    /// `nf_conntrack_count`, `nf_conntrack_max`.
    pub conntrack: (Option<u64>, Option<u64>),
    /// `ip_local_port_range`, as `low-high`.
    pub ephemeral_ports: Option<String>,
    /// The interface's own WireGuard public key.
    pub public_key: Option<String>,
}

/// What was observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// A heartbeat was sent at `now`; `rtt` is its answer's round trip, `None` if none came in time.
    Heartbeat {
        /// Time since the tunnel came up.
        now: Duration,
        /// Round trip of the answer.
        rtt: Option<Duration>,
    },
    /// The host was checked.
    HostCheck {
        /// WireGuard's (rx, tx) bytes, if the device answered.
        counters: Option<(u64, u64)>,
        /// Whether the nft table and policy rules are still in place.
        intact: bool,
        /// The rest of what was measured.
        facts: HostFacts,
    },
    /// The host check did not answer in time (a stuck WireGuard device).
    HostCheckTimedOut,
}

/// What the gateway does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Connected or not changed: log it.
    Changed {
        /// The new state.
        connected: bool,
    },
    /// Check the host (counters, rules) and step with [`Observed::HostCheck`].
    CheckHost,
    /// The rules were removed by someone else: apply the plan again.
    Reapply,
    /// A host check did not answer: warn.
    CheckStuck,
    /// Write the status (file, metrics, `PeerNetwork`).
    Report,
}

/// One transition.
pub fn step(mut h: Health, observed: Observed) -> (Health, Vec<Effect>) {
    let mut effects = Vec::new();
    let s = &mut h.status;
    match observed {
        Observed::Heartbeat { now, rtt } => {
            if let Some(rtt) = rtt {
                h.last_ok = Some(now);
                s.latency_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
            h.lost = ((h.lost << 1) | u32::from(rtt.is_none())) & ((1 << LOSS_WINDOW) - 1);
            let counted = (h.ticks + 1).min(u64::from(LOSS_WINDOW));
            s.diagnostics.loss_percent = Some(f64::from(h.lost.count_ones()) * 100.0 / counted as f64);
            let age = h.last_ok.map(|t| now.saturating_sub(t));
            let connected = age.is_some_and(|a| a < DEAD_AFTER);
            if connected != s.connected {
                effects.push(Effect::Changed { connected });
            }
            s.connected = connected;
            s.phase = if connected { "Connected" } else { "NotConnected" }.into();
            s.last_heartbeat_age_ms = age.map(|a| a.as_millis() as u64);
            h.ticks += 1;
            if h.ticks % CHECK_EVERY == 1 {
                effects.push(Effect::CheckHost);
            }
            effects.push(Effect::Report);
        }
        Observed::HostCheck {
            counters,
            intact,
            facts,
        } => {
            if let Some(read) = counters {
                (s.rx_bytes, s.tx_bytes) = h.counters.observe(read);
            }
            let d = &mut s.diagnostics;
            if !intact {
                s.reapplied += 1;
                d.rules_removed += 1;
                d.last_rules_removed = Some(facts.at.clone());
                effects.push(Effect::Reapply);
            }
            d.mss_clamp = s.mss_clamp;
            d.handshake_age_seconds = facts.handshake_age;
            if facts.df_probe.is_some() {
                d.df_probe = facts.df_probe;
            }
            (d.conntrack_count, d.conntrack_max) = facts.conntrack;
            d.ephemeral_ports = facts.ephemeral_ports;
            if facts.public_key.is_some() {
                d.public_key = facts.public_key;
            }
            d.checked_at = Some(facts.at);
        }
        Observed::HostCheckTimedOut => effects.push(Effect::CheckStuck),
    }
    (h, effects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn beat(h: Health, now: u64, rtt: Option<u64>) -> (Health, Vec<Effect>) {
        step(
            h,
            Observed::Heartbeat {
                now: ms(now),
                rtt: rtt.map(ms),
            },
        )
    }

    #[test]
    fn a_tunnel_connects_on_the_first_answer_and_drops_after_three_missed_heartbeats() {
        let (h, e) = beat(Health::default(), 500, None);
        assert!(!h.status.connected && h.status.last_heartbeat_age_ms.is_none());
        assert!(!e.iter().any(|e| matches!(e, Effect::Changed { .. })), "{e:?}");
        let (h, e) = beat(h, 1000, Some(3));
        assert!(h.status.connected);
        assert_eq!(h.status.latency_ms, Some(3.0));
        assert!(e.contains(&Effect::Changed { connected: true }));
        // two missed heartbeats: still connected, no change reported
        let (h, e) = beat(h, 1500, None);
        let (h, e2) = beat(h, 2000, None);
        assert!(h.status.connected && !e.iter().chain(&e2).any(|e| matches!(e, Effect::Changed { .. })));
        assert_eq!(h.status.last_heartbeat_age_ms, Some(1000));
        // the third: 1.5 s without an answer
        let (h, e) = beat(h, 2500, None);
        assert!(!h.status.connected);
        assert_eq!(h.status.phase, "NotConnected");
        assert!(e.contains(&Effect::Changed { connected: false }));
        // the last latency stays; an answer connects again
        assert_eq!(h.status.latency_ms, Some(3.0));
        let (h, e) = beat(h, 3000, Some(1));
        assert!(h.status.connected && e.contains(&Effect::Changed { connected: true }));
    }

    #[test]
    fn every_heartbeat_reports_and_every_fourth_checks_the_host() {
        let mut h = Health::default();
        let mut checks = 0;
        for i in 1..=12 {
            let (next, e) = beat(h, i * 500, Some(1));
            assert_eq!(e.last(), Some(&Effect::Report), "{e:?}");
            if e.contains(&Effect::CheckHost) {
                checks += 1;
                // the check comes before the report, so the report carries its counters
                let c = e.iter().position(|x| *x == Effect::CheckHost).unwrap();
                assert!(c < e.len() - 1);
            }
            h = next;
        }
        assert_eq!(checks, 3);
        assert_eq!(h.ticks, 12);
    }

    #[test]
    fn byte_counters_stay_monotonic_when_a_redial_replaces_the_peer() {
        let check = |h: Health, rx: u64, tx: u64| {
            let observed = Observed::HostCheck {
                counters: Some((rx, tx)),
                intact: true,
                facts: HostFacts::default(),
            };
            step(h, observed).0
        };
        let h = check(Health::default(), 700, 10_000_000);
        assert_eq!((h.status.rx_bytes, h.status.tx_bytes), (700, 10_000_000));
        let h = check(h, 900, 10_000_500);
        assert_eq!((h.status.rx_bytes, h.status.tx_bytes), (900, 10_000_500));
        // the peer was replaced: the device counts from 0 again, the status goes on from where it was
        let h = check(h, 40, 60);
        assert_eq!((h.status.rx_bytes, h.status.tx_bytes), (940, 10_000_560));
        let h = check(h, 100, 160);
        assert_eq!((h.status.rx_bytes, h.status.tx_bytes), (1_000, 10_000_660));
        // one counter lower is a new peer too (the other may have grown past its old value already)
        let h = check(h, 5, 20_000);
        assert_eq!((h.status.rx_bytes, h.status.tx_bytes), (1_005, 10_020_660));
        // a read that did not answer changes nothing
        let (h2, _) = step(
            h.clone(),
            Observed::HostCheck {
                counters: None,
                intact: true,
                facts: HostFacts::default(),
            },
        );
        assert_eq!((h2.status.rx_bytes, h2.status.tx_bytes), (1_005, 10_020_660));
        assert_eq!(h2.counters, h.counters);
    }

    #[test]
    fn rules_removed_by_someone_else_are_reapplied_and_counted() {
        let (h, e) = step(
            Health::default(),
            Observed::HostCheck {
                counters: Some((7, 9)),
                intact: true,
                facts: HostFacts {
                    at: "t1".into(),
                    handshake_age: Some(12),
                    conntrack: (Some(90), Some(100)),
                    ..Default::default()
                },
            },
        );
        assert!(e.is_empty());
        assert_eq!(
            (h.status.rx_bytes, h.status.tx_bytes, h.status.reapplied),
            (7, 9, 0)
        );
        let d = &h.status.diagnostics;
        assert_eq!(
            (d.handshake_age_seconds, d.conntrack_count, d.conntrack_max),
            (Some(12), Some(90), Some(100))
        );
        assert_eq!(
            (
                d.rules_removed,
                d.last_rules_removed.as_deref(),
                d.checked_at.as_deref()
            ),
            (0, None, Some("t1"))
        );
        let probe = ferry_crds::DfProbe {
            mtu_bytes: 1440,
            mtu_answered: false,
            floor_bytes: 1280,
            floor_answered: true,
        };
        let (h, e) = step(
            h,
            Observed::HostCheck {
                counters: None,
                intact: false,
                facts: HostFacts {
                    at: "t2".into(),
                    df_probe: Some(probe.clone()),
                    ..Default::default()
                },
            },
        );
        assert_eq!(e, [Effect::Reapply]);
        // counters the device did not give are kept, not zeroed
        assert_eq!(
            (h.status.rx_bytes, h.status.tx_bytes, h.status.reapplied),
            (7, 9, 1)
        );
        // the removal is counted with its time, for doctor; facts not measured this time are not kept
        let d = &h.status.diagnostics;
        assert_eq!(
            (d.rules_removed, d.last_rules_removed.as_deref()),
            (1, Some("t2"))
        );
        assert_eq!((d.handshake_age_seconds, d.conntrack_max), (None, None));
        assert_eq!(d.df_probe.as_ref(), Some(&probe));
        // a check without probes (the tunnel was down) keeps the last probe's result
        let (h, _) = step(
            h,
            Observed::HostCheck {
                counters: None,
                intact: true,
                facts: HostFacts::default(),
            },
        );
        assert_eq!(h.status.diagnostics.df_probe.as_ref(), Some(&probe));
        let (h2, e) = step(h.clone(), Observed::HostCheckTimedOut);
        assert_eq!(e, [Effect::CheckStuck]);
        assert_eq!(h2, h);
    }

    #[test]
    fn loss_is_counted_over_the_last_twenty_heartbeats() {
        let mut h = Health::default();
        // 1 lost of the first 4
        for (i, answered) in [true, false, true, true].into_iter().enumerate() {
            h = beat(h, 500 * (i as u64 + 1), answered.then_some(1)).0;
        }
        assert_eq!(h.status.diagnostics.loss_percent, Some(25.0));
        // 20 answered later, the lost one is out of the window
        for i in 4..24 {
            h = beat(h, 500 * (i + 1), Some(1)).0;
        }
        assert_eq!(h.status.diagnostics.loss_percent, Some(0.0));
        // a cut: every one of the last 20 lost
        for i in 24..50 {
            h = beat(h, 500 * (i + 1), None).0;
        }
        assert_eq!(h.status.diagnostics.loss_percent, Some(100.0));
        let (h, _) = beat(h, 500 * 51, Some(1));
        assert_eq!(h.status.diagnostics.loss_percent, Some(95.0));
    }

    #[test]
    fn a_clock_that_seems_to_go_back_never_panics_or_disconnects() {
        let (h, _) = beat(Health::default(), 2000, Some(1));
        let (h, e) = beat(h, 1000, None);
        assert!(h.status.connected && !e.contains(&Effect::Changed { connected: false }));
        assert_eq!(h.status.last_heartbeat_age_ms, Some(0));
    }

    #[test]
    fn a_dialling_side_looks_for_the_peers_active_gateway_while_it_hears_nothing() {
        let ms = Duration::from_millis;
        // answered 400 ms ago: not looking
        assert!(!seeking(Some(ms(5000)), None, ms(5400)));
        // a second of silence: looking, then at most once per heartbeat
        assert!(seeking(Some(ms(5000)), None, ms(6000)));
        assert!(!seeking(Some(ms(5000)), Some(ms(6000)), ms(6200)));
        assert!(seeking(Some(ms(5000)), Some(ms(6000)), ms(6500)));
        // never answered yet: counted from the start
        assert!(!seeking(None, None, ms(900)));
        assert!(seeking(None, None, ms(1000)));
        // bytes still arrive while the heartbeats are late: no re-dial; it comes one seek after they stop
        assert!(still_hearing(None, Some(0)), "the first seek only reads");
        assert!(still_hearing(Some(1_000), Some(1_148)));
        assert!(!still_hearing(Some(1_148), Some(1_148)));
        assert!(
            !still_hearing(Some(1_148), Some(32)),
            "a replaced peer is not traffic"
        );
        // a device that does not answer: dial, as without the counter
        assert!(!still_hearing(None, None));
        assert!(!still_hearing(Some(5), None));
        // the standby that took over answers: dial it; back to the first when only it answers
        assert_eq!(redial(&[false, true], 0), Some(1));
        assert_eq!(redial(&[true, false], 1), Some(0));
        // another endpoint is preferred over the current one, which is taken when alone
        assert_eq!(redial(&[true, true, false], 0), Some(1));
        assert_eq!(redial(&[true, false], 0), Some(0));
        // nobody answers (the path is down): nothing to dial; no endpoints: never
        assert_eq!(redial(&[false, false], 0), None);
        assert_eq!(redial(&[], 0), None);
    }
}
