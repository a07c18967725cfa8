//! The checks on built sides: the healthy pair is ok everywhere, and each known failure fails its check
//! (and only what it breaks) with a fix.

use super::*;
use ferry_crds::{DfProbe, PeerNetworkDiagnostics, PeerNetworkSpec, PeerNetworkStatus};

const NOW: i64 = 1_790_000_000;

fn at(secs_ago: i64) -> String {
    chrono::DateTime::from_timestamp(NOW - secs_ago, 0)
        .unwrap()
        .to_rfc3339()
}

/// A connected tunnel to `peer` whose pod CIDR overlaps ours (both 10.244.0.0/16) and is remapped.
fn network(peer: &str, key_expected: &str, own_key: &str) -> PeerNetwork {
    let mut pn = PeerNetwork::new(
        peer,
        PeerNetworkSpec {
            cluster_id: peer.into(),
            local_cidrs: vec!["10.244.0.0/16".into(), "10.96.0.0/16".into()],
            remote_cidrs: vec!["10.244.0.0/16".into(), "10.97.0.0/16".into()],
            peer_public_key: key_expected.into(),
            peer_endpoint: Some("198.18.2.2:51820".into()),
            listen_port: Some(51820),
            underlay_mtu: None,
            tunnel_address: None,
            peer_tunnel_address: None,
            peer_standby_endpoints: vec![],
        },
    );
    pn.status = Some(PeerNetworkStatus {
        phase: Some("Connected".into()),
        remaps: [("10.244.0.0/16".to_string(), "10.0.0.0/16".to_string())].into(),
        latency_ms: Some(0.4),
        path_mtu: Some(1500),
        tunnel_mtu: Some(1440),
        gateway_node: Some("n1".into()),
        diagnostics: Some(PeerNetworkDiagnostics {
            checked_at: Some(at(2)),
            public_key: Some(own_key.into()),
            handshake_age_seconds: Some(20),
            loss_percent: Some(0.0),
            mss_clamp: true,
            df_probe: Some(DfProbe {
                mtu_bytes: 1440,
                mtu_answered: true,
                floor_bytes: 1280,
                floor_answered: true,
            }),
            conntrack_count: Some(120),
            conntrack_max: Some(262_144),
            ephemeral_ports: Some("32768-60999".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    pn
}

const HEALTHY_COREFILE: &str =
    ".:53 {\n    kubernetes cluster.local {\n    }\n    forward . /etc/resolv.conf\n}\n";
const STANZA: &str = "clusterset.local:53 {\n    forward . 10.96.0.53\n}\n";

/// c1 consumes from c2; both ends healthy.
fn pair() -> (Side, Side) {
    let c1 = Side {
        name: "consumer-c1".into(),
        cluster_id: Some("consumer-c1".into()),
        now: NOW,
        clock_skew: Some(0.3),
        node_pod_cidrs: vec![("n1".into(), "10.244.200.0/24".parse().unwrap())],
        peers: vec![PeerFacts {
            id: "provider-c2".into(),
            conditions: vec![(
                "Authenticated".into(),
                "True".into(),
                "Peered".into(),
                String::new(),
            )],
            network: Some(network("provider-c2", "KEY2", "KEY1")),
            consumes: true,
            virtual_node: Some(VirtualNodeFacts {
                name: "ferry-provider-c2".into(),
                ready: true,
                why: "Ready".into(),
                pods: 3,
                pods_allocatable: Some(110),
            }),
            cert: Some((NOW - 3600, NOW + 23 * 3600)),
            cordoned: None,
        }],
        dns: DnsFacts {
            corefiles: vec![
                ("kube-system/coredns".into(), HEALTHY_COREFILE.into()),
                (
                    "kube-system/coredns-custom clusterset.server".into(),
                    STANZA.into(),
                ),
            ],
            ferry_dns_ip: Some("10.96.0.53".parse().unwrap()),
            namespace: "ferry-system".into(),
            ferry_dns_ready: Some(1),
            live: Some(LiveQuery {
                server: "10.96.0.53:53".parse().unwrap(),
                explicit: false,
                name: "echo.demo.svc.clusterset.local.".into(),
                expected: vec!["10.0.0.5".parse().unwrap(), "10.0.1.9".parse().unwrap()],
                answer: Ok(vec!["10.0.0.5".parse().unwrap(), "10.0.1.9".parse().unwrap()]),
                millis: 2,
            }),
        },
    };
    let mut c2 = c1.clone();
    c2.name = "provider-c2".into();
    c2.cluster_id = Some("provider-c2".into());
    c2.clock_skew = Some(-0.2);
    c2.node_pod_cidrs = vec![("m1".into(), "10.244.201.0/24".parse().unwrap())];
    let mut net = network("consumer-c1", "KEY1", "KEY2");
    net.spec.local_cidrs = vec!["10.244.0.0/16".into(), "10.97.0.0/16".into()];
    net.spec.remote_cidrs = vec!["10.244.0.0/16".into(), "10.96.0.0/16".into()];
    c2.peers = vec![PeerFacts {
        id: "consumer-c1".into(),
        conditions: vec![],
        network: Some(net),
        consumes: false,
        virtual_node: None,
        cert: None,
        cordoned: Some(false),
    }];
    c2.dns.corefiles[1].1 = STANZA.replace("10.96.0.53", "10.97.0.53");
    c2.dns.ferry_dns_ip = Some("10.97.0.53".parse().unwrap());
    (c1, c2)
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:#?}"))
}

fn diag(side: &mut Side) -> &mut PeerNetworkDiagnostics {
    side.peers[0]
        .network
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .diagnostics
        .as_mut()
        .unwrap()
}

fn status(side: &mut Side) -> &mut PeerNetworkStatus {
    side.peers[0].network.as_mut().unwrap().status.as_mut().unwrap()
}

/// The levels of every check but those named, which must all be ok.
fn only_fails(checks: &[Check], names: &[&str]) {
    for c in checks {
        if names.contains(&c.check) {
            assert_eq!(c.level, Level::Fail, "{c:#?}");
            assert!(
                c.fix.as_ref().is_some_and(|f| !f.is_empty()),
                "a failure names its fix: {c:#?}"
            );
        } else {
            assert_eq!(c.level, Level::Ok, "{c:#?}");
        }
    }
}

#[test]
fn the_healthy_pair_is_ok_on_every_check_from_both_sides() {
    let (c1, c2) = pair();
    for (a, b) in [(&c1, &c2), (&c2, &c1)] {
        for theirs in [Some(b), None] {
            let checks = run(a, theirs, None);
            assert_eq!(checks.len(), 7, "{checks:#?}");
            only_fails(&checks, &[]);
            assert!(!failed(&checks));
        }
    }
    let checks = run(&c1, Some(&c2), None);
    assert!(
        find(&checks, "cidr")
            .evidence
            .contains("10.244.0.0/16 overlaps 10.244.0.0/16 here and is remapped to 10.0.0.0/16")
    );
    assert!(
        find(&checks, "mtu")
            .evidence
            .contains("DF probe of 1440 B through the tunnel was answered")
    );
    assert!(
        find(&checks, "tunnel")
            .evidence
            .contains("keys and endpoints match on both sides")
    );
    assert!(
        find(&checks, "dns")
            .evidence
            .contains("only clusterset.local goes to 10.96.0.53")
    );
    assert!(
        find(&checks, "clock")
            .evidence
            .contains("+0.5 s from provider-c2")
    );
    assert!(
        find(&checks, "peering")
            .evidence
            .contains("virtual node ferry-provider-c2 Ready")
    );
    let t = table(&checks);
    assert!(t.ends_with("7 checks: 0 failed, 0 warned\n"), "{t}");
}

#[test]
fn an_overlap_without_its_remap_or_with_its_rules_removed_fails_cidr() {
    // the remap is missing: the peer's 10.244/16 is the same as ours
    let (mut c1, _) = pair();
    status(&mut c1).remaps.clear();
    let checks = run(&c1, None, None);
    only_fails(&checks, &["cidr"]);
    let c = find(&checks, "cidr");
    assert!(
        c.evidence
            .contains("the peer's 10.244.0.0/16 overlaps 10.244.0.0/16 here and is not remapped"),
        "{c:#?}"
    );
    // a remap onto a range that overlaps ours again is no remap
    status(&mut c1).remaps = [("10.244.0.0/16".to_string(), "10.244.0.0/16".to_string())].into();
    assert_eq!(find(&run(&c1, None, None), "cidr").level, Level::Fail);

    // the rules were removed 10 s ago (and re-applied): fail, naming the node and what to look for
    let (mut c1, _) = pair();
    diag(&mut c1).rules_removed = 3;
    diag(&mut c1).last_rules_removed = Some(at(10));
    let checks = run(&c1, None, None);
    only_fails(&checks, &["cidr"]);
    let c = find(&checks, "cidr");
    assert!(c.evidence.contains("removed 3 time(s), last 10 s ago"), "{c:#?}");
    assert!(
        c.fix.as_ref().unwrap().contains("node n1") && c.fix.as_ref().unwrap().contains("nft flush ruleset")
    );
    // an hour ago: a warning
    diag(&mut c1).last_rules_removed = Some(at(3600));
    assert_eq!(find(&run(&c1, None, None), "cidr").level, Level::Warn);
}

#[test]
fn pod_cidrs_that_either_side_does_not_declare_fail_cidr() {
    let (mut c1, mut c2) = pair();
    c1.node_pod_cidrs
        .push(("n9".into(), "10.250.0.0/24".parse().unwrap()));
    let c = find(&run(&c1, None, None), "cidr").clone();
    assert_eq!(c.level, Level::Fail);
    assert!(c.evidence.contains("10.250.0.0/24 (node n9)"), "{c:#?}");
    // the peer's node outside what this side routes is seen only with both sides
    let (c1, _) = pair();
    c2.node_pod_cidrs
        .push(("m9".into(), "10.251.0.0/24".parse().unwrap()));
    assert_eq!(find(&run(&c1, None, None), "cidr").level, Level::Ok);
    let c = find(&run(&c1, Some(&c2), None), "cidr").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("the peer's pods use 10.251.0.0/24 (node m9)"),
        "{c:#?}"
    );
}

#[test]
fn conntrack_near_its_limit_warns_then_fails_capacity_with_the_sysctl() {
    let (mut c1, _) = pair();
    (diag(&mut c1).conntrack_count, diag(&mut c1).conntrack_max) = (Some(800), Some(1000));
    let c = find(&run(&c1, None, None), "capacity").clone();
    assert_eq!(c.level, Level::Warn, "{c:#?}");
    diag(&mut c1).conntrack_count = Some(950);
    let checks = run(&c1, None, None);
    only_fails(&checks, &["capacity"]);
    let c = find(&checks, "capacity");
    assert!(
        c.evidence.contains("conntrack 950/1000 (95%) on node n1"),
        "{c:#?}"
    );
    assert!(
        c.fix
            .as_ref()
            .unwrap()
            .contains("sysctl -w net.netfilter.nf_conntrack_max=2000")
    );
    // more flows than ephemeral ports: a warning with the port range's sysctl
    (diag(&mut c1).conntrack_count, diag(&mut c1).conntrack_max) = (Some(29_000), Some(262_144));
    let c = find(&run(&c1, None, None), "capacity").clone();
    assert!(c.level == Level::Warn && c.fix.unwrap().contains("ip_local_port_range"));
    // conntrack not loaded: nothing to fill
    (diag(&mut c1).conntrack_count, diag(&mut c1).conntrack_max) = (None, None);
    assert_eq!(find(&run(&c1, None, None), "capacity").level, Level::Ok);
}

#[test]
fn forwarding_every_name_to_the_peer_fails_dns_and_both_ways_is_named_a_loop() {
    let (mut c1, mut c2) = pair();
    // c1 sends `.` to c2's DNS at 10.97.0.10 (c2's service CIDR, not remapped); c2 sends it to c1's 10.96.0.10
    c1.dns.corefiles[0].1 = ".:53 {\n    forward . 10.97.0.10\n}\n".into();
    let checks = run(&c1, None, None);
    only_fails(&checks, &["dns"]);
    let c = find(&checks, "dns");
    assert!(
        c.evidence
            .contains("to 10.97.0.10, an address of peer provider-c2 (10.97.0.0/16)"),
        "{c:#?}"
    );
    assert!(c.fix.as_ref().unwrap().contains("forward . /etc/resolv.conf"));
    c2.dns.corefiles[0].1 = ".:53 {\n    forward . dns://10.96.0.10:53\n}\n".into();
    let c = find(&run(&c1, Some(&c2), None), "dns").clone();
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.evidence
            .starts_with("forwarding loop: consumer-c1 forwards every name"),
        "{c:#?}"
    );
    assert!(
        c.evidence
            .contains("provider-c2 forwards every name back to 10.96.0.10"),
        "{c:#?}"
    );
    // an address in the remapped view of the peer's pod CIDR is the peer's too
    c1.dns.corefiles[0].1 = ".:53 {\n    forward . 10.0.3.7\n}\n".into();
    assert!(
        find(&run(&c1, None, None), "dns")
            .evidence
            .contains("peer provider-c2 (10.244.0.0/16)")
    );
}

#[test]
fn clusterset_local_not_forwarded_or_forwarded_elsewhere_is_reported() {
    let (mut c1, _) = pair();
    c1.dns.corefiles.truncate(1);
    let c = find(&run(&c1, None, None), "dns").clone();
    assert!(
        c.level == Level::Warn && c.fix.as_ref().unwrap().contains("clusterset.server"),
        "{c:#?}"
    );
    c1.dns.corefiles.push((
        "x".into(),
        "clusterset.local {\n forward . 10.96.0.99\n}\n".into(),
    ));
    let c = find(&run(&c1, None, None), "dns").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("not to ferry-dns (10.96.0.53)"),
        "{c:#?}"
    );
    c1.dns.corefiles[1].1 = "clusterset.local {\n forward . 10.97.0.53\n}\n".into();
    let c = find(&run(&c1, None, None), "dns").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("an address of peer provider-c2"),
        "{c:#?}"
    );
    c1.dns.corefiles.clear();
    assert_eq!(find(&run(&c1, None, None), "dns").level, Level::Warn);
}

#[test]
fn a_full_size_probe_lost_while_small_ones_pass_is_a_blackhole_with_its_fix() {
    let (mut c1, _) = pair();
    c1.peers[0].network.as_mut().unwrap().spec.underlay_mtu = Some(1500);
    diag(&mut c1).df_probe.as_mut().unwrap().mtu_answered = false;
    let checks = run(&c1, None, None);
    only_fails(&checks, &["mtu"]);
    let c = find(&checks, "mtu");
    assert!(
        c.evidence
            .contains("MTU blackhole: a DF probe of 1440 B through the tunnel is lost while 1280 B passes"),
        "{c:#?}"
    );
    assert!(c.evidence.contains("pinned to 1500"), "{c:#?}");
    assert!(
        c.fix.as_ref().unwrap().contains("remove spec.underlayMTU"),
        "{c:#?}"
    );
    // both lost: the tunnel is down, which the tunnel check says; mtu only warns
    diag(&mut c1).df_probe.as_mut().unwrap().floor_answered = false;
    assert_eq!(find(&run(&c1, None, None), "mtu").level, Level::Warn);
    // a tunnel MTU larger than the path carries fails whatever the probes say
    let (mut c1, _) = pair();
    status(&mut c1).path_mtu = Some(1400);
    let c = find(&run(&c1, None, None), "mtu").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("over IPv4 (1340)"),
        "{c:#?}"
    );
    // no MSS clamp: a warning
    let (mut c1, _) = pair();
    diag(&mut c1).mss_clamp = false;
    assert_eq!(find(&run(&c1, None, None), "mtu").level, Level::Warn);
}

