//! Clients for the tenant apiserver, and sending the tenant objects to it (removing the ones no
//! longer wanted).

use super::{ADDON_LABEL, LABEL_MANAGED, TenantObjects};
use crate::Result;
use crate::api::SecretRef;
use crate::children::Children;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use kube::api::Api;
use std::time::Duration;

/// A client for the tenant apiserver from the admin kubeconfig, with short timeouts so an
/// unreachable tenant does not hold a reconcile.
pub async fn client(kubeconfig: &str) -> Result<kube::Client> {
    let mut config = config(kubeconfig).await?;
    config.read_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

/// A client for the tenant apiserver that can hold watches open: a read timeout just above the
/// 290 s after which the watcher asks the apiserver to end each watch.
pub async fn watching_client(kubeconfig: &str) -> Result<kube::Client> {
    let mut config = config(kubeconfig).await?;
    config.read_timeout = Some(Duration::from_secs(295));
    Ok(kube::Client::try_from(config)?)
}

async fn config(kubeconfig: &str) -> Result<kube::Config> {
    let invalid = |e: &dyn std::fmt::Display| crate::Error::Invalid {
        field: "admin kubeconfig".into(),
        reason: e.to_string(),
    };
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| invalid(&e))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| invalid(&e))?;
    config.connect_timeout = Some(Duration::from_secs(3));
    Ok(config)
}

/// A tenant kubeconfig from a Secret of the management cluster (`None`: the Secret or the key
/// is missing).
pub async fn kubeconfig_in(
    management: &kube::Client,
    namespace: &str,
    secret: &SecretRef,
) -> Result<Option<String>> {
    let found = Api::<Secret>::namespaced(management.clone(), namespace)
        .get_opt(&secret.name)
        .await?;
    Ok(found
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&secret.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// Applies every object (server-side apply; drift is undone on the next reconcile), cluster-scoped
/// ones first so bindings never point at missing roles for long; then deletes the objects of a
/// part that is switched off. Returns how many objects are in place and how many were removed.
pub async fn apply_and_prune(
    tenant: &kube::Client,
    objects: &TenantObjects,
) -> Result<(usize, usize)> {
    let selector = format!("{}={},{ADDON_LABEL}", LABEL_MANAGED.0, LABEL_MANAGED.1);
    let mut children = Children::new(tenant.clone(), selector, None);
    children.apply_all(&objects.cluster_roles).await?;
    children.apply_all(&objects.cluster_role_bindings).await?;
    children.apply_all(&objects.service_accounts).await?;
    children.apply_all(&objects.roles).await?;
    children.apply_all(&objects.role_bindings).await?;
    children.apply_all(&objects.config_maps).await?;
    children.apply_all(&objects.services).await?;
    children.apply_all(&objects.deployments).await?;
    children.apply_all(&objects.daemon_sets).await?;
    children.apply_all(&objects.csi_drivers).await?;
    children.apply_all(&objects.storage_classes).await?;
    // Workloads first, so nothing runs on with its permissions gone.
    let mut pruned = 0;
    pruned += children.prune::<StorageClass>(None).await?.len();
    pruned += children.prune::<CSIDriver>(None).await?.len();
    pruned += children.prune::<DaemonSet>(None).await?.len();
    pruned += children.prune::<Deployment>(None).await?.len();
    pruned += children.prune::<Service>(None).await?.len();
    pruned += children.prune::<ConfigMap>(None).await?.len();
    pruned += children.prune::<RoleBinding>(None).await?.len();
    pruned += children.prune::<Role>(None).await?.len();
    pruned += children.prune::<ServiceAccount>(None).await?.len();
    pruned += children.prune::<ClusterRoleBinding>(None).await?.len();
    pruned += children.prune::<ClusterRole>(None).await?.len();
    Ok((children.len(), pruned))
}
