//! The TenantControlPlane controller. One reconcile is a pipeline:
//! [`dereference`] (every read) → [`validate`] (pure) → [`desired`] (pure: PKI and objects, from
//! the [`build`]ers) → apply (server-side apply that remembers and prunes, in the management
//! cluster and in the tenant) → [`status`] (pure, written once when it changed).
//!
//! A reconcile of an unchanged tenant sends only no-op applies (the server keeps every
//! resourceVersion) and writes no status. Deleting a tenant removes its children through owner
//! references; the finalizer exists only for what the garbage collector cannot reach: the
//! tenant's user, role and keys in etcd ([`cleanup`]).

pub mod build;
mod cleanup;
pub mod dereference;
pub mod desired;
mod status;
mod tenant;
pub mod upgrade;
pub mod validate;

pub use build::*;
pub use cleanup::SKIP_CLEANUP_ANNOTATION;

use crate::addons;
use crate::api::{DataStore, SecretRef, ServiceType, TenantControlPlane, TenantControlPlaneStatus};
use crate::apply::{MANAGED_BY, TENANT_LABEL};
use crate::children::Children;
use crate::conditions::{
    self, ADDONS_READY, CERTIFICATES_READY, CONTROL_PLANE_AVAILABLE, DATASTORE_READY, READY,
    SLEEPING, TENANT_API_READY, VERSION_CURRENT,
};
use crate::context::Context;
use crate::etcd;
use crate::stop::{Blocked, Stop};
use crate::{Error, Result};
use desired::Exposure;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use status::Tracker;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

const CONTROLLER: &str = "tenantcontrolplane";
/// Removes the tenant's etcd keys, user and role before the object goes.
pub const CLEANUP_FINALIZER: &str = "orrery.dev/datastore-cleanup";
/// Retry of a reconcile that failed unexpectedly.
const FAILED_RETRY: Duration = Duration::from_secs(5);

#[instrument(skip_all, fields(tenant = %tcp.name_any(), namespace = tcp.namespace().unwrap_or_default()))]
async fn reconcile(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tcp.namespace().ok_or_else(|| Error::Invalid {
        field: "metadata.namespace".into(),
        reason: "TenantControlPlane is namespaced".into(),
    })?;
    let api = Api::<TenantControlPlane>::namespaced(ctx.client.clone(), &ns);
    // Cleanups count as reconciles too (their failures are counted as errors).
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let result = finalizer(&api, CLEANUP_FINALIZER, tcp, |event| async {
        match event {
            FinalizerEvent::Apply(tcp) => reconcile_tenant(tcp, ctx.clone()).await,
            FinalizerEvent::Cleanup(tcp) => cleanup::cleanup(tcp, ctx.clone()).await,
        }
    })
    .await;
    crate::error::finalized(result, Action::await_change())
}

/// What a reconcile learnt besides the status: for Events and the next requeue.
#[derive(Default)]
struct Notes {
    /// Ready before this reconcile.
    was_ready: bool,
    /// The reconcile is blocked for a reason not already shown.
    news: bool,
    /// (item, why) of every certificate issued.
    issued: Vec<(String, String)>,
    /// When the next certificate enters its renewal window.
    next_renewal: Option<SystemTime>,
}

