//! DataStores: the etcd clusters that hold tenants' state.
//!
//! Every tenant gets its own key prefix and, on the shared etcd, its own user and role limited to
//! that prefix; its apiserver authenticates with a client certificate whose common name is that
//! user. Orrery itself talks to etcd as `root` (see [`crate::etcd`]).
//!
//! The DataStore controller: dereference (the tenants that use it, from the store; the managed
//! etcd's key pairs) → build (pure: the managed etcd's objects) → apply → status (`usedBy`,
//! reachability as root). It refuses deletion while tenants use the DataStore (finalizer).

pub mod build;
pub mod dereference;
pub mod status;

pub use build::ManagedNames;
pub use dereference::{connection, resolve_name};

use crate::api::{DataStore, TenantControlPlane};
use crate::apply::{DATASTORE_LABEL, MANAGED_BY};
use crate::children::Children;
use crate::context::Context;
use crate::etcd::ensure_auth_enabled;
use crate::stop::{Blocked, Stop};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{instrument, warn};

/// A DataStore carrying this annotation set to "true" is used by tenants that name none.
pub const DEFAULT_ANNOTATION: &str = "orrery.dev/default-datastore";
/// Keeps a DataStore while tenants still use it.
pub const PROTECTION_FINALIZER: &str = "orrery.dev/datastore-protection";
const CONTROLLER: &str = "datastore";
const ETCD_CLIENT_PORT: i32 = 2379;
const ETCD_PEER_PORT: i32 = 2380;
const ETCD_METRICS_PORT: i32 = 2381;
const ETCD_DEFAULT_IMAGE_TAG: &str = "3.6.4-0";
/// Lifetime of the managed etcd's server and root certificates; renewed in the last third.
const MANAGED_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const RETRY: Duration = Duration::from_secs(10);
/// How soon a deletion held by a tenant is looked at again.
const HELD_RETRY: Duration = Duration::from_secs(2);

