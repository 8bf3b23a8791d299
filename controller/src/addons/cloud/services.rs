//! LoadBalancer Services: each tenant Service of type LoadBalancer (without a
//! `loadBalancerClass`) is served by a management Service ([`load_balancer::build`]) whose
//! address is copied into the tenant Service's status. The standard finalizer keeps the tenant
//! Service until its management Service is gone. Events name the steps as upstream cloud
//! controllers do (EnsuringLoadBalancer, EnsuredLoadBalancer, DeletedLoadBalancer).

use super::load_balancer::{self, FINALIZER};
use super::runner::Tenant;
use crate::apply::apply;
use crate::context::Feed;
use crate::{Error, FIELD_MANAGER, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONTROLLER: &str = "cloud-service";
/// How soon a Service whose management load balancer has no address yet is looked at again.
const WAITING: Duration = Duration::from_secs(30);
const FAILED_RETRY: Duration = Duration::from_secs(10);

/// The controller of the tenant's Services, with its store and a signal that the store holds a
/// first full list (both for the sweep), from a [`Feed`] (see there why the signal is ours).
pub fn controller(t: &Tenant) -> (Controller<Service>, Store<Service>, watch::Receiver<bool>) {
    let (feed, reader, listed_rx) = Feed::new();
    let services = feed
        .reflect(watcher(
            Api::<Service>::all(t.client.clone()),
            watcher::Config::default(),
        ))
        .default_backoff()
        .applied_objects();
    (
        Controller::for_stream(services, reader.clone()),
        reader,
        listed_rx,
    )
}

/// Runs `controller` for tenant `t` until `stop`.
pub async fn run(controller: Controller<Service>, t: Arc<Tenant>, stop: CancellationToken) {
    controller
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, t)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "cloud service controller event");
            }
        })
        .await;
}

async fn reconcile(svc: Arc<Service>, t: Arc<Tenant>) -> Result<Action> {
    let _timer = t.metrics.reconcile_started(CONTROLLER);
    if !load_balancer::wants_load_balancer(&svc) {
        release(&svc, &t).await?;
        return Ok(Action::await_change());
    }
    let unroutable = load_balancer::unroutable_ports(&svc);
    if !unroutable.is_empty() {
        let note = format!(
            "ports {} have no node port (allocateLoadBalancerNodePorts: false): the load \
             balancer reaches the workers through node ports only, so it cannot serve them",
            unroutable.join(", ")
        );
        t.event(
            &svc,
            EventType::Warning,
            "SyncLoadBalancerFailed",
            "EnsureLoadBalancer",
            note,
        )
        .await;
        if load_balancer::build(&t.place, &svc)
            .spec
            .and_then(|s| s.ports)
            .is_none_or(|p| p.is_empty())
        {
            release(&svc, &t).await?;
            return Ok(Action::requeue(t.resync));
        }
    }
    ensure(&svc, &t).await
}

/// Makes the management Service, puts the finalizer on the tenant Service (only then, so a
/// finalizer always has a management Service to clean up), and copies the address back.
async fn ensure(svc: &Service, t: &Tenant) -> Result<Action> {
    let desired = load_balancer::build(&t.place, svc);
    let api = Api::<Service>::namespaced(t.management.clone(), &t.place.namespace);
    let name = desired.name_any();
    let management = match api.get_opt(&name).await? {
        Some(current) if !load_balancer::differs(&desired, &current) => current,
        _ => {
            let note = format!("Ensuring load balancer {}/{name}", t.place.namespace);
            t.event(
                svc,
                EventType::Normal,
                "EnsuringLoadBalancer",
                "EnsureLoadBalancer",
                note,
            )
            .await;
            apply(&api, &desired).await?
        }
    };
    let svc = if svc.finalizers().iter().any(|f| f == FINALIZER) {
        svc.clone()
    } else {
        let mut finalizers = svc.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        set_finalizers(t, svc, finalizers).await?
    };
    let Some(ingress) = load_balancer::ingress(t.place.service_type, &management) else {
        debug!(service = %key(&svc), "the management Service has no address yet");
        return Ok(Action::requeue(WAITING));
    };
    if !load_balancer::shows(&svc, &ingress) {
        set_ingress(t, &svc, Some(&ingress)).await?;
        let addresses = addresses(&ingress);
        info!(tenant = %t.place.tenant, service = %key(&svc), %addresses, "load balancer ensured");
        let note = format!("Ensured load balancer at {addresses}");
        t.event(
            &svc,
            EventType::Normal,
            "EnsuredLoadBalancer",
            "EnsureLoadBalancer",
            note,
        )
        .await;
    }
    Ok(Action::requeue(t.resync))
}

/// Undoes what [`ensure`] did for a Service that no longer wants a load balancer (deleted,
/// retyped, switched off): the management Service goes, the address is cleared and the
/// finalizer removed. Nothing happens to a Service without the finalizer.
pub async fn release(svc: &Service, t: &Tenant) -> Result<()> {
    if !svc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let name = load_balancer::name(
        &t.place.tenant,
        &svc.namespace().unwrap_or_default(),
        &svc.name_any(),
    );
    delete_management(t, &name).await?;
    let svc = if svc.metadata.deletion_timestamp.is_none() && load_balancer::has_ingress(svc) {
        set_ingress(t, svc, None).await?
    } else {
        svc.clone()
    };
    let finalizers = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(t, &svc, finalizers).await?;
    info!(tenant = %t.place.tenant, service = %key(&svc), "load balancer deleted");
    let note = format!("Deleted load balancer {}/{name}", t.place.namespace);
    t.event(
        &svc,
        EventType::Normal,
        "DeletedLoadBalancer",
        "DeleteLoadBalancer",
        note,
    )
    .await;
    Ok(())
}

/// Deletes management Service `name`; one already gone is fine.
pub async fn delete_management(t: &Tenant, name: &str) -> Result<()> {
    let api = Api::<Service>::namespaced(t.management.clone(), &t.place.namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn tenant_api(t: &Tenant, svc: &Service) -> Api<Service> {
    Api::namespaced(t.client.clone(), &svc.namespace().unwrap_or_default())
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Replaces the tenant Service's finalizers; the resourceVersion makes a concurrent change of
/// the list fail (409, retried) instead of being lost.
async fn set_finalizers(t: &Tenant, svc: &Service, finalizers: Vec<String>) -> Result<Service> {
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": svc.resource_version(),
    }});
    Ok(tenant_api(t, svc)
        .patch(&svc.name_any(), &params(), &Patch::Merge(&patch))
        .await?)
}

/// Sets (or, for `None`, clears) the tenant Service's load-balancer addresses.
async fn set_ingress(
    t: &Tenant,
    svc: &Service,
    ingress: Option<&[LoadBalancerIngress]>,
) -> Result<Service> {
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Ok(tenant_api(t, svc)
        .patch_status(&svc.name_any(), &params(), &Patch::Merge(&patch))
        .await?)
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn addresses(ingress: &[LoadBalancerIngress]) -> String {
    ingress
        .iter()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn error_policy(svc: Arc<Service>, error: &Error, t: Arc<Tenant>) -> Action {
    warn!(tenant = %t.place.tenant, service = %key(&svc), %error, "load balancer sync failed");
    t.metrics.reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}
