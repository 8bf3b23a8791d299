//! Every read of a TenantControlPlane reconcile: its DataStore (from the store) and how to reach
//! it, and the tenant's key pairs as they are now.

use super::build::Names;
use crate::Error;
use crate::api::{DataStore, TenantControlPlane};
use crate::apply::MANAGED_BY;
use crate::conditions::DATASTORE_READY;
use crate::context::Context;
use crate::datastore;
use crate::etcd::Connection;
use crate::pki::CurrentPki;
use crate::stop::{Blocked, Stop};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a reconcile found.
pub struct Read {
    /// Name of the DataStore the tenant uses.
    pub datastore: String,
    pub datastore_object: Arc<DataStore>,
    pub connection: Connection,
    pub pki: CurrentPki,
    /// The CA Secret exists and was not made by Orrery: the user's own CA, never written.
    pub user_ca: bool,
    /// The tenant's Service as it is now, if it exists.
    pub service: Option<Service>,
}

/// Reads the DataStore (it must exist and be usable) and the tenant's key pairs.
pub async fn read(tcp: &TenantControlPlane, ctx: &Context) -> Result<Read, Stop> {
    let (datastore, datastore_object) = datastore_of(tcp, ctx).await?;
    let connection = datastore::connection(&ctx.client, &datastore_object)
        .await
        .map_err(|e| match e {
            Error::Invalid { .. } | Error::DataStore(_) => Stop::from(Blocked::waiting(
                DATASTORE_READY,
                "DataStoreInvalid",
                e.to_string(),
            )),
            e => Stop::Failed(e),
        })?;
    let (pki, user_ca) = current_pki(tcp, ctx).await?;
    let service =
        Api::<Service>::namespaced(ctx.client.clone(), &tcp.namespace().unwrap_or_default())
            .get_opt(&Names::new(tcp).workload())
            .await?;
    Ok(Read {
        service,
        datastore,
        datastore_object,
        connection,
        pki,
        user_ca,
    })
}

/// The DataStore the tenant uses, from the store (no LIST per reconcile).
async fn datastore_of(
    tcp: &TenantControlPlane,
    ctx: &Context,
) -> Result<(String, Arc<DataStore>), Stop> {
    let store = &ctx.stores.datastores;
    ctx.stores.datastores_listed().await?;
    let name = datastore::resolve_name(tcp, &store.state()).map_err(|e| match e {
        Error::Invalid { field, reason } => Stop::from(Blocked::until_changed(
            DATASTORE_READY,
            "NoDataStore",
            format!("{field} {reason}"),
        )),
        e => Stop::Failed(e),
    })?;
    let Some(ds) = store.get(&ObjectRef::new(&name)) else {
        return Err(Blocked::until_changed(
            DATASTORE_READY,
            "DataStoreNotFound",
            format!("DataStore {name} does not exist"),
        )
        .into());
    };
    Ok((name, ds))
}

/// The tenant's CA, front-proxy CA, service-account key and leaf certificates as stored now.
async fn current_pki(tcp: &TenantControlPlane, ctx: &Context) -> Result<(CurrentPki, bool), Stop> {
    let names = Names::new(tcp);
    let secrets =
        Api::<Secret>::namespaced(ctx.client.clone(), &tcp.namespace().unwrap_or_default());
    let read = |name: String| {
        let secrets = secrets.clone();
        async move { secrets.get_opt(&name).await }
    };
    let (ca, front_proxy_ca, sa, certs) = futures::try_join!(
        read(names.ca()),
        read(names.front_proxy_ca()),
        read(names.service_account()),
        read(names.certs()),
    )?;
    // A CA Secret that Orrery did not create is the user's own CA: use it, never write it.
    let user_ca = ca
        .as_ref()
        .is_some_and(|s| s.labels().get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1));
    let pki = CurrentPki {
        ca: ca.map(secret_text),
        front_proxy_ca: front_proxy_ca.map(secret_text),
        service_account: sa.map(secret_text),
        certs: certs.map(secret_text),
    };
    Ok((pki, user_ca))
}

fn secret_text(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect()
}
