//! Orrery: hosted Kubernetes control planes.
//!
//! Each concern has its own module: `api` (the custom resources), `crdgen` (CRD YAML), `pki`
//! (certificates and kubeconfigs, pure), `datastore` (etcd for tenants), `controlplane` (the
//! tenant control-plane objects, pure builders), `reconcile` (the TenantControlPlane controller),
//! `conditions` (status conditions), `apply` (server-side apply of children), `metrics` and
//! `operator` (the `orrery controller` process).

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
pub mod operator;
pub mod pki;
pub mod podspec;
pub mod stop;

pub mod tenant;

pub use error::{Error, Result};

/// The one field manager Orrery uses for server-side apply.
pub const FIELD_MANAGER: &str = "orrery";
