//! One tenant's cloud controller: what it works with, and the task that runs its parts against
//! the tenant's API until it is stopped.

use super::load_balancer::Management;
use super::{nodes, release, services};
use crate::Result;
use crate::addons::csi;
use crate::addons::csi::controller::{ControllerService, Limits};
use crate::addons::csi::kubevirt::KubeVirtInfra;
use crate::addons::health::{CloudReport, Health};
use crate::api::TenantControlPlane;
use crate::apply::owner_reference;
use crate::context::Context;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The reporting controller of the Events in the tenant, named like the upstream component.
const REPORTER: &str = "orrery-cloud-controller";

/// Everything one tenant's cloud controller works with.
pub struct Tenant {
    /// The operator's client of the management cluster (VMIs, Nodes, Services).
    pub management: kube::Client,
    /// A client of the tenant apiserver with the tenant's admin kubeconfig.
    pub client: kube::Client,
    pub place: Management,
    /// Events on the tenant's Services, published in the tenant.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How long a converged object waits before it is looked at again.
    pub resync: Duration,
    /// Where the controller reports that it runs, for the tenant's status.
    pub health: Arc<Health>,
    pub key: ObjectRef<TenantControlPlane>,
    /// Whether the cloud controller's parts run (Nodes, load balancers).
    pub cloud_controller: bool,
    /// The CSI driver's controller side, when the tenant has the driver.
    pub csi: Option<Arc<csi::runner::Driver<KubeVirtInfra>>>,
}

impl Tenant {
    /// The cloud controller of `tcp`, talking to it with `kubeconfig`. Nothing is sent yet.
    pub async fn connect(
        ctx: &Context,
        tcp: &TenantControlPlane,
        kubeconfig: &str,
    ) -> Result<Self> {
        let client = crate::tenant::apply::watching_client(kubeconfig).await?;
        let owner = OwnerReference {
            controller: None,
            block_owner_deletion: None,
            ..owner_reference(tcp)
        };
        let csi = tcp.spec.addons.csi.enabled.then(|| {
            let infra = KubeVirtInfra {
                client: ctx.client.clone(),
                namespace: tcp.namespace().unwrap_or_default(),
                tenant: tcp.name_any(),
                owner: owner.clone(),
                storage_class: tcp.spec.addons.csi.storage_class_name.clone(),
            };
            let scope = tcp.uid().unwrap_or_default();
            Arc::new(csi::runner::Driver {
                client: client.clone(),
                controller: ControllerService::new(Arc::new(infra), scope, Limits::default()),
                recorder: Recorder::new(client.clone(), Reporter::from(csi::runner::REPORTER)),
                metrics: ctx.metrics.clone(),
                resync: ctx.settings.resync,
                tenant: tcp.name_any(),
            })
        });
        Ok(Self {
            management: ctx.client.clone(),
            recorder: Recorder::new(client.clone(), Reporter::from(REPORTER)),
            client,
            place: Management {
                tenant: tcp.name_any(),
                namespace: tcp.namespace().unwrap_or_default(),
                owner,
                service_type: tcp.spec.addons.cloud_controller.load_balancer_service_type,
            },
            metrics: ctx.metrics.clone(),
            resync: ctx.settings.resync,
            health: ctx.addons.clone(),
            key: ObjectRef::from_obj(tcp),
            cloud_controller: tcp.spec.addons.cloud_controller.enabled,
            csi,
        })
    }

    /// Publishes an Event about tenant Service `svc`; a failure to publish is logged only.
    pub async fn event(
        &self,
        svc: &Service,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(tenant = %self.place.tenant, error = %e, reason, "cannot publish an event in the tenant");
        }
    }
}

/// Runs the tenant's cloud until `stop`: the cloud controller (Node initialisation,
/// LoadBalancer Services, and a periodic sweep of management Services whose tenant Service is
/// gone) and the CSI driver's controller side, each when switched on.
pub async fn run(t: Arc<Tenant>, stop: CancellationToken) {
    let csi = {
        let (driver, stop) = (t.csi.clone(), stop.clone());
        async move {
            if let Some(driver) = driver {
                csi::runner::run(driver, stop).await;
            }
        }
    };
    if !t.cloud_controller {
        // The driver's controllers start watching at once: nothing to wait for.
        t.health.report_cloud(&t.key, Some(CloudReport::Running));
        csi.await;
        return;
    }
    info!(tenant = %t.place.tenant, namespace = %t.place.namespace, "cloud controller started");
    let (services, store, listed) = services::controller(&t);
    tokio::join!(
        services::run(services, t.clone(), stop.clone()),
        nodes::run(t.clone(), stop.clone()),
        report_running(t.clone(), listed.clone(), stop.clone()),
        sweep(t.clone(), store, listed, stop.clone()),
        csi,
    );
    info!(tenant = %t.place.tenant, namespace = %t.place.namespace, "cloud controller stopped");
}

/// Reports the controller running once the tenant's Services are listed.
async fn report_running(
    t: Arc<Tenant>,
    mut listed: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        ready = listed.wait_for(|l| *l) => if ready.is_ok() {
            t.health.report_cloud(&t.key, Some(CloudReport::Running));
        },
    }
}

/// Once the tenant's Services are listed, and then at every resync: deletes the management
/// Services no tenant Service wants (deleted while no runner watched, or before it got the
/// finalizer).
async fn sweep(
    t: Arc<Tenant>,
    store: Store<Service>,
    mut listed: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        ready = listed.wait_for(|l| *l) => if ready.is_err() { return },
    }
    loop {
        match release::sweep(&t, &store).await {
            Ok(0) => {}
            Ok(n) => {
                info!(tenant = %t.place.tenant, deleted = n, "deleted management Services of tenant Services that are gone")
            }
            Err(e) => {
                warn!(tenant = %t.place.tenant, error = %e, "sweep of management Services failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(t.resync) => {}
        }
    }
}