/// Runs the pipeline, then finishes and writes the status and tells the user what they must
/// know, in one place.
async fn reconcile_tenant(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Result<Action> {
    let mut tracker = Tracker::new(&tcp, Time(jiff::Timestamp::now()));
    let mut notes = Notes {
        was_ready: tracker.is_ready(),
        ..Notes::default()
    };
    let outcome = converge(&tcp, &ctx, &mut tracker, &mut notes).await;
    if let Err(Stop::Blocked(b)) = &outcome {
        notes.news = tracker.block(b);
        if notes.news {
            info!(reason = b.reason, message = %b.message, "blocked");
        } else {
            debug!(reason = b.reason, "still blocked");
        }
    }
    addons_condition(&tcp, &ctx, &mut tracker).await;
    tracker.finish(
        &tcp.spec.version,
        &outcome,
        ctx.settings.tenant_access,
        tcp.spec.sleep,
    );
    if tcp.status.as_ref() != Some(&tracker.status) {
        let patch = serde_json::json!({ "status": tracker.status });
        Api::<TenantControlPlane>::namespaced(
            ctx.client.clone(),
            &tcp.namespace().unwrap_or_default(),
        )
        .patch_status(
            &tcp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    tell(&tcp, &ctx, &outcome, &notes, &tracker.status).await;
    debug!(outcome = ?outcome.as_ref().map_err(Stop::category), "reconciled");
    match outcome {
        Ok(()) => {
            let wait = notes
                .next_renewal
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .map_or(ctx.settings.resync, |d| d.min(ctx.settings.resync));
            Ok(Action::requeue(wait.max(Duration::from_secs(1))))
        }
        Err(Stop::Blocked(b)) => Ok(Action::requeue(b.retry.unwrap_or(ctx.settings.resync))),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// The Events of a reconcile: certificates issued, a new reason to be blocked, a failure (the
/// recorder folds repeats into a series), and readiness gained or lost.
async fn tell(
    tcp: &TenantControlPlane,
    ctx: &Context,
    outcome: &Result<(), Stop>,
    notes: &Notes,
    status: &TenantControlPlaneStatus,
) {
    if !notes.issued.is_empty() {
        let items: Vec<String> = notes
            .issued
            .iter()
            .map(|(item, why)| format!("{item} ({why})"))
            .collect();
        info!(renewed = ?items, "certificates issued");
        let note = format!("issued {}", items.join(", "));
        ctx.event(
            tcp,
            EventType::Normal,
            "CertificatesIssued",
            "Reconcile",
            note,
        )
        .await;
    }
    match outcome {
        Err(Stop::Blocked(b)) if notes.news => {
            // Sleep is asked for, not a fault.
            let type_ = if b.reason == SLEEPING {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.event(tcp, type_, b.reason, "Reconcile", b.message.clone())
                .await;
        }
        Err(stop @ Stop::Failed(_)) => {
            ctx.event(
                tcp,
                EventType::Warning,
                stop.category(),
                "Reconcile",
                format!("reconcile failed: {stop}"),
            )
            .await;
        }
        _ => {}
    }
    version_events(tcp, ctx, status).await;
    let ready = conditions::is_true(&status.conditions, READY);
    if ready && !notes.was_ready {
        let endpoint = status.endpoint.clone().unwrap_or_default();
        let note = format!("tenant control plane is available at {endpoint}");
        ctx.event(tcp, EventType::Normal, "Ready", "Reconcile", note)
            .await;
    } else if notes.was_ready && !ready {
        let note = "the tenant control plane is no longer Ready".to_string();
        ctx.event(tcp, EventType::Warning, "NotReady", "Reconcile", note)
            .await;
    }
}

/// An upgrade that completed, and a roll that stalled (once, when it starts to).
async fn version_events(
    tcp: &TenantControlPlane,
    ctx: &Context,
    status: &TenantControlPlaneStatus,
) {
    let before = tcp.status.clone().unwrap_or_default();
    if let (Some(old), Some(new)) = (&before.version, &status.version)
        && old != new
    {
        let note = format!("the control plane runs {new} on every replica (was {old})");
        ctx.event(tcp, EventType::Normal, "Upgraded", "Reconcile", note)
            .await;
    }
    let reason = |s: &TenantControlPlaneStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == VERSION_CURRENT)
            .map(|c| c.reason.clone())
    };
    if reason(status).as_deref() == Some("RollStalled") && reason(&before) != reason(status) {
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == VERSION_CURRENT)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(tcp, EventType::Warning, "RollStalled", "Reconcile", message)
            .await;
    }
}

/// The pipeline: dereference → validate → build → apply, keeping the status as it goes.
async fn converge(
    tcp: &TenantControlPlane,
    ctx: &Context,
    st: &mut Tracker,
    notes: &mut Notes,
) -> Result<(), Stop> {
    // A spec that cannot work stops here, before anything is read or written.
    validate::spec(tcp)?;
    let read = dereference::read(tcp, ctx).await?;
    st.status.data_store = Some(read.datastore.clone());
    validate::datastore(tcp, &read)?;
    validate::authorities(tcp, &read)?;

    let ns = tcp.namespace().unwrap_or_default();
    let selector = format!(
        "{}={},{TENANT_LABEL}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        tcp.name_any()
    );
    let mut children = Children::new(ctx.client.clone(), selector, tcp.uid());
    // The Service first: its address goes into the certificates.
    let service = children
        .apply(&service_keeping_address(tcp, read.service.as_ref()))
        .await?;
    let exposure = exposure(tcp, &service).ok_or_else(|| {
        Blocked::waiting(
            CONTROL_PLANE_AVAILABLE,
            "WaitingForEndpoint",
            format!("Service {} has no address yet", Names::new(tcp).workload()),
        )
    })?;
    st.status.endpoint = Some(exposure.endpoint.clone());

    let desired = desired::desired(tcp, &ctx.settings, &read, &exposure, SystemTime::now())
        .map_err(|e| {
            Blocked::until_changed(
                CERTIFICATES_READY,
                "CertificateAuthorityInvalid",
                e.to_string(),
            )
        })?;
    children.apply_all(&desired.secrets).await?;
    notes.issued = desired.pki.renewed.clone();
    notes.next_renewal = desired.pki.next_renewal;
    st.status.kubeconfig_secret_ref = Some(SecretRef {
        name: Names::new(tcp).admin_kubeconfig(),
        key: "kubeconfig".into(),
    });
    let message = if read.user_ca {
        "certificates valid; CA provided by the user"
    } else {
        "certificates valid"
    };
    st.set(CERTIFICATES_READY, true, "Issued", message);

    provision_in_datastore(tcp, ctx, &read, st).await?;

    children.apply(&desired.config_map).await?;
    let deployment = children.apply(&desired.deployment).await?;
    children.apply(&desired.pod_disruption_budget).await?;
    let ns = Some(ns.as_str());
    children.prune::<Deployment>(ns).await?;
    children.prune::<PodDisruptionBudget>(ns).await?;
    children.prune::<ConfigMap>(ns).await?;
    children.prune::<Service>(ns).await?;
    children.prune::<Secret>(ns).await?;

    if tcp.spec.sleep {
        return Err(asleep(&deployment, ctx.settings.tenant_access, st).into());
    }
    let available = observe_deployment(tcp, &deployment, st);
    observe_version(tcp, ctx, &deployment, st).await;
    if ctx.settings.tenant_access {
        tenant::bootstrap(tcp, ctx, &desired.pki, &exposure.endpoint, available, st).await?;
    }
    Ok(())
}

/// The Service, asking for the address it had when it is made again (after a deletion), so the
/// endpoint in every kubeconfig stays valid. A load balancer's address is not Orrery's to keep.
fn service_keeping_address(tcp: &TenantControlPlane, current: Option<&Service>) -> Service {
    let mut service = build::service(tcp);
    let recorded = tcp
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_deref())
        .and_then(endpoint_host);
    if current.is_none()
        && tcp.spec.network.service_type != ServiceType::LoadBalancer
        && let (Some(ip), Some(spec)) = (recorded, service.spec.as_mut())
    {
        spec.cluster_ip = Some(ip.to_string());
    }
    service
}

/// The IP of a `host:port` endpoint, if the host is one.
pub(crate) fn endpoint_host(endpoint: &str) -> Option<IpAddr> {
    let (host, _port) = endpoint.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Gives the tenant its etcd user and role, limited to its prefix.
async fn provision_in_datastore(
    tcp: &TenantControlPlane,
    ctx: &Context,
    read: &dereference::Read,
    st: &mut Tracker,
) -> Result<(), Stop> {
    let (ns, name) = (tcp.namespace().unwrap_or_default(), tcp.name_any());
    let unreachable = |e: Error| {
        Blocked::waiting(
            DATASTORE_READY,
            "DataStoreUnreachable",
            format!("DataStore {}: {e}", read.datastore),
        )
    };
    let mut client = ctx
        .etcd
        .client(&read.datastore, &read.connection)
        .await
        .map_err(unreachable)?;
    if let Err(e) = etcd::ensure_tenant(&mut client, &ns, &name).await {
        ctx.etcd.forget(&read.datastore);
        return Err(unreachable(e).into());
    }
    let message = format!(
        "etcd user {} limited to its prefix",
        etcd::etcd_user(&ns, &name)
    );
    st.set(DATASTORE_READY, true, "TenantProvisioned", message);
    Ok(())
}

/// Records the rollout and availability; returns whether a control-plane pod is available.
fn observe_deployment(tcp: &TenantControlPlane, deployment: &Deployment, st: &mut Tracker) -> bool {
    let want = tcp.spec.replicas;
    let status = deployment.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let current = status.observed_generation >= deployment.metadata.generation;
    let rolled_out =
        current && updated == want && available >= want && status.replicas.unwrap_or(0) == want;
    if rolled_out {
        st.status.version = Some(tcp.spec.version.clone());
    }
    let message = format!("{available}/{want} control-plane replicas available");
    if available > 0 {
        st.set(CONTROL_PLANE_AVAILABLE, true, "Available", message);
    } else {
        st.set(CONTROL_PLANE_AVAILABLE, false, "Unavailable", message);
    }
    available > 0
}

/// VersionCurrent, from the roll; when the roll stalled, it names what holds the new pods back.
async fn observe_version(
    tcp: &TenantControlPlane,
    ctx: &Context,
    deployment: &Deployment,
    st: &mut Tracker,
) {
    let roll = upgrade::Roll::of(deployment, tcp.spec.replicas);
    let mut why = None;
    if roll.stalled.is_some() {
        let selector = build::selector_labels(tcp)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &tcp.namespace().unwrap_or_default());
        // Best effort: the condition says the roll stalled whether or not the pods can be read.
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            why = upgrade::why_pods_wait(&list.items);
        }
    }
    let (current, reason, message) = upgrade::condition(
        &tcp.spec.version,
        st.status.version.as_deref(),
        &roll,
        why.as_deref(),
    );
    st.set(VERSION_CURRENT, current, reason, message);
}

/// The status of a sleeping tenant, whose Deployment is scaled to zero: Ready is blocked for
/// that reason, and ControlPlaneAvailable says how many pods are still stopping.
fn asleep(deployment: &Deployment, tenant_access: bool, st: &mut Tracker) -> Blocked {
    let left = deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let message = if left > 0 {
        format!("scaled to zero by spec.sleep; {left} control-plane pods still stopping")
    } else {
        "scaled to zero by spec.sleep".to_string()
    };
    st.set(CONTROL_PLANE_AVAILABLE, false, SLEEPING, message);
    if tenant_access {
        st.set(
            TENANT_API_READY,
            false,
            SLEEPING,
            "the tenant sleeps: its apiserver does not run",
        );
    }
    Blocked::until_changed(
        READY,
        SLEEPING,
        "the tenant sleeps (spec.sleep): its control plane is scaled to zero, and its \
         certificates, keys, endpoint and data are kept; set spec.sleep to false to wake it",
    )
}

/// The host:port workers and users reach, and the Service's IPs, once the Service has them.
pub fn exposure(tcp: &TenantControlPlane, service: &Service) -> Option<Exposure> {
    let port = tcp.spec.network.port;
    let spec = service.spec.as_ref()?;
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let lb = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let lb_ips: Vec<IpAddr> = lb
        .iter()
        .flat_map(|i| i.iter())
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect();
    ips.splice(0..0, lb_ips.iter().copied());
    let host = match tcp.spec.network.service_type {
        ServiceType::LoadBalancer => {
            let first = lb.and_then(|i| i.first())?;
            first.ip.clone().or_else(|| first.hostname.clone())?
        }
        _ => spec.cluster_ip.clone().filter(|ip| ip != "None")?,
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(Exposure {
        endpoint: format!("{host}:{port}"),
        service_ips: ips,
    })
}

fn error_policy(tcp: Arc<TenantControlPlane>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(tenant = %tcp.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}

/// The tenants a DataStore change concerns: those that use it (or would, as the default) and
/// are not yet provisioned in it. A tenant already running on it is not woken.
fn tenants_waiting_on(
    ds: &DataStore,
    tenants: &reflector::Store<TenantControlPlane>,
) -> Vec<ObjectRef<TenantControlPlane>> {
    let name = ds.name_any();
    let is_default = ds
        .annotations()
        .get(crate::datastore::DEFAULT_ANNOTATION)
        .is_some_and(|v| v == "true");
    tenants
        .state()
        .iter()
        .filter(|t| {
            let names = crate::datastore::status::datastore_names(t);
            let concerned = names.contains(&name) || (names.is_empty() && is_default);
            let provisioned = t
                .status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, DATASTORE_READY));
            concerned && !provisioned
        })
        .map(|t| ObjectRef::from_obj(&**t))
        .collect()
}

/// Sets AddonsReady from what the tenant's add-ons show. It does not take part in Ready: a
/// control plane serves without its add-ons. Left as it was when the autoscaler's Deployment
/// cannot be read.
async fn addons_condition(tcp: &TenantControlPlane, ctx: &Context, tracker: &mut Tracker) {
    let autoscaler = match addons::health::autoscaler_deployment(&ctx.client, tcp).await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read the cluster-autoscaler's Deployment");
            return;
        }
    };
    let cloud = ctx.addons.cloud(&ObjectRef::from_obj(tcp));
    let (ok, reason, message) =
        addons::health::condition(tcp, &ctx.settings, cloud, autoscaler.as_ref());
    tracker.set(ADDONS_READY, ok, reason, message);
}

