//! Reflector stores that double as triggers: the store answers "what is there now", the stream of unit
//! events says "something changed" and is what a `Controller::reconcile_all_on` (or a select) listens to.
//! Nothing here polls: every change arrives by watch, and a restart relists, so what changed while the
//! agent was down is seen on start.

use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};

/// A store of `K` and the future that keeps it (poll it for as long as the store is used).
pub fn store<K>(api: Api<K>, cfg: watcher::Config) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (store, run) = store_with_changes(api, cfg);
    (store, run.for_each(|_| async {}))
}

/// A store of `K` and a stream with one `()` per change (including the initial list once it is
/// complete); polling the stream keeps the store.
pub fn store_with_changes<K>(api: Api<K>, cfg: watcher::Config) -> (Store<K>, impl Stream<Item = ()> + Send)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let changes = reflector(
        writer,
        watcher(api, cfg).modify(|o: &mut K| {
            o.meta_mut().managed_fields = None;
        }),
    )
    .default_backoff()
    .filter_map(|ev| std::future::ready(change_of(ev)));
    (store, changes)
}

/// A watch event as a change: a page of the initial list is not a change of its own, the list's end is.
fn change_of<K>(ev: Result<watcher::Event<K>, watcher::Error>) -> Option<()> {
    match ev {
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Ok(_) => Some(()),
        Err(e) => {
            tracing::debug!("watch: {e}");
            None
        }
    }
}

/// [`store_with_changes`] for an API whose version is found at run time (e.g. EndpointSlice v1 or v1beta1).
pub fn dynamic_store_with_changes(
    client: kube::Client,
    ar: &kube::discovery::ApiResource,
    cfg: watcher::Config,
) -> (
    Store<kube::core::DynamicObject>,
    impl Stream<Item = ()> + Send + use<>,
) {
    let writer = reflector::store::Writer::<kube::core::DynamicObject>::new(ar.clone());
    let store = writer.as_reader();
    let api = Api::<kube::core::DynamicObject>::all_with(client, ar);
    let changes = reflector(writer, watcher(api, cfg))
        .default_backoff()
        .filter_map(|ev| std::future::ready(change_of(ev)));
    (store, changes)
}

/// Resolves once an object of `K` exists (by watch, not by polling): e.g. "this cluster has a tenant".
pub async fn first_object<K>(api: Api<K>, cfg: watcher::Config)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let s = watcher(api, cfg).default_backoff();
    futures::pin_mut!(s);
    while let Some(ev) = s.next().await {
        if matches!(ev, Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_))) {
            return;
        }
    }
}