#[test]
fn a_dropped_tunnel_stale_handshakes_and_a_silent_gateway_fail_tunnel() {
    let (mut c1, _) = pair();
    status(&mut c1).phase = Some("NotConnected".into());
    diag(&mut c1).loss_percent = Some(100.0);
    diag(&mut c1).handshake_age_seconds = Some(14);
    let checks = run(&c1, None, None);
    let c = find(&checks, "tunnel");
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.evidence.contains("loss 100% over 10 s") && c.evidence.contains("198.18.2.2:51820"),
        "{c:#?}"
    );
    assert!(c.fix.as_ref().unwrap().contains("UDP to 198.18.2.2:51820"));
    // connected but no handshake for 4 minutes
    let (mut c1, _) = pair();
    diag(&mut c1).handshake_age_seconds = Some(240);
    assert!(
        find(&run(&c1, None, None), "tunnel")
            .evidence
            .contains("240 s ago (it rekeys every 120 s)")
    );
    // the gateway stopped reporting a minute ago
    diag(&mut c1).checked_at = Some(at(60));
    let c = find(&run(&c1, None, None), "tunnel").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("last reported 60 s ago"),
        "{c:#?}"
    );
    // loss above 5 %: a warning
    let (mut c1, _) = pair();
    diag(&mut c1).loss_percent = Some(10.0);
    assert_eq!(find(&run(&c1, None, None), "tunnel").level, Level::Warn);
}

