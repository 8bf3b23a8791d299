//! Pure checks before anything is built: a spec that cannot work, a DataStore that cannot be
//! used, and key material whose loss Orrery must not paper over.

use super::build::Names;
use super::dereference::Read;
use crate::api::TenantControlPlane;
use crate::conditions::{CERTIFICATES_READY, DATASTORE_READY};
use crate::stop::Blocked;
use kube::Resource;

/// Set to "true" on a TenantControlPlane to let Orrery make a new CA, front-proxy CA or
/// service-account key after the old one's Secret was lost.
pub const ALLOW_NEW_AUTHORITIES_ANNOTATION: &str = "orrery.dev/allow-new-authorities";

/// The DataStore named by the spec must be the one in use, and not going away.
pub fn datastore(tcp: &TenantControlPlane, read: &Read) -> Result<(), Blocked> {
    let status = tcp.status.clone().unwrap_or_default();
    if let (Some(spec), Some(recorded)) = (
        &tcp.spec.data_store,
        status
            .data_store
            .as_ref()
            .filter(|_| status.endpoint.is_some()),
    ) && spec != recorded
    {
        return Err(Blocked::until_changed(
            DATASTORE_READY,
            "DataStoreMigrationUnsupported",
            format!(
                "spec.dataStore {spec} differs from the DataStore in use, {recorded}; moving tenants between DataStores is not supported"
            ),
        ));
    }
    if read.datastore_object.meta().deletion_timestamp.is_some() {
        return Err(Blocked::waiting(
            DATASTORE_READY,
            "DataStoreDeleting",
            format!("DataStore {} is being deleted", read.datastore),
        ));
    }
    Ok(())
}

/// A CA, front-proxy CA or service-account key whose Secret is gone after Orrery issued the
/// tenant's certificates is not replaced silently: every kubeconfig, node and service-account
/// token trusting the old one would break. The user restores the Secret, or allows new ones.
pub fn authorities(tcp: &TenantControlPlane, read: &Read) -> Result<(), Blocked> {
    let allowed = tcp
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_NEW_AUTHORITIES_ANNOTATION))
        .is_some_and(|v| v == "true");
    // The leaf certificates exist only once the authorities did.
    if allowed || read.pki.certs.is_none() {
        return Ok(());
    }
    let names = Names::new(tcp);
    let lost: Vec<String> = [
        (read.pki.ca.is_none(), names.ca()),
        (read.pki.front_proxy_ca.is_none(), names.front_proxy_ca()),
        (read.pki.service_account.is_none(), names.service_account()),
    ]
    .into_iter()
    .filter_map(|(missing, name)| missing.then_some(name))
    .collect();
    if lost.is_empty() {
        return Ok(());
    }
    Err(Blocked::until_changed(
        CERTIFICATES_READY,
        "AuthorityMissing",
        format!(
            "Secret {} was deleted after the tenant's certificates were issued; Orrery does not make a new one, because every client, node and token that trusts the old one would stop working. Restore it from a backup, or annotate the TenantControlPlane {ALLOW_NEW_AUTHORITIES_ANNOTATION}=true to issue new ones (then hand out new kubeconfigs and rejoin the nodes)",
            lost.join(", ")
        ),
    ))
}