#[instrument(skip_all, fields(datastore = %ds.name_any()))]
async fn reconcile(ds: Arc<DataStore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let api = Api::<DataStore>::all(ctx.client.clone());
    let name = ds.name_any();
    // Before the first full list of tenants, every DataStore would look unused.
    ctx.stores.tenants_listed().await?;
    let used_by = status::tenants_using(&ctx.stores.tenants.state(), &name);
    let deleting = ds.meta().deletion_timestamp.is_some();
    if deleting {
        if used_by.is_empty() {
            remove_finalizer(&api, &ds).await?;
            ctx.etcd.forget(&name);
            return Ok(Action::await_change());
        }
        let note = format!("not deleted while in use by {}", used_by.join(", "));
        ctx.event(&*ds, EventType::Warning, "DataStoreInUse", "Delete", note)
            .await;
    } else {
        add_finalizer(&api, &ds).await?;
    }

    let reached = converge(&ds, &ctx, deleting).await;
    let new = status::compute(&ds, used_by, &reached);
    if ds.status.as_ref() != Some(&new) {
        if !status::is_ready(&new) && ds.status.as_ref().is_some_and(status::is_ready) {
            warn!(%name, "DataStore became unreachable");
        }
        let patch = serde_json::json!({ "status": new });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    match reached {
        // A deletion held by a tenant is looked at again soon: the tenant's deletion may wake
        // this reconcile (through this controller's own watch) before the shared tenant store
        // has seen it go, and no later event would come.
        Ok(_) if deleting => Ok(Action::requeue(HELD_RETRY)),
        Ok(_) => Ok(Action::requeue(ctx.settings.resync)),
        Err(Stop::Blocked(_)) => Ok(Action::requeue(RETRY)),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Applies the managed etcd (unless the DataStore is going) and checks that etcd answers as
/// root. Returns the endpoints.
async fn converge(ds: &DataStore, ctx: &Context, deleting: bool) -> Result<String, Stop> {
    let name = ds.name_any();
    if let Some(managed) = ds.spec.managed.as_ref().filter(|_| !deleting) {
        let current = dereference::managed_pki(&ctx.client, ds, managed)
            .await
            .map_err(invalid_configuration)?;
        let objects = build::managed_objects(ds, managed, current, SystemTime::now())?;
        let selector = format!("{}={},{DATASTORE_LABEL}={name}", MANAGED_BY.0, MANAGED_BY.1);
        let mut children = Children::new(ctx.client.clone(), selector, ds.uid());
        children.apply_all(&objects.secrets).await?;
        children.apply_all(&objects.services).await?;
        children.apply(&objects.statefulset).await?;
        let ns = Some(managed.namespace.as_str());
        children.prune::<StatefulSet>(ns).await?;
        children.prune::<Service>(ns).await?;
        children.prune::<Secret>(ns).await?;
    }
    let conn = connection(&ctx.client, ds)
        .await
        .map_err(invalid_configuration)?;
    let endpoints = conn.endpoints.join(",");
    let unreachable = |e: Error| {
        Blocked::waiting(
            crate::conditions::READY,
            "Unreachable",
            format!("{e} (endpoints {endpoints})"),
        )
    };
    let mut etcd = ctx.etcd.client(&name, &conn).await.map_err(unreachable)?;
    let checked = match &ds.spec.managed {
        Some(_) => ensure_auth_enabled(&mut etcd).await,
        None => etcd.status().await.map(|_| ()).map_err(Into::into),
    };
    if let Err(e) = checked {
        ctx.etcd.forget(&name);
        return Err(unreachable(e).into());
    }
    Ok(endpoints)
}

/// A DataStore whose settings cannot work (missing Secret or namespace) is shown as such.
fn invalid_configuration(e: Error) -> Stop {
    match e {
        Error::Invalid { .. } | Error::DataStore(_) => Blocked::waiting(
            crate::conditions::READY,
            "InvalidConfiguration",
            e.to_string(),
        )
        .into(),
        e => Stop::Failed(e),
    }
}

async fn add_finalizer(api: &Api<DataStore>, ds: &DataStore) -> Result<()> {
    if ds.finalizers().iter().any(|f| f == PROTECTION_FINALIZER) {
        return Ok(());
    }
    let mut finalizers = ds.finalizers().to_vec();
    finalizers.push(PROTECTION_FINALIZER.to_string());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": ds.resource_version() }
    });
    api.patch(
        &ds.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn remove_finalizer(api: &Api<DataStore>, ds: &DataStore) -> Result<()> {
    let finalizers: Vec<String> = ds
        .finalizers()
        .iter()
        .filter(|f| *f != PROTECTION_FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": ds.resource_version() }
    });
    match api
        .patch(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(ds: Arc<DataStore>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(datastore = %ds.name_any(), %error, "DataStore reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    Action::requeue(Duration::from_secs(5))
}

/// The DataStores a tenant change concerns: the one it uses, when it is not yet (or no longer)
/// listed in that DataStore's `usedBy`. A status change of a tenant already listed wakes nothing.
fn datastores_of(
    tcp: &TenantControlPlane,
    datastores: &reflector::Store<DataStore>,
) -> Vec<ObjectRef<DataStore>> {
    let me = format!("{}/{}", tcp.namespace().unwrap_or_default(), tcp.name_any());
    let going = tcp.meta().deletion_timestamp.is_some();
    status::datastore_names(tcp)
        .into_iter()
        .map(|name| ObjectRef::new(&name))
        .filter(|r| {
            let listed = datastores
                .get(r)
                .is_some_and(|ds| ds.status.as_ref().is_some_and(|s| s.used_by.contains(&me)));
            going || !listed
        })
        .collect()
}

/// Runs the DataStore controller until `shutdown` is cancelled. It feeds the DataStore store.
pub fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let feed = ctx.stores.take_datastores_feed();
    let reader = feed.reader();
    let datastores = feed
        .reflect(watcher(
            Api::<DataStore>::all(client.clone()),
            watcher::Config::default(),
        ))
        .default_backoff()
        .applied_objects()
        .predicate_filter(crate::context::changed_by_user(), Default::default());
    let children = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let store = reader.clone();
    Controller::for_stream(datastores, reader)
        .owns(Api::<StatefulSet>::all(client.clone()), children)
        .watches(
            Api::<TenantControlPlane>::all(client),
            watcher::Config::default(),
            move |tcp| datastores_of(&tcp, &store),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "datastore controller event");
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DataStoreSpec, ManagedDataStore};
    use build::{managed_services, managed_statefulset, server_dns_names};

    fn managed_ds() -> (DataStore, ManagedDataStore) {
        let managed: ManagedDataStore = serde_yaml_ng::from_str("namespace: orrery-etcd").unwrap();
        let mut ds = DataStore::new(
            "shared",
            DataStoreSpec {
                managed: Some(managed.clone()),
                external: None,
            },
        );
        ds.metadata.uid = Some("ds-uid".into());
        (ds, managed)
    }

    #[test]
    fn managed_statefulset_defaults() {
        let (ds, managed) = managed_ds();
        assert_eq!(managed.replicas, 3);
        let names = ManagedNames::new(&ds, &managed);
        let sts = managed_statefulset(&ds, &managed, &names, "h1");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("shared-etcd"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--client-cert-auth=true".to_string()));
        assert!(args.contains(&"--peer-client-cert-auth=true".to_string()));
        assert!(args.iter().any(|a| a
            == "--initial-cluster=shared-etcd-0=https://shared-etcd-0.shared-etcd.orrery-etcd.svc:2380,shared-etcd-1=https://shared-etcd-1.shared-etcd.orrery-etcd.svc:2380,shared-etcd-2=https://shared-etcd-2.shared-etcd.orrery-etcd.svc:2380"));
        assert_eq!(c.image.as_deref(), Some("registry.k8s.io/etcd:3.6.4-0"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let [peer, client] = managed_services(&ds, &names);
        assert_eq!(
            peer.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        assert_eq!(
            peer.spec.as_ref().unwrap().publish_not_ready_addresses,
            Some(true)
        );
        assert_eq!(client.metadata.name.as_deref(), Some("shared-etcd-client"));
        assert_eq!(
            names.client_endpoint(),
            "https://shared-etcd-client.orrery-etcd.svc:2379"
        );
        let dns = server_dns_names(&names, 3);
        assert!(dns.contains(&"shared-etcd-2.shared-etcd.orrery-etcd.svc".to_string()));
        assert!(dns.contains(&"shared-etcd-client.orrery-etcd.svc".to_string()));
        assert_eq!(sts.metadata.owner_references.unwrap()[0].uid, "ds-uid");
    }

    #[test]
    fn used_by_lists_tenants_by_spec_or_status() {
        let mk = |ns: &str, name: &str, spec_ds: Option<&str>, status_ds: Option<&str>| {
            let mut spec: crate::api::TenantControlPlaneSpec =
                serde_yaml_ng::from_str("version: v1.34.4").unwrap();
            spec.data_store = spec_ds.map(Into::into);
            let mut t = TenantControlPlane::new(name, spec);
            t.metadata.namespace = Some(ns.into());
            t.status = Some(crate::api::TenantControlPlaneStatus {
                data_store: status_ds.map(Into::into),
                ..Default::default()
            });
            Arc::new(t)
        };
        let all: Vec<Arc<TenantControlPlane>> = vec![
            mk("b", "t2", None, Some("shared")),
            mk("a", "t1", Some("shared"), None),
            mk("a", "t3", Some("other"), Some("other")),
        ];
        assert_eq!(status::tenants_using(&all, "shared"), ["a/t1", "b/t2"]);
        assert_eq!(status::tenants_using(&all, "none"), Vec::<String>::new());
    }
}
