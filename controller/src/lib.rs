//! Orrery: hosted Kubernetes control planes.
//!
//! Each concern has its own module: `api` (the custom resources), `crdgen` (CRD YAML), `pki`
//! (certificates and kubeconfigs, pure), `datastore` (etcd for tenants), `controlplane` (the
//! tenant control-plane objects, pure builders), `reconcile` (the TenantControlPlane controller),
//! `nodepool` (the NodePool controller: KubeVirt worker VMs that join a tenant), `addons` (the
//! tenant cloud controller and the cluster-autoscaler API, run from the management cluster),
//! `conditions` (status conditions), `apply` (server-side apply of children), `metrics`,
//! `runtime` (the `orrery` process: command line, client, leader election, supervisor) and
//! `plugin` (the `kubectl orrery` plugin).

pub mod addons;
pub mod api;
pub mod apply;
pub mod children;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controlplane;
pub mod crdgen;
pub mod datastore;
pub mod error;
pub mod etcd;
pub mod hash;
pub mod metrics;
pub mod nodepool;
pub mod pki;
pub mod plugin;
pub mod podspec;
pub mod runtime;
pub mod stop;
pub mod tenant;

pub use error::{Error, Result};

/// A controller as the supervisor runs it: until `shutdown` is cancelled.
pub type RunController = fn(
    std::sync::Arc<context::Context>,
    tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, ()>;

/// Every controller the operator runs. Adding a controller is one line here.
pub const CONTROLLERS: &[(&str, RunController)] = &[
    ("tenantcontrolplane", controlplane::run),
    ("datastore", datastore::run),
    ("nodepool", nodepool::run),
    ("cloud", addons::cloud::run),
    ("cluster-autoscaler", addons::autoscaler::run),
];

/// The one field manager Orrery uses for server-side apply.
pub const FIELD_MANAGER: &str = "orrery";
