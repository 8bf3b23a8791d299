//! The DataStore's status, computed from what the reconcile found (pure).

use crate::api::{DataStore, DataStoreStatus, TenantControlPlane};
use crate::conditions::{self, READY};
use crate::stop::Stop;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use std::sync::Arc;

/// The DataStores a tenant names: in its spec and in its status (they differ only while a
/// tenant is being set up).
pub fn datastore_names(tcp: &TenantControlPlane) -> Vec<String> {
    let mut names: Vec<String> = [
        tcp.spec.data_store.clone(),
        tcp.status.as_ref().and_then(|s| s.data_store.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    names.dedup();
    names
}

/// `namespace/name` of every tenant that uses DataStore `ds`, sorted.
pub fn tenants_using(all: &[Arc<TenantControlPlane>], ds: &str) -> Vec<String> {
    let mut used: Vec<String> = all
        .iter()
        .filter(|t| datastore_names(t).iter().any(|n| n == ds))
        .map(|t| format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any()))
        .collect();
    used.sort();
    used
}

/// The status after a reconcile that reached etcd (`Ok(endpoints)`) or stopped.
pub fn compute(
    ds: &DataStore,
    used_by: Vec<String>,
    reached: &Result<String, Stop>,
) -> DataStoreStatus {
    let old = ds.status.clone().unwrap_or_default();
    let (ready, reason, message, endpoints) = match reached {
        Ok(endpoints) => (
            true,
            "Reachable",
            "etcd answers as root".to_string(),
            Some(endpoints.clone()),
        ),
        Err(Stop::Blocked(b)) => (false, b.reason, b.message.clone(), old.endpoints.clone()),
        Err(Stop::Failed(e)) => (false, e.category(), e.to_string(), old.endpoints.clone()),
    };
    let mut status = DataStoreStatus {
        observed_generation: ds.meta().generation,
        endpoints: endpoints.filter(|e| !e.is_empty()),
        tenant_count: used_by.len() as i32,
        used_by,
        conditions: old.conditions,
    };
    let now = Time(jiff::Timestamp::now());
    conditions::set(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        ds.meta().generation,
        &now,
    );
    status
}

pub fn is_ready(status: &DataStoreStatus) -> bool {
    conditions::is_true(&status.conditions, READY)
}
