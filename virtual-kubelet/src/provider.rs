//! The provider side (run by the provider's `ferry-agent`): the `ShadowPod` controller and the slice
//! availability loop.
//!
//! [`ShadowPodReconciler`]: every `ShadowPod` has exactly one pod of the same name, owned by it (controller
//! owner reference), built from its template under the tenant's policy ([`crate::policy`]) and within the
//! tenant's grant (counted from the pods this controller created, never from what the tenant wrote). A
//! refused `ShadowPod` gets an `Admitted=False` condition, an Event and the [`REFUSAL_ANNOTATION`] naming
//! the field and the fix; nothing runs. A pod deleted or evicted on the provider is recreated here, whether or not the consumer is
//! reachable; deleting the `ShadowPod` lets the garbage collector delete the pod gracefully.
//!
//! [`run_availability`]: every few seconds each tenant's `ResourceSlice` gets `status.available` =
//! min(grant, what the tenant's pods use + what the provider's nodes have free), which the consumer turns
//! into its virtual node's allocatable.

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::common::ResourceAmounts;
use std::collections::HashMap;

use ferry_crds::{ResourceSlice, ShadowPod, Tenant};
use ferry_plumbing::events::{Event, EventType, Recorder, Reporter};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::policy::{Owner, build_pod};
use crate::provider_pod::{ProviderPod, slim_meta};
use crate::quantity::{Amounts, available};
use crate::translate::ORIGIN_CLUSTER_LABEL;
use crate::{Error, REFUSAL_ANNOTATION, TENANT_LABEL, api_err};

/// What the reconciler shares.
pub struct ShadowPodReconciler {
    /// The provider's client.
    pub client: Client,
    /// Every pod of the provider, slim (shared with the availability loop).
    pub pods: Store<ProviderPod>,
    /// Tenant namespaces (those labelled with [`TENANT_LABEL`] by the provider).
    pub namespaces: Store<Namespace>,
    /// Tenants: their policy and whether they are cordoned.
    pub tenants: Store<Tenant>,
    /// The tenants' `ResourceSlice`s: their grants.
    pub slices: Store<ResourceSlice>,
    /// Events on refused `ShadowPod`s.
    pub recorder: Recorder,
    /// Pods created but not yet in the pod store, per tenant (so concurrent reconciles cannot together
    /// exceed a grant).
    in_flight: std::sync::Mutex<HashMap<String, HashMap<String, Amounts>>>,
    /// What each tenant's pods hold (fed by the pod watch that also fills `pods`).
    ledger: Arc<std::sync::Mutex<Ledger>>,
}

/// What each tenant's pods hold, kept up to date from the pod watch's events (one pod's change costs one
/// update), so admitting a pod never walks every pod of the cluster: at 10,000 pods that walk (a key and a
/// quantity parse per pod, per admission) made the provider's agent quadratic.
#[derive(Debug, Default)]
pub struct Ledger {
    /// `ns/name` → (tenant, what the pod holds).
    pods: HashMap<String, (String, Amounts)>,
    /// Tenant → the sum of its pods' holdings.
    totals: HashMap<String, Amounts>,
    /// While the watch relists: the ledger being rebuilt (the current one answers until it is done).
    relisting: Option<Box<Ledger>>,
}

impl Ledger {
    /// The ledger of these pods.
    pub fn of(pods: &[Arc<ProviderPod>]) -> Self {
        let mut l = Self::default();
        for p in pods {
            l.apply(p);
        }
        l
    }

    fn key(p: &ProviderPod) -> String {
        format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
    }

    fn remove_key(&mut self, key: &str) {
        if let Some((tenant, held)) = self.pods.remove(key)
            && let Some(t) = self.totals.get_mut(&tenant)
        {
            t.cpu -= held.cpu;
            t.memory -= held.memory;
            t.pods -= held.pods;
        }
    }

    /// A pod as it is now: a tenant's pod (labelled with its origin) holds its requests until it ends.
    fn apply(&mut self, p: &ProviderPod) {
        let key = Self::key(p);
        self.remove_key(&key);
        let Some(tenant) = p.tenant() else {
            return;
        };
        let held = if p.ended() {
            Amounts::default()
        } else {
            p.spec.requests
        };
        let t = self.totals.entry(tenant.to_string()).or_default();
        *t = t.plus(held);
        self.pods.insert(key, (tenant.to_string(), held));
    }

    /// One event of the pod watch.
    pub fn on_event(&mut self, ev: &watcher::Event<ProviderPod>) {
        match ev {
            watcher::Event::Apply(p) => self.apply(p),
            watcher::Event::Delete(p) => self.remove_key(&Self::key(p)),
            watcher::Event::Init => self.relisting = Some(Box::default()),
            watcher::Event::InitApply(p) => self.relisting.get_or_insert_with(Box::default).apply(p),
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    *self = *fresh;
                }
            }
        }
    }

    /// What `tenant`'s pods hold.
    pub fn used(&self, tenant: &str) -> Amounts {
        self.totals.get(tenant).copied().unwrap_or_default()
    }

    /// Whether the pod `ns/name` is counted.
    pub fn counts(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }
}

/// Whether a pod ended in a way the provider's controller heals (evicted, or failed while it should run
/// forever).
fn needs_replacement(p: &ProviderPod) -> bool {
    p.phase() == Some("Failed") && p.spec.restarts_always
}

