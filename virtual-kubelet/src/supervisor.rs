//! The per-peering supervisor: one virtual kubelet per provider this cluster holds an identity for,
//! started, restarted and stopped as the identities, the `ForeignCluster`s and the gateway's remaps
//! change. Event-driven: reflector stores of the three kinds and the exits of the virtual kubelets
//! trigger a pass; each pass is the pure [`decide`] over what is wanted and what runs. On start, the
//! virtual nodes of peerings that went away while the agent was down are removed too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_crds::identity::{self, SYSTEM_NAMESPACE, text};
use ferry_crds::{ForeignCluster, PeerNetwork};
use futures::StreamExt;
use futures::channel::mpsc;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::consumer::remove_node;
use crate::peer::Peer;
use crate::{Error, REMOTE_CLUSTER_LABEL, VIRTUAL_NODE_LABEL, api_err};

/// What a virtual kubelet runs with (wanted, or started with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The identity's client certificate (changes when renewed).
    pub cert: String,
    /// The remaps the gateway reported, if it has (a running one restarts when they differ).
    pub reported: Option<BTreeMap<IpNet, IpNet>>,
}

/// A running virtual kubelet as [`decide`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The client certificate it runs with.
    pub cert: String,
    /// The remaps it translates with.
    pub remaps: BTreeMap<IpNet, IpNet>,
    /// Whether its task has ended.
    pub finished: bool,
}

/// What the supervisor does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start the virtual kubelet of this provider.
    Start(String),
    /// Stop it and start it again, for the reason given.
    Restart(String, &'static str),
    /// Stop it and remove its node: the peering is gone.
    Stop(String),
}

/// The effects that make what runs what is wanted (pure). Providers in `orphans` (virtual nodes found on
/// start) that are not wanted are stopped too.
pub fn decide(
    wanted: &BTreeMap<String, Wanted>,
    running: &BTreeMap<String, Running>,
    orphans: &[String],
) -> Vec<Effect> {
    let mut out = Vec::new();
    for (p, r) in running {
        match wanted.get(p) {
            None => out.push(Effect::Stop(p.clone())),
            Some(_) if r.finished => out.push(Effect::Restart(p.clone(), "it stopped")),
            Some(w) if w.cert != r.cert => out.push(Effect::Restart(p.clone(), "the identity was renewed")),
            Some(Wanted {
                reported: Some(rm), ..
            }) if *rm != r.remaps => out.push(Effect::Restart(p.clone(), "the gateway's remaps differ")),
            Some(_) => {}
        }
    }
    for p in wanted.keys() {
        if !running.contains_key(p) {
            out.push(Effect::Start(p.clone()));
        }
    }
    for p in orphans {
        if !wanted.contains_key(p) && !running.contains_key(p) {
            out.push(Effect::Stop(p.clone()));
        }
    }
    out
}

/// The peerings with an identity and what each virtual kubelet should run with.
fn wanted(
    fcs: &Store<ForeignCluster>,
    secrets: &Store<Secret>,
    pns: &Store<PeerNetwork>,
) -> BTreeMap<String, Wanted> {
    fcs.state()
        .iter()
        .filter_map(|fc| {
            let p = fc.name_any();
            let s = secrets.get(&ObjectRef::new(&identity::identity_secret(&p)).within(SYSTEM_NAMESPACE))?;
            let reported = pns
                .get(&ObjectRef::new(&p))
                .and_then(|pn| ferry_tunnel::remaps::reported(&pn));
            Some((
                p,
                Wanted {
                    cert: text(&s, identity::TLS_CRT).unwrap_or_default(),
                    reported,
                },
            ))
        })
        .collect()
}

/// The providers whose virtual node exists in this cluster.
async fn virtual_nodes(local: &Client) -> Result<Vec<String>, Error> {
    let sel = format!("{}={}", VIRTUAL_NODE_LABEL.0, VIRTUAL_NODE_LABEL.1);
    let nodes = Api::<Node>::all(local.clone())
        .list_metadata(&ListParams::default().labels(&sel))
        .await
        .map_err(api_err("listing virtual nodes"))?;
    Ok(nodes
        .items
        .iter()
        .filter_map(|n| n.labels().get(REMOTE_CLUSTER_LABEL).cloned())
        .collect())
}

