//! What the garbage collector cannot reach when a tenant goes: its user, role and keys in etcd.

use super::CONTROLLER;
use crate::api::{DataStore, TenantControlPlane};
use crate::context::Context;
use crate::{Result, datastore, etcd};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;
use tracing::{info, warn};

/// Set to "true" on a TenantControlPlane to delete it without cleaning its DataStore (for a
/// DataStore that is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "orrery.dev/skip-datastore-cleanup";

/// Revokes the tenant's etcd access, then removes its keys (see [`etcd::remove_tenant`]).
pub async fn cleanup(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = tcp.namespace().unwrap_or_default();
    let name = tcp.name_any();
    if tcp
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        warn!(tenant = %name, "deleting without DataStore cleanup, as annotated");
        return Ok(Action::await_change());
    }
    let Some(ds_name) = tcp
        .status
        .as_ref()
        .and_then(|s| s.data_store.clone())
        .or_else(|| tcp.spec.data_store.clone())
    else {
        return Ok(Action::await_change());
    };
    let ds = match ctx.stores.datastores.get(&ObjectRef::new(&ds_name)) {
        Some(ds) => Some(ds),
        // The store may not have seen a DataStore created a moment ago: ask the API.
        None => Api::<DataStore>::all(ctx.client.clone())
            .get_opt(&ds_name)
            .await?
            .map(Arc::new),
    };
    let Some(ds) = ds else {
        warn!(tenant = %name, datastore = %ds_name, "DataStore is gone; nothing to clean");
        return Ok(Action::await_change());
    };
    let conn = datastore::connection(&ctx.client, &ds).await?;
    let mut client = ctx.etcd.client(&ds_name, &conn).await?;
    let deleted = match etcd::remove_tenant(&mut client, &ns, &name).await {
        Ok(n) => n,
        Err(e) => {
            ctx.etcd.forget(&ds_name);
            return Err(e);
        }
    };
    info!(tenant = %name, datastore = %ds_name, deleted, "revoked the tenant's etcd user and role, removed its keys");
    let note =
        format!("removed the etcd user and role, then {deleted} keys, from DataStore {ds_name}");
    ctx.event(&*tcp, EventType::Normal, "DataStoreCleaned", "Delete", note)
        .await;
    Ok(Action::await_change())
}