/// Runs the TenantControlPlane controller until `shutdown` is cancelled. It feeds the tenant store.
pub fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
    run_with_trigger(ctx, shutdown, futures::stream::pending())
}

/// Like [`run`], and every item of `reconcile_all` reconciles every tenant once more (tests use it
/// to check that an unchanged tenant causes no writes).
pub fn run_with_trigger(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let wakes = ctx.addons.take_wakes();
    let feed = ctx.stores.take_tenants_feed();
    let reader = feed.reader();
    let tenants = feed
        .reflect(watcher(
            Api::<TenantControlPlane>::all(client.clone()),
            watcher::Config::default(),
        ))
        .default_backoff()
        .applied_objects()
        .predicate_filter(crate::context::changed_by_user(), Default::default());
    let store = reader.clone();
    Controller::for_stream(tenants, reader)
        .owns_stream(crate::context::owned::<Deployment>(&client))
        .owns_stream(crate::context::owned::<Service>(&client))
        .owns_stream(crate::context::owned::<Secret>(&client))
        .owns_stream(crate::context::owned::<ConfigMap>(&client))
        .owns_stream(crate::context::owned::<PodDisruptionBudget>(&client))
        .watches(
            Api::<DataStore>::all(client),
            watcher::Config::default(),
            move |ds| tenants_waiting_on(&ds, &store),
        )
        .reconcile_all_on(reconcile_all)
        // The add-ons running in this process report changes of their state.
        .reconcile_on(wakes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    fn tcp(yaml: &str) -> TenantControlPlane {
        let mut t = TenantControlPlane::new("t1", serde_yaml_ng::from_str(yaml).unwrap());
        t.metadata.namespace = Some("ns".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn svc(cluster_ip: Option<&str>, lb: Option<LoadBalancerIngress>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: cluster_ip.map(Into::into),
                cluster_ips: cluster_ip.map(|ip| vec![ip.into()]),
                ..Default::default()
            }),
            status: lb.map(|i| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![i]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_follows_the_service_type() {
        let cluster = tcp("version: v1.34.4");
        assert_eq!(exposure(&cluster, &svc(None, None)), None);
        let e = exposure(&cluster, &svc(Some("10.96.1.2"), None)).unwrap();
        assert_eq!(e.endpoint, "10.96.1.2:6443");
        assert_eq!(e.service_ips, vec!["10.96.1.2".parse::<IpAddr>().unwrap()]);

        let lb = tcp("version: v1.34.4\nnetwork:\n  serviceType: LoadBalancer\n  port: 443\n");
        assert_eq!(
            exposure(&lb, &svc(Some("10.96.1.2"), None)),
            None,
            "LoadBalancer pending"
        );
        let ingress = LoadBalancerIngress {
            ip: Some("192.0.2.7".into()),
            ..Default::default()
        };
        let e = exposure(&lb, &svc(Some("10.96.1.2"), Some(ingress))).unwrap();
        assert_eq!(e.endpoint, "192.0.2.7:443");
        assert_eq!(e.service_ips.len(), 2);
        let v6 = tcp("version: v1.34.4");
        assert_eq!(
            exposure(&v6, &svc(Some("fd00::1"), None)).unwrap().endpoint,
            "[fd00::1]:6443"
        );
    }

    #[test]
    fn a_service_made_again_asks_for_its_old_address() {
        let mut t = tcp("version: v1.34.4");
        assert_eq!(
            service_keeping_address(&t, None).spec.unwrap().cluster_ip,
            None,
            "first creation"
        );
        t.status = Some(crate::api::TenantControlPlaneStatus {
            endpoint: Some("10.96.7.8:6443".into()),
            ..Default::default()
        });
        assert_eq!(
            service_keeping_address(&t, None)
                .spec
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("10.96.7.8")
        );
        let existing = svc(Some("10.96.7.8"), None);
        assert_eq!(
            service_keeping_address(&t, Some(&existing))
                .spec
                .unwrap()
                .cluster_ip,
            None,
            "never touched once it exists"
        );
        t.status.as_mut().unwrap().endpoint = Some("[fd00::5]:6443".into());
        assert_eq!(
            service_keeping_address(&t, None)
                .spec
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("fd00::5")
        );
        let mut lb = tcp("version: v1.34.4\nnetwork:\n  serviceType: LoadBalancer\n");
        lb.status = t.status.clone();
        assert_eq!(
            service_keeping_address(&lb, None).spec.unwrap().cluster_ip,
            None
        );
    }
}