#[test]
fn keys_and_ports_that_do_not_match_across_the_two_sides_fail_tunnel() {
    let (c1, mut c2) = pair();
    diag(&mut c2).public_key = Some("KEY-NEW".into());
    let c = find(&run(&c1, Some(&c2), None), "tunnel").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("the peer's gateway has KEY-NEW"),
        "{c:#?}"
    );
    let c = find(&run(&c2, Some(&c1), None), "tunnel").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("this side's gateway has KEY-NEW"),
        "{c:#?}"
    );
    let (c1, mut c2) = pair();
    c2.peers[0].network.as_mut().unwrap().spec.listen_port = Some(51821);
    let c = find(&run(&c1, Some(&c2), None), "tunnel").clone();
    assert!(
        c.evidence
            .contains("dials port 51820 but the peer's gateway listens on 51821"),
        "{c:#?}"
    );
    // the peer's side of another cluster is not mixed in
    let (c1, mut c2) = pair();
    c2.cluster_id = Some("someone-else".into());
    diag(&mut c2).public_key = Some("KEY-NEW".into());
    assert_eq!(find(&run(&c1, Some(&c2), None), "tunnel").level, Level::Ok);
}

#[test]
fn the_peering_check_reads_conditions_certificates_the_virtual_node_grant_and_cordon() {
    let (mut c1, mut c2) = pair();
    c1.peers[0].cert = Some((NOW - 86_400, NOW - 5));
    c1.peers[0].virtual_node.as_mut().unwrap().ready = false;
    c1.peers[0].virtual_node.as_mut().unwrap().why = "NetworkUnavailable (tunnel down)".into();
    let c = find(&run(&c1, None, None), "peering").clone();
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.evidence.contains("expired 5 s ago") && c.evidence.contains("is not Ready: NetworkUnavailable"),
        "{c:#?}"
    );
    let (mut c1, _) = pair();
    c1.peers[0].virtual_node = None;
    assert!(
        find(&run(&c1, None, None), "peering")
            .evidence
            .contains("no virtual node")
    );
    let (mut c1, _) = pair();
    c1.peers[0].virtual_node.as_mut().unwrap().pods = 110;
    let c = find(&run(&c1, None, None), "peering").clone();
    assert!(
        c.level == Level::Warn && c.evidence.contains("110/110 pods"),
        "{c:#?}"
    );
    let (mut c1, _) = pair();
    c1.peers[0].cert = Some((NOW - 86_000, NOW + 400));
    assert_eq!(find(&run(&c1, None, None), "peering").level, Level::Warn);
    c2.peers[0].cordoned = Some(true);
    let c = find(&run(&c2, None, None), "peering").clone();
    assert!(
        c.level == Level::Warn && c.evidence.contains("cordoned"),
        "{c:#?}"
    );
    let (mut c1, _) = pair();
    c1.peers[0].conditions[0].1 = "False".into();
    assert_eq!(find(&run(&c1, None, None), "peering").level, Level::Fail);
}