/// How long after a failed start the supervisor tries again (a requeue, not a poll).
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Supervises the virtual kubelets of this (consumer) cluster until the task is dropped.
pub async fn run(
    client: Client,
    consumer: String,
    local_cidrs: Vec<IpNet>,
    kubelet: Option<Arc<crate::kubelet_server::KubeletApi>>,
    pace: crate::peer::Pace,
) {
    use ferry_plumbing::triggers::store_with_changes;
    let (fcs, fc_changes) = store_with_changes(
        Api::<ForeignCluster>::all(client.clone()),
        watcher::Config::default(),
    );
    let (secrets, secret_changes) = store_with_changes(
        Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        watcher::Config::default(),
    );
    let (pns, pn_changes) = store_with_changes(
        Api::<PeerNetwork>::all(client.clone()),
        watcher::Config::default(),
    );
    let (exited_tx, exited) = mpsc::unbounded::<()>();
    let mut triggers = futures::stream::select_all([
        fc_changes.boxed(),
        secret_changes.boxed(),
        pn_changes.boxed(),
        exited.boxed(),
    ]);
    let mut running: HashMap<String, (tokio::task::JoinHandle<()>, Running)> = HashMap::new();
    let mut orphans = match virtual_nodes(&client).await {
        Ok(o) => o,
        Err(e) => {
            warn!("{e}");
            Vec::new()
        }
    };
    while triggers.next().await.is_some() {
        // let a burst of changes settle into one pass
        while let Some(Some(())) = futures::FutureExt::now_or_never(triggers.next()) {}
        // a pass needs every store listed; the list that completes last triggers it (awaiting here
        // would stop the very streams that fill the stores)
        let ready = |r: Option<Result<(), _>>| matches!(r, Some(Ok(())));
        use futures::FutureExt;
        if !(ready(fcs.wait_until_ready().now_or_never())
            && ready(secrets.wait_until_ready().now_or_never())
            && ready(pns.wait_until_ready().now_or_never()))
        {
            continue;
        }
        let want = wanted(&fcs, &secrets, &pns);
        let now: BTreeMap<String, Running> = running
            .iter()
            .map(|(p, (t, r))| {
                let mut r = r.clone();
                r.finished = t.is_finished();
                (p.clone(), r)
            })
            .collect();
        for effect in decide(&want, &now, &std::mem::take(&mut orphans)) {
            let provider = match &effect {
                Effect::Start(p) | Effect::Restart(p, _) | Effect::Stop(p) => p.clone(),
            };
            if let Some((t, _)) = running.remove(&provider) {
                t.abort();
            }
            match effect {
                Effect::Stop(p) => {
                    info!(provider = p, "peering gone; removing its virtual node");
                    if let Err(e) = remove_node(&client, &p).await {
                        warn!("{e}");
                    }
                }
                Effect::Restart(p, why) => info!(provider = p, "restarting the virtual kubelet: {why}"),
                Effect::Start(_) => {}
            }
        }
        for p in want.keys() {
            if running.contains_key(p) {
                continue;
            }
            let Some(s) =
                secrets.get(&ObjectRef::new(&identity::identity_secret(p)).within(SYSTEM_NAMESPACE))
            else {
                continue;
            };
            let pn = pns.get(&ObjectRef::new(p));
            let here = Here {
                client: &client,
                consumer: &consumer,
                local_cidrs: &local_cidrs,
                kubelet: kubelet.clone(),
                pace,
            };
            match start_one(here, p, &s, pn.as_deref(), exited_tx.clone()).await {
                Ok((task, r)) => {
                    running.insert(p.clone(), (task, r));
                }
                Err(e) => {
                    warn!(
                        provider = p,
                        "virtual kubelet not started (retried in {RETRY:?}): {e}"
                    );
                    let tx = exited_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY).await;
                        let _ = tx.unbounded_send(());
                    });
                }
            }
        }
    }
}

/// This cluster, as every virtual kubelet started here shares it.
struct Here<'a> {
    client: &'a Client,
    consumer: &'a str,
    local_cidrs: &'a [IpNet],
    /// The kubelet API that serves the virtual nodes, if it runs.
    kubelet: Option<Arc<crate::kubelet_server::KubeletApi>>,
    /// See [`Peer::pace`].
    pace: crate::peer::Pace,
}

