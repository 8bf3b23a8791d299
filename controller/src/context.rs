//! What every reconciler shares.

use crate::metrics::Metrics;
use kube::runtime::events::Reporter;
use std::sync::Arc;
use std::time::Duration;

/// Process-wide settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Registry and path prefix of the default control-plane images, e.g. `registry.k8s.io`.
    pub image_registry: String,
    /// How long an unchanged object waits before it is reconciled again (drift check).
    pub resync: Duration,
    /// Whether to reach into tenant clusters (readiness via /readyz, bootstrap, add-ons).
    pub tenant_access: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image_registry: "registry.k8s.io".into(),
            resync: Duration::from_secs(300),
            tenant_access: true,
        }
    }
}

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    pub settings: Settings,
    /// etcd connections, one per DataStore, reused across reconciles.
    pub etcd: Arc<crate::datastore::EtcdPool>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            metrics,
            reporter,
            settings,
            etcd: Default::default(),
        }
    }
}