#[test]
fn clock_skew_warns_then_fails_and_is_measured_between_the_clusters_when_both_are_read() {
    let (mut c1, mut c2) = pair();
    c1.clock_skew = Some(20.0);
    assert_eq!(find(&run(&c1, None, None), "clock").level, Level::Warn);
    c2.clock_skew = Some(-50.0);
    let c = find(&run(&c1, Some(&c2), None), "clock").clone();
    assert!(
        c.level == Level::Fail && c.evidence.contains("+70.0 s from provider-c2"),
        "{c:#?}"
    );
    // both off by the same amount from this machine: the clusters agree
    c2.clock_skew = Some(19.0);
    assert_eq!(find(&run(&c1, Some(&c2), None), "clock").level, Level::Ok);
}

#[test]
fn only_names_one_peer() {
    let (mut c1, _) = pair();
    let mut other = c1.peers[0].clone();
    other.id = "provider-c3".into();
    c1.peers.push(other);
    assert_eq!(run(&c1, None, None).len(), 12);
    let checks = run(&c1, None, Some("provider-c3"));
    assert_eq!(checks.len(), 7);
    assert!(
        checks
            .iter()
            .skip(2)
            .all(|c| c.subject == "consumer-c1 → provider-c3")
    );
}

#[test]
fn the_live_query_says_ferry_dns_answers_an_imported_name_as_the_imports_say_and_fails_each_way_it_cannot() {
    let (c1, _) = pair();
    let dns = |s: &Side| run(s, None, None).into_iter().find(|c| c.check == "dns").unwrap();
    let c = dns(&c1);
    assert_eq!(c.level, Level::Ok, "{c:?}");
    assert!(
        c.evidence.ends_with(
            "; live: ferry-dns at 10.96.0.53:53 answers echo.demo.svc.clusterset.local. with 10.0.0.5, 10.0.1.9 in 2 ms, as its imports say"
        ),
        "{c:?}"
    );

    // a stale zone: one endpoint gone from the answer
    let mut s = c1.clone();
    s.dns.live.as_mut().unwrap().answer = Ok(vec!["10.0.0.5".parse().unwrap()]);
    let c = dns(&s);
    assert_eq!(c.level, Level::Fail);
    assert!(c.evidence.contains("answers echo.demo.svc.clusterset.local. with 10.0.0.5, but its imports say 10.0.0.5, 10.0.1.9: its zone is stale"), "{c:?}");
    assert!(
        c.fix
            .unwrap()
            .contains("kubectl -n ferry-system rollout restart deploy/ferry-dns")
    );

    // an answer that is an error (the name unknown to it)
    s.dns.live.as_mut().unwrap().answer = Err("Non-Existent Domain".into());
    let c = dns(&s);
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.evidence
            .contains("does not answer echo.demo.svc.clusterset.local.: Non-Existent Domain"),
        "{c:?}"
    );

    // no answer at the Service address: from a laptop that is expected, not a failure
    s.dns.live.as_mut().unwrap().answer = Err("no answer from 10.96.0.53:53 in 2 x 800 ms".into());
    let c = dns(&s);
    assert_eq!(c.level, Level::Ok, "{c:?}");
    assert!(
        c.evidence
            .contains("live query of echo.demo.svc.clusterset.local. not made: no answer"),
        "{c:?}"
    );
    // an answer from something else on the way (a DNS proxy answering every port-53 packet): not made
    s.dns.live.as_mut().unwrap().answer = Err(
        "not ferry-dns: the answer (Non-Existent Domain) is not authoritative for clusterset.local.".into(),
    );
    let c = dns(&s);
    assert_eq!(c.level, Level::Ok, "{c:?}");
    assert!(c.evidence.contains("not made: not ferry-dns"), "{c:?}");
    // … but at the address the operator named, it is a failure
    s.dns.live.as_mut().unwrap().explicit = true;
    assert_eq!(dns(&s).level, Level::Fail);
    s.dns.live.as_mut().unwrap().explicit = false;
    s.dns.live.as_mut().unwrap().answer = Err("no answer from 10.96.0.53:53 in 2 x 800 ms".into());
    // … and so is no answer at the address the operator named
    s.dns.live.as_mut().unwrap().explicit = true;
    let c = dns(&s);
    assert_eq!(c.level, Level::Fail, "{c:?}");
    assert!(c.fix.unwrap().contains("listens at 10.96.0.53:53"));

    // ferry-dns with no ready pod behind its Service fails whatever the query says
    let mut s = c1.clone();
    s.dns.ferry_dns_ready = Some(0);
    let c = dns(&s);
    assert_eq!(c.level, Level::Fail);
    assert!(c.evidence.contains("no ready endpoint"), "{c:?}");

    // a config failure keeps its own fix, and the live part still reports
    let mut s = c1.clone();
    s.dns.corefiles[0].1 = HEALTHY_COREFILE.replace("/etc/resolv.conf", "10.97.0.10");
    let c = dns(&s);
    assert_eq!(c.level, Level::Fail);
    assert!(c.evidence.contains("; live: ferry-dns at"), "{c:?}");
    assert!(c.fix.unwrap().contains("forward . /etc/resolv.conf"));

    // nothing imported, no live part
    let mut s = c1.clone();
    s.dns.live = None;
    assert!(!dns(&s).evidence.contains("live"));
}