async fn start_one(
    here: Here<'_>,
    provider: &str,
    s: &Secret,
    pn: Option<&PeerNetwork>,
    exited: mpsc::UnboundedSender<()>,
) -> Result<(tokio::task::JoinHandle<()>, Running), Error> {
    let Here {
        client,
        consumer,
        local_cidrs,
        kubelet,
        pace,
    } = here;
    let get = |k: &str| text(s, k).unwrap_or_default();
    let kc = kube::config::Kubeconfig::from_yaml(&get(identity::KUBECONFIG))
        .map_err(|e| Error::NotYet(format!("identity of {provider}: {e}")))?;
    identity::check_kubeconfig(&kc).map_err(|e| Error::NotYet(format!("identity of {provider}: {e}")))?;
    let remote = ferry_plumbing::client::from_kubeconfig_text(&get(identity::KUBECONFIG))
        .await
        .map_err(|e| Error::NotYet(format!("identity of {provider}: {e}")))?;
    let provider_cidrs: Vec<IpNet> = get(identity::POD_CIDRS)
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let remaps = match pn {
        Some(pn) => ferry_tunnel::remaps::of(pn),
        None => ferry_tunnel::remaps::remaps_for(&provider_cidrs, local_cidrs),
    };
    let peer = Peer {
        provider: provider.to_string(),
        consumer: consumer.to_string(),
        tenant_namespace: get(identity::TENANT_NAMESPACE),
        remaps: remaps.clone(),
        provider_view: ferry_tunnel::remaps::remaps_for(local_cidrs, &provider_cidrs),
        local: client.clone(),
        remote,
        version: format!("ferry-{}", env!("CARGO_PKG_VERSION")),
        kubelet_endpoint: kubelet.as_ref().map(|k| k.endpoint),
        pace,
    };
    info!(provider, ?remaps, "starting the virtual kubelet");
    let identity = s.clone();
    let task = tokio::spawn(async move {
        let peer = Arc::new(peer);
        // its pods' logs, streams and figures are served while it runs
        let _served = kubelet.map(|k| k.register(peer.clone(), identity));
        if let Err(e) = crate::consumer::run(peer).await {
            warn!("virtual kubelet: {e}");
        }
        let _ = exited.unbounded_send(());
    });
    Ok((
        task,
        Running {
            cert: get(identity::TLS_CRT),
            remaps,
            finished: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn want(cert: &str, reported: Option<(&str, &str)>) -> Wanted {
        Wanted {
            cert: cert.into(),
            reported: reported.map(|(a, b)| [(net(a), net(b))].into()),
        }
    }

    fn run(cert: &str, remaps: (&str, &str), finished: bool) -> Running {
        Running {
            cert: cert.into(),
            remaps: [(net(remaps.0), net(remaps.1))].into(),
            finished,
        }
    }

    #[test]
    fn starts_what_is_wanted_and_stops_what_is_not() {
        let w = BTreeMap::from([("a".to_string(), want("c1", None))]);
        let r = BTreeMap::from([(
            "gone".to_string(),
            run("c", ("10.0.0.0/16", "10.0.0.0/16"), false),
        )]);
        assert_eq!(
            decide(&w, &r, &[]),
            vec![Effect::Stop("gone".into()), Effect::Start("a".into())]
        );
    }

    #[test]
    fn restarts_on_renewal_exit_or_new_remaps_and_not_otherwise() {
        let same = ("10.244.0.0/16", "10.244.0.0/16");
        let r = BTreeMap::from([("a".to_string(), run("c1", same, false))]);
        let steady = BTreeMap::from([("a".to_string(), want("c1", Some(same)))]);
        assert_eq!(decide(&steady, &r, &[]), vec![]);
        let unreported = BTreeMap::from([("a".to_string(), want("c1", None))]);
        assert_eq!(
            decide(&unreported, &r, &[]),
            vec![],
            "no report yet: keep the fallback"
        );
        let renewed = BTreeMap::from([("a".to_string(), want("c2", Some(same)))]);
        assert_eq!(
            decide(&renewed, &r, &[]),
            vec![Effect::Restart("a".into(), "the identity was renewed")]
        );
        let remapped = BTreeMap::from([(
            "a".to_string(),
            want("c1", Some(("10.244.0.0/16", "10.97.0.0/16"))),
        )]);
        assert_eq!(
            decide(&remapped, &r, &[]),
            vec![Effect::Restart("a".into(), "the gateway's remaps differ")]
        );
        let ended = BTreeMap::from([("a".to_string(), run("c1", same, true))]);
        assert_eq!(
            decide(&steady, &ended, &[]),
            vec![Effect::Restart("a".into(), "it stopped")]
        );
    }

    #[test]
    fn nodes_of_peerings_deleted_while_down_are_removed() {
        let w = BTreeMap::from([("kept".to_string(), want("c", None))]);
        let got = decide(&w, &BTreeMap::new(), &["kept".into(), "deleted".into()]);
        assert_eq!(
            got,
            vec![Effect::Start("kept".into()), Effect::Stop("deleted".into())]
        );
    }
}