/// Why a `ShadowPod` gets no pod (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Machine-readable reason (`PolicyViolation`, `OverGrant`, `NotATenantNamespace`, `Cordoned`).
    pub reason: &'static str,
    /// The fields at fault and the fix.
    pub message: String,
}

/// Whether `need` fits into `granted` next to `used` (every dimension; pure).
pub fn fits(granted: Amounts, used: Amounts, need: Amounts) -> Result<(), String> {
    let total = used.plus(need);
    let mut over = Vec::new();
    for (what, g, t, unit) in [
        ("cpu", granted.cpu, total.cpu, 1000),
        ("memory", granted.memory, total.memory, 1000),
        ("pods", granted.pods, total.pods, 1000),
    ] {
        if t > g {
            over.push(format!("{what} {} of {} granted", t / unit, g / unit));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the tenant's grant would be exceeded ({}); fix: wait for pods of this tenant to end, or ask the provider for a larger grant",
            over.join(", ")
        ))
    }
}

impl ShadowPodReconciler {
    /// The reconciler's context over the given stores and the ledger the pod watch keeps.
    pub fn new(
        client: Client,
        pods: Store<ProviderPod>,
        namespaces: Store<Namespace>,
        tenants: Store<Tenant>,
        slices: Store<ResourceSlice>,
        ledger: Arc<std::sync::Mutex<Ledger>>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "ferry-shadowpod-controller".into(),
                instance: None,
            },
        );
        Self {
            client,
            pods,
            namespaces,
            tenants,
            slices,
            recorder,
            in_flight: Default::default(),
            ledger,
        }
    }

    /// What the tenant's pods hold now (pods the watch has seen plus those created a moment ago),
    /// forgetting in-flight pods the watch has caught up with.
    fn tenant_usage(&self, tenant: &str) -> Amounts {
        let Ok(ledger) = self.ledger.lock() else {
            return Amounts::default();
        };
        let mut used = ledger.used(tenant);
        if let Ok(mut m) = self.in_flight.lock()
            && let Some(f) = m.get_mut(tenant)
        {
            f.retain(|k, _| !ledger.counts(k));
            used = f.values().fold(used, |a, b| a.plus(*b));
        }
        used
    }

    /// Builds the pod for `sp` under its tenant's policy and grant, reserving its resources; or why not.
    fn admit(&self, sp: &ShadowPod, uid: &str) -> Result<Pod, Refused> {
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let tenant_id = self
            .namespaces
            .get(&ObjectRef::new(&ns))
            .and_then(|n| n.labels().get(TENANT_LABEL).cloned())
            .ok_or_else(|| Refused {
                reason: "NotATenantNamespace",
                message: format!(
                    "metadata.namespace: {ns} belongs to no tenant; fix: offload the namespace through peering (ferryctl offload namespace)"
                ),
            })?;
        let tenant = self
            .tenants
            .get(&ObjectRef::new(&tenant_id))
            .ok_or_else(|| Refused {
                reason: "NotATenantNamespace",
                message: format!(
                    "metadata.namespace: the tenant {tenant_id} of {ns} is not admitted; fix: peer again"
                ),
            })?;
        if tenant.spec.cordoned {
            return Err(Refused {
                reason: "Cordoned",
                message: format!(
                    "tenant {tenant_id} is cordoned on this provider: no new pods; fix: the provider uncordons it (ferryctl uncordon tenant {tenant_id})"
                ),
            });
        }
        let owner = Owner {
            name: &name,
            namespace: &ns,
            tenant: &tenant_id,
            consumer_pod_uid: &sp.spec.consumer_pod_uid,
            owner_reference: OwnerReference {
                api_version: ShadowPod::api_version(&()).to_string(),
                kind: ShadowPod::kind(&()).to_string(),
                name: name.clone(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        };
        let pod = build_pod(sp.spec.template.as_str(), &owner, &tenant.spec.policy).map_err(|v| Refused {
            reason: "PolicyViolation",
            message: v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        })?;
        let granted = self
            .slices
            .get(&ObjectRef::new(crate::GRANTED_SLICE).within(&tenant.spec.tenant_namespace))
            .and_then(|s| {
                s.status
                    .as_ref()?
                    .granted
                    .as_ref()
                    .map(Amounts::from_resource_amounts)
            })
            .unwrap_or_default();
        let need = Amounts::of_pod(&pod);
        let key = format!("{ns}/{name}");
        let used = self.tenant_usage(&tenant_id);
        fits(granted, used, need).map_err(|message| Refused {
            reason: "OverGrant",
            message,
        })?;
        if let Ok(mut m) = self.in_flight.lock() {
            m.entry(tenant_id).or_default().insert(key, need);
        }
        Ok(pod)
    }

    fn release(&self, sp: &ShadowPod) {
        let key = format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any());
        if let Ok(mut m) = self.in_flight.lock() {
            for f in m.values_mut() {
                f.remove(&key);
            }
        }
    }

    /// Records a refusal on the `ShadowPod` (condition, annotation for the consumer, an Event) once.
    async fn refuse(&self, sp: &ShadowPod, r: &Refused) -> Result<(), Error> {
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let note = format!("{}: {}", r.reason, r.message);
        let refused = sp.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Refused");
        if refused && sp.annotations().get(REFUSAL_ANNOTATION) == Some(&note) {
            return Ok(());
        }
        warn!(shadow = name, ns, "refused: {note}");
        let api: Api<ShadowPod> = Api::namespaced(self.client.clone(), &ns);
        // the annotation (what the consumer reads) first: whoever sees the Admitted=False condition sees
        // the reason too
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REFUSAL_ANNOTATION: note}}})),
        )
        .await
        .map_err(api_err(format!("ShadowPod {ns}/{name} annotation")))?;
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Refused", "conditions": admitted(sp, false, r.reason, &r.message)}})),
        )
        .await
        .map_err(api_err(format!("ShadowPod {ns}/{name} status")))?;
        let ev = Event {
            type_: EventType::Warning,
            reason: r.reason.into(),
            note: Some(r.message.chars().take(1000).collect()),
            action: "Admit".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &sp.object_ref(&())).await {
            warn!("event on ShadowPod {ns}/{name}: {e}");
        }
        Ok(())
    }

    /// Clears an earlier refusal once the pod is created.
    async fn clear_refusal(&self, sp: &ShadowPod) -> Result<(), Error> {
        if !sp.annotations().contains_key(REFUSAL_ANNOTATION) {
            return Ok(());
        }
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let api: Api<ShadowPod> = Api::namespaced(self.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Admitted", "conditions": admitted(sp, true, "Admitted", "the pod is created")}})),
        )
        .await
        .map_err(api_err(format!("ShadowPod {ns}/{name} status")))?;
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REFUSAL_ANNOTATION: null}}})),
        )
        .await
        .map_err(api_err(format!("ShadowPod {ns}/{name} annotation")))?;
        Ok(())
    }

    /// One reconcile of one `ShadowPod`.
    #[tracing::instrument(skip_all, fields(shadow = %sp.name_any(), ns = sp.namespace().unwrap_or_default()))]
    pub async fn reconcile(sp: Arc<ShadowPod>, ctx: Arc<Self>) -> Result<Action, Error> {
        if sp.meta().deletion_timestamp.is_some() {
            ctx.release(&sp);
            return Ok(Action::await_change());
        }
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let existing = ctx.pods.get(&ObjectRef::new(&name).within(&ns));
        let uid = sp.uid().unwrap_or_default();
        match existing {
            Some(p) if p.owner_references().iter().any(|o| o.uid == uid) => {
                // the pod is in the store, which counts it from now on: its reservation ends here (else a
                // pod deleted before any later admission looked would hold its share of the grant forever)
                ctx.release(&sp);
                if needs_replacement(&p) && p.metadata.deletion_timestamp.is_none() {
                    info!(pod = name, "provider pod failed; replacing it");
                    pods.delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                        .map_err(api_err(format!("deleting failed pod {ns}/{name}")))?;
                    let recreations = sp.status.as_ref().map_or(0, |s| s.recreations) + 1;
                    let api: Api<ShadowPod> = Api::namespaced(ctx.client.clone(), &ns);
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"recreations": recreations, "phase": "Replacing"}})),
                    )
                    .await
                    .map_err(api_err(format!("ShadowPod {ns}/{name} status")))?;
                }
                Ok(Action::await_change())
            }
            Some(_) => {
                warn!(
                    pod = name,
                    "a pod of this name exists and is not the ShadowPod's; leaving it"
                );
                Ok(Action::requeue(Duration::from_secs(30)))
            }
            None => {
                if !ctx.namespaces_and_tenants_synced() {
                    return Err(Error::NotYet(
                        "tenant namespaces and grants not synced yet".into(),
                    ));
                }
                if ctx.terminating(&ns) {
                    // the namespace's deletion takes the ShadowPod too; its pod would only be refused: 30,000
                    // ShadowPods retrying that every 2 s kept the apiserver from deleting the namespace
                    return Ok(Action::await_change());
                }
                let pod = match ctx.admit(&sp, &uid) {
                    Ok(p) => p,
                    Err(r) => {
                        ctx.refuse(&sp, &r).await?;
                        // a grant frees up as pods end, a cordon is lifted: look again; a policy violation
                        // changes only with the ShadowPod (or the Tenant's policy)
                        return Ok(Action::requeue(Duration::from_secs(match r.reason {
                            "PolicyViolation" => 300,
                            _ => 10,
                        })));
                    }
                };
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        ctx.clear_refusal(&sp).await?;
                        Ok(Action::await_change())
                    }
                    // the store lags behind a pod created a moment ago: the next event settles it
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::from_secs(2))),
                    Err(e) => {
                        ctx.release(&sp);
                        Err(api_err(format!("creating pod {ns}/{name}"))(e))
                    }
                }
            }
        }
    }

    /// Whether tenant namespace `ns` is being deleted.
    fn terminating(&self, ns: &str) -> bool {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    fn namespaces_and_tenants_synced(&self) -> bool {
        let ready = |f: futures::future::BoxFuture<'_, _>| futures::FutureExt::now_or_never(f).is_some();
        ready(Box::pin(self.namespaces.wait_until_ready()))
            && ready(Box::pin(self.tenants.wait_until_ready()))
            && ready(Box::pin(self.slices.wait_until_ready()))
            && ready(Box::pin(self.pods.wait_until_ready()))
    }

    /// After a failed reconcile: retry soon, a template that will not become valid only slowly.
    pub fn error_policy(_sp: Arc<ShadowPod>, e: &Error, _ctx: Arc<Self>) -> Action {
        warn!("{e}");
        match e {
            Error::Template(..) => Action::requeue(Duration::from_secs(300)),
            // refused by this cluster's admission (a namespace terminating before the store shows it, a
            // ResourceQuota): not for a retry in 2 s
            Error::Api {
                source: kube::Error::Api(e),
                ..
            } if e.code == 403 => Action::requeue(REFUSED_AGAIN),
            Error::Api { .. } | Error::NotYet(_) => Action::requeue(Duration::from_secs(2)),
        }
    }
}

