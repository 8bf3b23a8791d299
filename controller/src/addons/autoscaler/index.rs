//! What the API reads, kept by watches rather than a LIST per call: every NodePool, and the
//! metadata (name, labels, annotations, deletion) of Orrery's VirtualMachines. An autoscaler
//! calls every ten seconds per tenant, so reads must not reach the apiserver.

use crate::api::NodePool;
use crate::apply::MANAGED_BY;
use crate::context::Feed;
use crate::nodepool::kubevirt::VirtualMachine;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The metadata of a VM, as the index holds it.
pub type VmMeta = PartialObjectMeta<VirtualMachine>;

/// The stores and whether each holds a first full list.
pub struct Index {
    pools: Store<NodePool>,
    vms: Store<VmMeta>,
    pools_listed: watch::Receiver<bool>,
    vms_listed: watch::Receiver<bool>,
}

/// What fills an [`Index`]: one feed per store.
pub struct Feeds {
    pub pools: Feed<NodePool>,
    pub vms: Feed<VmMeta>,
}

impl Index {
    /// An empty index and the feeds that fill it.
    pub fn new() -> (Self, Feeds) {
        let (pools_feed, pools, pools_listed) = Feed::new();
        let (vms_feed, vms, vms_listed) = Feed::new();
        let index = Self {
            pools,
            vms,
            pools_listed,
            vms_listed,
        };
        let feeds = Feeds {
            pools: pools_feed,
            vms: vms_feed,
        };
        (index, feeds)
    }

    /// An index kept by watches until `shutdown`. Without KubeVirt the VM watch retries with
    /// backoff, and the calls that need VMs say they are unavailable.
    pub fn watch(client: &kube::Client, shutdown: CancellationToken) -> Self {
        let (index, feeds) = Self::new();
        let pools = feeds.pools.reflect(
            watcher(Api::<NodePool>::all(client.clone()), Default::default()).default_backoff(),
        );
        let ours = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let vms = feeds
            .vms
            .reflect(watcher(Api::<VmMeta>::all(client.clone()), ours).default_backoff());
        tokio::spawn(async move {
            let both =
                futures::future::join(pools.for_each(|_| async {}), vms.for_each(|_| async {}));
            tokio::select! {
                _ = both => {}
                () = shutdown.cancelled() => {}
            }
        });
        index
    }

    /// Fails with Unavailable until the NodePools are listed.
    pub fn pools_ready(&self) -> Result<(), Status> {
        ready(&self.pools_listed, "NodePools")
    }

    /// Fails with Unavailable until the VirtualMachines are listed.
    pub fn vms_ready(&self) -> Result<(), Status> {
        ready(&self.vms_listed, "KubeVirt VirtualMachines")
    }

    pub fn pool(&self, namespace: &str, name: &str) -> Option<Arc<NodePool>> {
        self.pools.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn pools(&self) -> Vec<Arc<NodePool>> {
        self.pools.state()
    }

    pub fn vm(&self, namespace: &str, name: &str) -> Option<Arc<VmMeta>> {
        self.vms.get(&ObjectRef::new(name).within(namespace))
    }

    /// The metadata of `pool`'s VMs.
    pub fn vms_of(&self, pool: &NodePool) -> Vec<ObjectMeta> {
        let namespace = pool.namespace();
        let name = pool.name_any();
        self.vms
            .state()
            .iter()
            .filter(|vm| vm.namespace() == namespace)
            .filter(|vm| super::machines::pool_of(&vm.metadata) == Some(name.as_str()))
            .map(|vm| vm.metadata.clone())
            .collect()
    }

    /// Waits until `seen` holds of the index, up to `timeout`: a write is answered once the
    /// next read shows it. Returns whether it came to hold.
    pub async fn until(&self, timeout: Duration, seen: impl Fn(&Index) -> bool) -> bool {
        let start = Instant::now();
        while !seen(self) {
            if start.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        true
    }
}

fn ready(listed: &watch::Receiver<bool>, what: &str) -> Result<(), Status> {
    if *listed.borrow() {
        Ok(())
    } else {
        Err(Status::unavailable(format!(
            "the operator has not listed the {what} yet"
        )))
    }
}
