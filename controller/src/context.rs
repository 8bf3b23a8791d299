//! What every reconciler shares: the client, settings, metrics, one event recorder, the etcd
//! connections and the reflector stores that answer cross-object lookups without a LIST.

use crate::Error;
use crate::api::{DataStore, TenantControlPlane};
use crate::apply::MANAGED_BY;
use crate::etcd::EtcdPool;
use crate::metrics::Metrics;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::predicates;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Lookup, Store};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// The repository of the worker images Orrery's own build makes.
pub const DEFAULT_WORKER_IMAGE: &str = "orrery.dev/worker";
/// Repository of the CSI node plugin's image; the tag is this release's version.
pub const DEFAULT_CSI_NODE_IMAGE: &str = "orrery.dev/csi-node";

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
    /// Where the operator serves the cluster-autoscaler API; `None` when it does not.
    pub autoscaler: Option<crate::addons::autoscaler::ApiEndpoint>,
    /// The image of the tenants' CSI node plugin.
    pub csi_node_image: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image_registry: "registry.k8s.io".into(),
            resync: Duration::from_secs(300),
            tenant_access: true,
            worker_image: DEFAULT_WORKER_IMAGE.into(),
            autoscaler: None,
            csi_node_image: format!(
                "{DEFAULT_CSI_NODE_IMAGE}:{}",
                crate::addons::csi::VENDOR_VERSION
            ),
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
    /// What the add-ons running in this process report, for the tenants' status.
    pub addons: Arc<crate::addons::health::Health>,
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
            addons: Arc::default(),
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
/// that controller takes the store's feed once at start.
pub struct Stores {
    pub tenants: Store<TenantControlPlane>,
    pub datastores: Store<DataStore>,
    tenants_listed: watch::Receiver<bool>,
    datastores_listed: watch::Receiver<bool>,
    tenants_feed: Mutex<Option<Feed<TenantControlPlane>>>,
    datastores_feed: Mutex<Option<Feed<DataStore>>>,
}

/// What fills a store: its writer, and the signal that it holds a first full list.
///
/// The signal is ours rather than the store's own `wait_until_ready`, which wakes only the
/// waiter that polled it last: the controller that owns the store waits on it too, so a
/// reconcile waiting there as well could wait for ever.
pub struct Feed<K: Lookup + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: Writer<K>,
    listed: watch::Sender<bool>,
}

impl<K> Feed<K>
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    /// A feed, the store it fills, and the signal that the store holds a first full list.
    pub fn new() -> (Self, Store<K>, watch::Receiver<bool>) {
        let writer = Writer::default();
        let reader = writer.as_reader();
        let (listed, listed_rx) = watch::channel(false);
        (Self { writer, listed }, reader, listed_rx)
    }

    /// The store these events fill.
    pub fn reader(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// Fills the store from `events` (a watcher's), passing them on; the first complete list
    /// marks it listed.
    pub fn reflect<S>(self, events: S) -> impl Stream<Item = S::Item> + Send
    where
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
    {
        let listed = self.listed;
        reflector::reflector(self.writer, events).inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                listed.send_replace(true);
            }
        })
    }
}

/// Waits until `listed` says the store holds a first full list.
pub async fn wait_listed(listed: &watch::Receiver<bool>, what: &str) -> Result<(), Error> {
    let mut listed = listed.clone();
    listed
        .wait_for(|done| *done)
        .await
        .map(|_| ())
        .map_err(|_| Error::Pending(format!("the {what} store is no longer fed")))
}

impl Default for Stores {
    fn default() -> Self {
        let (tenants_feed, tenants, tenants_listed) = Feed::new();
        let (datastores_feed, datastores, datastores_listed) = Feed::new();
        Self {
            tenants,
            datastores,
            tenants_listed,
            datastores_listed,
            tenants_feed: Mutex::new(Some(tenants_feed)),
            datastores_feed: Mutex::new(Some(datastores_feed)),
        }
    }
}

fn take<K: Lookup + Clone>(slot: &Mutex<Option<Feed<K>>>, what: &str) -> Feed<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    slot.lock()
        .expect("store feed lock")
        .take()
        .unwrap_or_else(|| panic!("the {what} store is fed by one controller only"))
}

impl Stores {
    /// The feed of the TenantControlPlane store, for the TenantControlPlane controller.
    pub fn take_tenants_feed(&self) -> Feed<TenantControlPlane> {
        take(&self.tenants_feed, "TenantControlPlane")
    }

    /// The feed of the DataStore store, for the DataStore controller.
    pub fn take_datastores_feed(&self) -> Feed<DataStore> {
        take(&self.datastores_feed, "DataStore")
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

    /// Reconciles that start before the first list all go on once it arrives, while the
    /// controller owning the store waits on the store itself too (kube's own wait wakes only its
    /// last waiter, so it must not be shared).
    #[tokio::test]
    async fn every_waiter_goes_on_once_the_store_is_listed() {
        let stores = Arc::new(Stores::default());
        let mut waiters: Vec<_> = (0..4)
            .map(|_| {
                let stores = stores.clone();
                tokio::spawn(async move { stores.datastores_listed().await })
            })
            .collect();
        let feed = stores.take_datastores_feed();
        let own = feed.reader();
        let owner = tokio::spawn(async move {
            own.wait_until_ready()
                .await
                .map_err(|e| Error::Pending(e.to_string()))
        });
        waiters.push(owner);
        // Let every waiter poll (and register its waker) before the list arrives.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let events =
            futures::stream::iter([Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)]);
        let passed: Vec<_> = feed.reflect(events).collect().await;
        assert_eq!(passed.len(), 2, "the events pass on");
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was never woken")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_store_whose_feed_is_gone_is_an_error() {
        let stores = Stores::default();
        drop(stores.take_tenants_feed());
        assert!(matches!(
            stores.tenants_listed().await,
            Err(Error::Pending(_))
        ));
    }
}