/// When a pod this cluster's admission refused (403) is tried again.
pub const REFUSED_AGAIN: Duration = Duration::from_secs(30);

/// The ShadowPod's conditions with `Admitted` set (its transition time kept while its status stays).
fn admitted(sp: &ShadowPod, ok: bool, reason: &str, message: &str) -> Vec<serde_json::Value> {
    use ferry_plumbing::conditions;
    let old = sp
        .status
        .as_ref()
        .map(|s| conditions::values(&s.conditions))
        .unwrap_or_default();
    let now = conditions::condition("Admitted", ok, reason, message, &conditions::now());
    conditions::merge(&old, vec![now])
}

/// Runs the `ShadowPod` controller and the availability controller until one stops. They start once this
/// cluster has a `Tenant` (it is a provider; seen by watch), so a consumer-only agent keeps no cache of
/// every pod.
pub async fn run(client: Client) {
    use ferry_plumbing::triggers::{first_object, store, store_with_changes};
    first_object(Api::<Tenant>::all(client.clone()), watcher::Config::default()).await;
    info!("this cluster is a provider: ShadowPod controller and slice availability starting");
    let (pods, writer) = reflector::store::<ProviderPod>();
    let (pod_tx, pod_changes) = futures::channel::mpsc::unbounded::<()>();
    // each pod event updates the tenants' ledger once (admission reads the ledger, never every pod)
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let feed = ledger.clone();
    let pod_events = reflector(
        writer,
        // each pod kept slim: its spec's requests summed as it is parsed, metadata only what is read
        watcher(
            Api::<ProviderPod>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(|p| slim_meta(&mut p.metadata))
        .inspect(move |ev| {
            if let (Ok(ev), Ok(mut l)) = (ev, feed.lock()) {
                l.on_event(ev);
            }
        }),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(move |p| {
        // every pod counts for availability; only pods a ShadowPod owns trigger it
        let _ = pod_tx.unbounded_send(());
        async move {
            match p {
                Ok(p) if p.labels().contains_key(ORIGIN_CLUSTER_LABEL) => Some(Ok(p)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }
    });
    let (namespaces, ns_watch) = store(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(TENANT_LABEL),
    );
    let (tenant_store, tenant_changes) =
        store_with_changes(Api::<Tenant>::all(client.clone()), watcher::Config::default());
    let (slices, slice_watch) = store(
        Api::<ResourceSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    let (nodes, node_changes) =
        store_with_changes(Api::<Node>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(ShadowPodReconciler::new(
        client.clone(),
        pods.clone(),
        namespaces,
        tenant_store.clone(),
        slices,
        ledger,
    ));
    // the ShadowPods, without their managed fields (a tree of every field of the template, in two entries
    // once the provider has written a status: kept for nobody); each template is kept as its JSON text
    // (`PackedJson`), parsed only when its pod is built
    let (shadows, shadow_writer) = reflector::store::<ShadowPod>();
    let shadow_events = reflector(
        shadow_writer,
        watcher(Api::<ShadowPod>::all(client.clone()), watcher::Config::default())
            .modify(|s| s.metadata.managed_fields = None),
    )
    .default_backoff()
    .applied_objects();
    let controller = Controller::for_stream(shadow_events, shadows)
        .owns_stream(pod_events)
        .with_config(kube::runtime::controller::Config::default().concurrency(32))
        .run(
            |sp, ctx| {
                ferry_plumbing::metrics::reconciled("shadowpod", ShadowPodReconciler::reconcile(sp, ctx))
            },
            ShadowPodReconciler::error_policy,
            ctx,
        )
        .for_each(|_| async {});
    let availability = Arc::new(Availability {
        client: client.clone(),
        pods,
        nodes,
        tenants: tenant_store,
    });
    let available = Controller::new(
        Api::<ResourceSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    // a cordon or uncordon reaches the slices at once
    .reconcile_all_on(futures::stream::select(
        futures::stream::select(pod_changes, node_changes),
        tenant_changes,
    ))
    // a burst of pod changes becomes one pass per slice
    .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
    .run(
        |s, ctx| ferry_plumbing::metrics::reconciled("slice-availability", Availability::reconcile(s, ctx)),
        |_, e, _| {
            warn!("slice availability: {e}");
            Action::requeue(Duration::from_secs(2))
        },
        availability,
    )
    .for_each(|_| async {});
    tokio::select! {
        _ = controller => warn!("the ShadowPod controller stopped"),
        _ = available => warn!("the availability controller stopped"),
        _ = ns_watch => warn!("the tenant namespace watch stopped"),
        _ = slice_watch => warn!("the ResourceSlice watch stopped"),
    }
}

fn running_on_a_node(p: &ProviderPod) -> bool {
    p.spec.node_name.is_some() && !p.ended()
}

fn schedulable(n: &Node) -> bool {
    let virtual_node =
        n.labels().get(crate::VIRTUAL_NODE_LABEL.0).map(String::as_str) == Some(crate::VIRTUAL_NODE_LABEL.1);
    !virtual_node
        && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
        && crate::node::is_ready(n)
}

/// Resources tenant `consumer` may still use: its grant less what its pods hold, and never more than the
/// provider's schedulable nodes have free (pure).
pub fn tenant_available(
    granted: Amounts,
    pods: &[Arc<ProviderPod>],
    nodes: &[Arc<Node>],
    consumer: &str,
) -> ResourceAmounts {
    let capacity = nodes
        .iter()
        .filter(|n| schedulable(n))
        .fold(Amounts::default(), |a, n| a.plus(Amounts::of_node(n)));
    let used = pods
        .iter()
        .filter(|p| running_on_a_node(p))
        .fold(Amounts::default(), |a, p| a.plus(p.spec.requests));
    let tenant_used = pods
        .iter()
        .filter(|p| running_on_a_node(p) && p.tenant() == Some(consumer))
        .fold(Amounts::default(), |a, p| a.plus(p.spec.requests));
    let (cpu, memory, pods_q) = available(granted, tenant_used, capacity.minus(used)).to_quantities();
    ResourceAmounts {
        cpu: Some(cpu),
        memory: Some(memory),
        pods: Some(pods_q),
        extended: Default::default(),
    }
}

/// The availability controller: keeps each tenant's `ResourceSlice` `status.available` current, on every
/// pod or node change (debounced), written only when it changes.
pub struct Availability {
    client: Client,
    pods: Store<ProviderPod>,
    nodes: Store<Node>,
    tenants: Store<Tenant>,
}

impl Availability {
    /// One reconcile of one tenant's granted `ResourceSlice`.
    pub async fn reconcile(slice: Arc<ResourceSlice>, ctx: Arc<Self>) -> Result<Action, Error> {
        let ns = slice.namespace().unwrap_or_default();
        if slice.name_any() != crate::GRANTED_SLICE {
            return Ok(Action::await_change());
        }
        let ready = |f: futures::future::BoxFuture<'_, _>| futures::FutureExt::now_or_never(f).is_some();
        if !(ready(Box::pin(ctx.pods.wait_until_ready()))
            && ready(Box::pin(ctx.nodes.wait_until_ready()))
            && ready(Box::pin(ctx.tenants.wait_until_ready())))
        {
            return Err(Error::NotYet("pods, nodes and tenants not synced yet".into()));
        }
        let Some(tenant) = ctx
            .tenants
            .state()
            .into_iter()
            .find(|t| t.spec.tenant_namespace == ns)
        else {
            return Ok(Action::await_change());
        };
        let granted = slice
            .status
            .as_ref()
            .and_then(|s| s.granted.as_ref())
            .map(Amounts::from_resource_amounts)
            .unwrap_or_default();
        let cordoned = tenant.spec.cordoned;
        let avail = match cordoned {
            // nothing more for a cordoned tenant: its virtual node's allocatable is zero
            true => tenant_available(Amounts::default(), &[], &[], &tenant.spec.cluster_id),
            false => tenant_available(
                granted,
                &ctx.pods.state(),
                &ctx.nodes.state(),
                &tenant.spec.cluster_id,
            ),
        };
        let st = slice.status.as_ref();
        if st.and_then(|s| s.available.as_ref()) != Some(&avail) || st.map(|s| s.cordoned) != Some(cordoned) {
            Api::<ResourceSlice>::namespaced(ctx.client.clone(), &ns)
                .patch_status(
                    crate::GRANTED_SLICE,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"available": avail, "cordoned": cordoned}})),
                )
                .await
                .map_err(api_err(format!(
                    "ResourceSlice {ns}/{} status",
                    crate::GRANTED_SLICE
                )))?;
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_pod(name: &str, tenant: Option<&str>, cpu: &str, phase: &str) -> ProviderPod {
        let mut labels = serde_json::Map::new();
        if let Some(t) = tenant {
            labels.insert(ORIGIN_CLUSTER_LABEL.into(), t.into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn the_ledger_follows_the_watch_one_pod_at_a_time() {
        let mut l = Ledger::default();
        l.on_event(&watcher::Event::Apply(tenant_pod(
            "a",
            Some("c1"),
            "500m",
            "Running",
        )));
        l.on_event(&watcher::Event::Apply(tenant_pod(
            "b",
            Some("c1"),
            "250m",
            "Pending",
        )));
        l.on_event(&watcher::Event::Apply(tenant_pod(
            "x",
            Some("c2"),
            "1",
            "Running",
        )));
        l.on_event(&watcher::Event::Apply(tenant_pod("local", None, "8", "Running")));
        assert_eq!(l.used("c1").cpu, 750);
        assert_eq!((l.used("c1").pods, l.used("c2").cpu), (2000, 1000));
        assert!(
            l.counts("ns/a") && !l.counts("ns/local"),
            "pods of no tenant are not counted"
        );
        // a change replaces what the pod held; an ended pod holds nothing but is still seen
        l.on_event(&watcher::Event::Apply(tenant_pod(
            "a",
            Some("c1"),
            "100m",
            "Running",
        )));
        assert_eq!(l.used("c1").cpu, 350);
        l.on_event(&watcher::Event::Apply(tenant_pod(
            "b",
            Some("c1"),
            "250m",
            "Succeeded",
        )));
        assert_eq!((l.used("c1").cpu, l.used("c1").pods), (100, 1000));
        assert!(l.counts("ns/b"));
        l.on_event(&watcher::Event::Delete(tenant_pod(
            "a",
            Some("c1"),
            "100m",
            "Running",
        )));
        assert_eq!(l.used("c1"), Amounts::default());
        // a relist: the old figures answer until it is done, then only what was listed counts
        l.on_event(&watcher::Event::Init);
        l.on_event(&watcher::Event::InitApply(tenant_pod(
            "y",
            Some("c2"),
            "2",
            "Running",
        )));
        assert_eq!(l.used("c2").cpu, 1000, "mid-relist: still the old ledger");
        l.on_event(&watcher::Event::InitDone);
        assert_eq!(l.used("c2").cpu, 2000);
        assert!(
            !l.counts("ns/x") && !l.counts("ns/b"),
            "pods gone while the watch was down are forgotten"
        );
        // built from a store's contents, the same sums
        let pods = vec![
            Arc::new(tenant_pod("p", Some("c1"), "300m", "Running")),
            Arc::new(tenant_pod("q", Some("c1"), "200m", "Running")),
        ];
        assert_eq!(Ledger::of(&pods).used("c1").cpu, 500);
    }

    fn pod(v: serde_json::Value) -> ProviderPod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_grant_is_a_hard_limit_in_every_dimension() {
        let g = Amounts {
            cpu: 2000,
            memory: 1 << 40,
            pods: 3000,
        };
        let one = Amounts {
            cpu: 1000,
            memory: 0,
            pods: 1000,
        };
        assert!(fits(g, Amounts::default(), one).is_ok());
        assert!(fits(g, one, one).is_ok());
        let e = fits(g, one.plus(one), one).unwrap_err();
        assert!(e.contains("cpu 3 of 2 granted") && e.contains("fix:"), "{e}");
        // pods without requests are still counted as pods
        let tiny = Amounts {
            pods: 1000,
            ..Default::default()
        };
        let three = tiny.plus(tiny).plus(tiny);
        assert!(fits(g, three, tiny).unwrap_err().contains("pods 4 of 3"));
        // no grant at all: nothing fits
        assert!(fits(Amounts::default(), Amounts::default(), tiny).is_err());
    }

    #[test]
    fn ended_pods_hold_nothing() {
        let p = |phase: &str| pod(json!({"spec": {"containers": []}, "status": {"phase": phase}}));
        assert!(!p("Pending").ended() && !p("Running").ended());
        assert!(p("Succeeded").ended() && p("Failed").ended());
    }

    #[test]
    fn only_failed_pods_that_should_run_forever_are_replaced() {
        let failed =
            pod(json!({"spec": {"containers": []}, "status": {"phase": "Failed", "reason": "Evicted"}}));
        assert!(needs_replacement(&failed));
        let job =
            pod(json!({"spec": {"containers": [], "restartPolicy": "Never"}, "status": {"phase": "Failed"}}));
        assert!(!needs_replacement(&job));
        let running = pod(json!({"spec": {"containers": []}, "status": {"phase": "Running"}}));
        assert!(!needs_replacement(&running));
    }

    #[test]
    fn virtual_and_not_ready_nodes_add_no_capacity() {
        let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let n = |labels: serde_json::Value, status: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}, "status": status}))
                .unwrap()
        };
        assert!(schedulable(&n(json!({}), ready.clone())));
        assert!(!schedulable(&n(json!({"type": "virtual-node"}), ready)));
        assert!(!schedulable(&n(
            json!({}),
            json!({"conditions": [{"type": "Ready", "status": "False"}]})
        )));
    }

    #[test]
    fn availability_is_the_grant_capped_by_what_the_tenant_holds_plus_what_nodes_have_free() {
        let node = |name: &str, labels: serde_json::Value, cpu: &str| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]}}))
                .unwrap(),
            )
        };
        let on_node = |owner: Option<&str>, cpu: &str, node: Option<&str>| -> Arc<ProviderPod> {
            let labels = owner.map_or(json!({}), |o| json!({ORIGIN_CLUSTER_LABEL: o}));
            Arc::new(pod(json!({"metadata": {"labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
                "status": {"phase": "Running"}})))
        };
        let nodes = [
            node("n1", json!({}), "4"),
            node("ferry-x", json!({"type": "virtual-node"}), "100"),
        ];
        let pods = [
            on_node(Some("c1"), "1", Some("n1")),
            on_node(None, "2", Some("n1")),
            on_node(Some("c1"), "1", None), // pending: holds no node's room yet
        ];
        let grant = |cpu: i128| Amounts {
            cpu,
            memory: 1 << 50,
            pods: 1_000_000,
        };
        // free on n1: 4 - 3 = 1; the tenant holds 1: it may have 2 of a grant of 3
        assert_eq!(
            tenant_available(grant(3000), &pods, &nodes, "c1").cpu.unwrap().0,
            "2000m"
        );
        // a smaller grant is the cap
        assert_eq!(
            tenant_available(grant(1500), &pods, &nodes, "c1").cpu.unwrap().0,
            "1500m"
        );
        // another tenant holds nothing: only the free room
        assert_eq!(
            tenant_available(grant(3000), &pods, &nodes, "c2").cpu.unwrap().0,
            "1000m"
        );
    }

    /// Controller tests: the reconciler against a mocked apiserver (no cluster, no root).
    mod controller {
        use super::*;
        use ferry_plumbing::fixtures::{Expect, MockApi, namespace, object};
        use kube::runtime::reflector::store::Writer;

        const NS: &str = "ferry-tenant-c1-app";

        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: kube::Resource<DynamicType = ()> + Clone + 'static,
        {
            let mut w: Writer<K> = Writer::default();
            w.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                w.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            w.apply_watcher_event(&watcher::Event::InitDone);
            w.as_reader()
        }

        /// A provider with tenant `c1` (namespace [`NS`], grant of `cpu` CPUs) and the pods `pods`.
        fn provider(
            client: Client,
            cpu: &str,
            tenant_ns: bool,
            pods: Vec<ProviderPod>,
        ) -> Arc<ShadowPodReconciler> {
            let nss = if tenant_ns {
                vec![namespace(NS, &[(TENANT_LABEL, "c1")])]
            } else {
                vec![]
            };
            let tenant: Tenant = object(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": "c1"},
                "spec": {"clusterID": "c1", "publicKeyFingerprint": "f", "tenantNamespace": NS},
            }));
            let slice: ResourceSlice = object(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "ResourceSlice",
                "metadata": {"name": crate::GRANTED_SLICE, "namespace": NS},
                "spec": {"providerClusterID": "p1", "consumerClusterID": "c1", "resources": {}},
                "status": {"granted": {"cpu": cpu, "memory": "64Gi", "pods": "100"}},
            }));
            let pods = filled(pods);
            // the ledger the pod watch would have built from the same pods
            let ledger = Arc::new(std::sync::Mutex::new(Ledger::of(&pods.state())));
            Arc::new(ShadowPodReconciler::new(
                client,
                pods,
                filled(nss),
                filled(vec![tenant]),
                filled(vec![slice]),
                ledger,
            ))
        }

        fn shadow(name: &str, cpu: &str) -> Arc<ShadowPod> {
            Arc::new(object(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"consumerClusterID": "c1", "consumerPodUID": format!("local-{name}"),
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": cpu}}}]}}},
            })))
        }

        fn shadow_json(name: &str) -> serde_json::Value {
            serde_json::to_value(shadow(name, "1").as_ref()).unwrap()
        }

        fn pods_path() -> String {
            format!("/api/v1/namespaces/{NS}/pods")
        }

        fn shadow_path(name: &str) -> String {
            format!("/apis/ferry.dev/v1alpha1/namespaces/{NS}/shadowpods/{name}")
        }

        #[tokio::test]
        async fn a_shadowpod_of_a_terminating_namespace_makes_no_request_and_waits() {
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "2", true, vec![]);
            let mut ns = namespace(NS, &[(TENANT_LABEL, "c1")]);
            ns.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
            let ctx = Arc::new(ShadowPodReconciler::new(
                ctx.client.clone(),
                ctx.pods.clone(),
                filled(vec![ns]),
                ctx.tenants.clone(),
                ctx.slices.clone(),
                ctx.ledger.clone(),
            ));
            let sent = mock.run(vec![]);
            let action = ShadowPodReconciler::reconcile(shadow("web-1", "500m"), ctx.clone())
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            drop(ctx);
            assert!(sent.await.unwrap().is_empty(), "no create, no refusal written");
        }

        #[tokio::test]
        async fn a_pod_refused_by_admission_is_tried_again_in_thirty_seconds_not_two() {
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "2", true, vec![]);
            let sent = mock.run(vec![Expect::status("POST", pods_path(), 403, "Forbidden")]);
            let sp = shadow("web-1", "500m");
            let err = ShadowPodReconciler::reconcile(sp.clone(), ctx.clone())
                .await
                .unwrap_err();
            let action = ShadowPodReconciler::error_policy(sp, &err, ctx.clone());
            assert_eq!(action, Action::requeue(REFUSED_AGAIN));
            assert_eq!(sent.await.unwrap().len(), 1);
            // its reservation ended: the whole grant is free again for the next
            assert_eq!(ctx.tenant_usage("c1"), Amounts::default());
        }

        #[tokio::test]
        async fn an_admitted_shadowpod_becomes_one_pod_the_provider_built_and_owns() {
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "2", true, vec![]);
            let sent = mock.run(vec![Expect::echo("POST", pods_path())]);
            let sp = shadow("web-1", "500m");
            let action = ShadowPodReconciler::reconcile(sp.clone(), ctx).await.unwrap();
            assert_eq!(action, Action::await_change());
            let sent = sent.await.unwrap();
            let pod = &sent[0].body;
            assert_eq!(pod["metadata"]["name"], "web-1");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-web-1");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ShadowPod");
            assert_eq!(pod["metadata"]["labels"][ORIGIN_CLUSTER_LABEL], "c1");
            assert_eq!(
                pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
                "500m"
            );
            assert!(
                pod["spec"]["nodeName"].is_null(),
                "the provider's scheduler places it"
            );
        }

        #[tokio::test]
        async fn a_shadowpod_over_the_grant_is_refused_with_a_condition_an_annotation_and_an_event() {
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "1", true, vec![]);
            let sent = mock.run(vec![
                Expect::ok("PATCH", shadow_path("big"), shadow_json("big")),
                Expect::ok(
                    "PATCH",
                    format!("{}/status", shadow_path("big")),
                    shadow_json("big"),
                ),
                Expect::ok(
                    "POST",
                    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
                    json!({}),
                ),
            ]);
            let action = ShadowPodReconciler::reconcile(shadow("big", "2"), ctx)
                .await
                .unwrap();
            assert_eq!(
                action,
                Action::requeue(Duration::from_secs(10)),
                "a grant frees up: look again"
            );
            let sent = sent.await.unwrap();
            let cond = &sent[1].body["status"]["conditions"][0];
            assert_eq!(
                (cond["type"].as_str(), cond["status"].as_str()),
                (Some("Admitted"), Some("False"))
            );
            assert_eq!(cond["reason"], "OverGrant");
            assert!(cond["message"].as_str().unwrap().contains("fix:"));
            assert!(
                sent[0].body["metadata"]["annotations"][REFUSAL_ANNOTATION]
                    .as_str()
                    .unwrap()
                    .starts_with("OverGrant: ")
            );
            assert_eq!(sent[2].body["reason"], "OverGrant");
            assert!(
                sent.iter().all(|r| !r.uri.contains("/pods")),
                "no pod was created"
            );
        }

        #[tokio::test]
        async fn a_reservation_ends_once_the_pod_is_in_the_store() {
            // a burst's last pods are created after the last admission looked at the store: their
            // reservations must end when their pods are seen, not only at a later admission (the pods may be
            // gone by then, and the reservation would hold the grant forever)
            let (client, mock) = MockApi::new();
            let pod: ProviderPod = object(json!({
                "metadata": {"name": "a", "namespace": NS,
                    "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod", "name": "a", "uid": "u-a"}]},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Running"}
            }));
            let ctx = provider(client, "1", true, vec![pod]);
            ctx.in_flight
                .lock()
                .unwrap()
                .entry("c1".into())
                .or_default()
                .insert(format!("{NS}/a"), Amounts::default());
            let sent = mock.run(vec![]);
            let mut sp = shadow("a", "600m").as_ref().clone();
            sp.metadata.uid = Some("u-a".into());
            let action = ShadowPodReconciler::reconcile(Arc::new(sp), ctx.clone())
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            assert!(sent.await.unwrap().is_empty());
            assert!(
                ctx.in_flight
                    .lock()
                    .unwrap()
                    .get("c1")
                    .is_none_or(|f| f.is_empty()),
                "the reservation outlived the pod's arrival in the store"
            );
        }

        #[tokio::test]
        async fn concurrent_shadowpods_cannot_together_exceed_the_grant() {
            // two ShadowPods of 600m against a grant of 1 CPU, before the pod store has seen the first pod
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "1", true, vec![]);
            let sent = mock.run(vec![
                Expect::echo("POST", pods_path()),
                Expect::ok("PATCH", shadow_path("b"), shadow_json("b")),
                Expect::ok("PATCH", format!("{}/status", shadow_path("b")), shadow_json("b")),
                Expect::ok(
                    "POST",
                    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
                    json!({}),
                ),
            ]);
            ShadowPodReconciler::reconcile(shadow("a", "600m"), ctx.clone())
                .await
                .unwrap();
            ShadowPodReconciler::reconcile(shadow("b", "600m"), ctx)
                .await
                .unwrap();
            let sent = sent.await.unwrap();
            assert_eq!(sent[0].body["metadata"]["name"], "a");
            assert_eq!(sent[2].body["status"]["conditions"][0]["reason"], "OverGrant");
        }

        #[tokio::test]
        async fn a_shadowpod_outside_a_tenant_namespace_is_refused_and_nothing_is_created() {
            let (client, mock) = MockApi::new();
            let ctx = provider(client, "8", false, vec![]);
            let sent = mock.run(vec![
                Expect::ok("PATCH", shadow_path("x"), shadow_json("x")),
                Expect::ok("PATCH", format!("{}/status", shadow_path("x")), shadow_json("x")),
                Expect::ok(
                    "POST",
                    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
                    json!({}),
                ),
            ]);
            ShadowPodReconciler::reconcile(shadow("x", "1"), ctx)
                .await
                .unwrap();
            let sent = sent.await.unwrap();
            assert_eq!(
                sent[1].body["status"]["conditions"][0]["reason"],
                "NotATenantNamespace"
            );
        }

        #[tokio::test]
        async fn an_existing_pod_of_the_shadowpod_is_adopted_without_a_call() {
            let (client, mock) = MockApi::new();
            let mine: ProviderPod = object(json!({
                "metadata": {"name": "web-1", "namespace": NS, "labels": {ORIGIN_CLUSTER_LABEL: "c1"},
                    "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod",
                        "name": "web-1", "uid": "uid-web-1", "controller": true}]},
                "spec": {"containers": []}, "status": {"phase": "Running"},
            }));
            let ctx = provider(client, "2", true, vec![mine]);
            let sent = mock.run(vec![]);
            let action = ShadowPodReconciler::reconcile(shadow("web-1", "500m"), ctx)
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            assert!(
                sent.await.unwrap().is_empty(),
                "a restart adopts, it does not create twice"
            );
        }
    }
}
