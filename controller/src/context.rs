//! What every reconciler shares: the client, settings, metrics, one event recorder, the etcd
//! connections and the reflector stores that answer cross-object lookups without a LIST.

use crate::Error;
use crate::api::{DataStore, TenantControlPlane};
use crate::apply::MANAGED_BY;
use crate::etcd::EtcdPool;
use crate::metrics::Metrics;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::Resource;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::predicates;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{Lookup, Store};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// The repository of the worker images Orrery's own build makes.
pub const DEFAULT_WORKER_IMAGE: &str = "orrery.dev/worker";

/// Process-wide settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Registry and path prefix of the default control-plane images, e.g. `registry.k8s.io`.
    pub image_registry: String,
    /// How long an unchanged object waits before it is reconciled again (drift check).
    pub resync: Duration,
    /// Whether to reach into tenant clusters (readiness via /readyz, bootstrap, add-ons).
    pub tenant_access: bool,
    /// Repository of the worker containerDisk images; a pool boots `<repository>:<version>`
    /// unless its template names an image.
    pub worker_image: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image_registry: "registry.k8s.io".into(),
            resync: Duration::from_secs(300),
            tenant_access: true,
            worker_image: DEFAULT_WORKER_IMAGE.into(),
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// One recorder for the process, so repeated Events aggregate into series.
    pub recorder: Recorder,
    pub settings: Settings,
    /// etcd connections, one per DataStore, reused across reconciles.
    pub etcd: EtcdPool,
    pub stores: Stores,
}

impl Context {
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        settings: Settings,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            etcd: EtcdPool::default(),
            stores: Stores::default(),
        }
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// Which changes of a controller's own objects wake it: the spec (generation), annotations,
/// finalizers and deletion, but not the status its own reconcile writes. Otherwise a status that
/// differs from one failure to the next (another object named in the error) would wake the
/// reconcile again at once, past the error policy's backoff. Stores still see every change.
pub fn changed_by_user<K: Resource + 'static>() -> impl Predicate<K> {
    let deleting = |obj: &K| obj.meta().deletion_timestamp.as_ref().map(|_| 1);
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .combine(deleting)
}

/// Caches of the objects that reconcilers look up across kinds. Each store is filled by the
/// controller of its kind, which watches that kind anyway (one watch per kind in the process):
/// that controller takes the writer once at start.
pub struct Stores {
    pub tenants: Store<TenantControlPlane>,
    pub datastores: Store<DataStore>,
    tenants_listed: Listed,
    datastores_listed: Listed,
    tenants_writer: Mutex<Option<Writer<TenantControlPlane>>>,
    datastores_writer: Mutex<Option<Writer<DataStore>>>,
}

/// Resolves once a store holds its first full list (false: its writer is gone). Shared, because
/// a store's own `wait_until_ready` wakes only the waiter that polled it last: with several
/// reconciles waiting at start, the others would wait for ever.
type Listed = Shared<BoxFuture<'static, bool>>;

fn listed<K>(store: &Store<K>) -> Listed
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = store.clone();
    async move { store.wait_until_ready().await.is_ok() }
        .boxed()
        .shared()
}

async fn wait_listed(listed: &Listed, what: &str) -> Result<(), Error> {
    if listed.clone().await {
        Ok(())
    } else {
        Err(Error::Pending(format!("the {what} store is no longer fed")))
    }
}

impl Default for Stores {
    fn default() -> Self {
        let tenants = Writer::default();
        let datastores = Writer::default();
        let (tenants_reader, datastores_reader) = (tenants.as_reader(), datastores.as_reader());
        Self {
            tenants_listed: listed(&tenants_reader),
            datastores_listed: listed(&datastores_reader),
            tenants: tenants_reader,
            datastores: datastores_reader,
            tenants_writer: Mutex::new(Some(tenants)),
            datastores_writer: Mutex::new(Some(datastores)),
        }
    }
}

fn take<K: Lookup + Clone>(slot: &Mutex<Option<Writer<K>>>, what: &str) -> Writer<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    slot.lock()
        .expect("store writer lock")
        .take()
        .unwrap_or_else(|| panic!("the {what} store is fed by one controller only"))
}

impl Stores {
    /// The writer of the TenantControlPlane store, for the TenantControlPlane controller.
    pub fn take_tenants_writer(&self) -> Writer<TenantControlPlane> {
        take(&self.tenants_writer, "TenantControlPlane")
    }

    /// The writer of the DataStore store, for the DataStore controller.
    pub fn take_datastores_writer(&self) -> Writer<DataStore> {
        take(&self.datastores_writer, "DataStore")
    }

    /// Waits until the TenantControlPlane store holds every tenant: before that, a missing tenant
    /// means nothing (a DataStore would look unused, a pool's tenant absent).
    pub async fn tenants_listed(&self) -> Result<(), Error> {
        wait_listed(&self.tenants_listed, "TenantControlPlane").await
    }

    /// Waits until the DataStore store holds every DataStore.
    pub async fn datastores_listed(&self) -> Result<(), Error> {
        wait_listed(&self.datastores_listed, "DataStore").await
    }
}

/// Changes of Orrery's children of kind `K` (labelled managed-by Orrery), watched by metadata
/// only: a change wakes their owner, and no Secret data is held or even sent. A kind the cluster
/// lacks (KubeVirt's, say) is retried with backoff rather than in a tight loop.
pub fn owned<K>(
    client: &kube::Client,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let children = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), children)
        .default_backoff()
        .touched_objects()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconciles that start before the first list all go on once it arrives, not only the last
    /// one to wait (which is all a store's own `wait_until_ready` wakes).
    #[tokio::test]
    async fn every_waiter_goes_on_once_the_store_is_listed() {
        let stores = Arc::new(Stores::default());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let stores = stores.clone();
                tokio::spawn(async move { stores.datastores_listed().await })
            })
            .collect();
        // Let every waiter poll (and register its waker) before the list arrives.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let mut writer = stores.take_datastores_writer();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was never woken")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_store_whose_writer_is_gone_is_an_error() {
        let stores = Stores::default();
        drop(stores.take_tenants_writer());
        assert!(matches!(
            stores.tenants_listed().await,
            Err(Error::Pending(_))
        ));
    }
}
