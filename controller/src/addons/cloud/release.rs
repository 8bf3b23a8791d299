//! Removing what the cloud controller made once nothing wants it: management Services whose
//! tenant Service is gone ([`sweep`]), and everything of a tenant whose cloud controller is
//! switched off ([`switch_off`]).

use super::load_balancer::{self, FINALIZER};
use super::runner::Tenant;
use super::services;
use crate::Result;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};

/// The tenant's management Services (found by their labels).
async fn management_services(t: &Tenant) -> Result<Vec<Service>> {
    let selector = load_balancer::selector(&t.place.tenant);
    Ok(
        Api::<Service>::namespaced(t.management.clone(), &t.place.namespace)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items,
    )
}

/// Deletes the management Services whose tenant Service, as the listed `tenant_services` show
/// it, is gone or no longer wants a load balancer. Returns how many went.
pub async fn sweep(t: &Tenant, tenant_services: &Store<Service>) -> Result<usize> {
    let mut deleted = 0;
    for m in management_services(t).await? {
        let wanted = load_balancer::served(&m)
            .and_then(|(ns, name)| tenant_services.get(&ObjectRef::new(&name).within(&ns)))
            .is_some_and(|svc| load_balancer::wants_load_balancer(&svc));
        if !wanted {
            services::delete_management(t, &m.name_any()).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Undoes the cloud controller of a tenant: every tenant Service it serves is released (its
/// management Service deleted, address cleared, finalizer removed), then any management Service
/// left is deleted. The management Services mark that there is something to undo, so a tenant
/// without them is not even asked. Returns how many management Services there were.
pub async fn switch_off(t: &Tenant) -> Result<usize> {
    let left = management_services(t).await?;
    if left.is_empty() {
        return Ok(0);
    }
    let tenant_services = Api::<Service>::all(t.client.clone())
        .list(&ListParams::default())
        .await?;
    for svc in tenant_services
        .iter()
        .filter(|s| s.finalizers().iter().any(|f| f == FINALIZER))
    {
        services::release(svc, t).await?;
    }
    for m in &left {
        services::delete_management(t, &m.name_any()).await?;
    }
    Ok(left.len())
}

/// The management Services of a tenant exist: [`switch_off`] has work to do. Asked before a
/// tenant client is made for it.
pub async fn anything_left(
    management: &kube::Client,
    namespace: &str,
    tenant: &str,
) -> Result<bool> {
    let selector = load_balancer::selector(tenant);
    let found = Api::<Service>::namespaced(management.clone(), namespace)
        .list_metadata(&ListParams::default().labels(&selector).limit(1))
        .await?;
    Ok(!found.items.is_empty())
}
