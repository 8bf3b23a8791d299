//! Reads: how to reach a DataStore, and which DataStore a tenant uses.

use super::DEFAULT_ANNOTATION;
use super::build::{ManagedNames, ManagedPki};
use crate::api::{DataStore, ManagedDataStore, SecretKeyRef, TenantControlPlane};
use crate::etcd::Connection;
use crate::pki::KeyPairPem;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::Api;
use std::sync::Arc;

async fn secret_key(client: &kube::Client, r: &SecretKeyRef, field: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::Invalid {
            field: field.into(),
            reason: format!("Secret {}/{} does not exist", r.namespace, r.name),
        })?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .ok_or_else(|| Error::Invalid {
            field: field.into(),
            reason: format!("Secret {}/{} has no key {}", r.namespace, r.name, r.key),
        })?;
    String::from_utf8(value.0).map_err(|_| Error::Invalid {
        field: field.into(),
        reason: format!("key {} is not PEM text", r.key),
    })
}

async fn key_pair_from_secret(
    client: &kube::Client,
    namespace: &str,
    name: String,
) -> Result<Option<KeyPairPem>> {
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&name)
        .await?
    else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Ok(match (text("tls.crt"), text("tls.key")) {
        (Some(cert), Some(key)) => Some(KeyPairPem { cert, key }),
        _ => None,
    })
}

/// Reads what is needed to use `ds` as root.
pub async fn connection(client: &kube::Client, ds: &DataStore) -> Result<Connection> {
    if let Some(ext) = &ds.spec.external {
        let ca = &ext.certificate_authority;
        let root = &ext.root_client_certificate;
        return Ok(Connection {
            endpoints: ext.endpoints.clone(),
            ca: KeyPairPem {
                cert: secret_key(
                    client,
                    &ca.certificate,
                    "spec.external.certificateAuthority.certificate",
                )
                .await?,
                key: secret_key(
                    client,
                    &ca.private_key,
                    "spec.external.certificateAuthority.privateKey",
                )
                .await?,
            },
            root: KeyPairPem {
                cert: secret_key(
                    client,
                    &root.certificate,
                    "spec.external.rootClientCertificate.certificate",
                )
                .await?,
                key: secret_key(
                    client,
                    &root.private_key,
                    "spec.external.rootClientCertificate.privateKey",
                )
                .await?,
            },
        });
    }
    let managed = ds
        .spec
        .managed
        .as_ref()
        .expect("admission requires managed or external");
    let names = ManagedNames::new(ds, managed);
    let missing = |what: &str| {
        Error::DataStore(format!(
            "managed DataStore {} has no {what} yet",
            ds.name_any()
        ))
    };
    let ca = key_pair_from_secret(client, &names.namespace, names.ca_secret())
        .await?
        .ok_or_else(|| missing("CA"))?;
    let root = key_pair_from_secret(client, &names.namespace, names.root_secret())
        .await?
        .ok_or_else(|| missing("root client certificate"))?;
    Ok(Connection {
        endpoints: vec![names.client_endpoint()],
        ca,
        root,
    })
}

/// The DataStore a tenant uses: spec, else the one recorded in status, else the one annotated
/// default among `all` (from the DataStore store: no LIST per reconcile).
pub fn resolve_name(tcp: &TenantControlPlane, all: &[Arc<DataStore>]) -> Result<String> {
    if let Some(name) = tcp
        .spec
        .data_store
        .clone()
        .or_else(|| tcp.status.as_ref().and_then(|s| s.data_store.clone()))
    {
        return Ok(name);
    }
    let mut defaults: Vec<String> = all
        .iter()
        .filter(|ds| ds.annotations().get(DEFAULT_ANNOTATION).map(String::as_str) == Some("true"))
        .map(|ds| ds.name_any())
        .collect();
    defaults.sort();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Invalid {
            field: "spec.dataStore".into(),
            reason: format!("is unset and no DataStore is annotated {DEFAULT_ANNOTATION}=\"true\""),
        }),
        many => Err(Error::Invalid {
            field: "spec.dataStore".into(),
            reason: format!(
                "is unset and several DataStores are marked default: {}",
                many.join(", ")
            ),
        }),
    }
}

/// Reads what the managed etcd has: its namespace must exist (it is the user's to create, with
/// the Pod Security level they want: Orrery needs no right to create namespaces), and its key
/// pairs.
pub async fn managed_pki(
    client: &kube::Client,
    ds: &DataStore,
    managed: &ManagedDataStore,
) -> Result<ManagedPki> {
    let names = ManagedNames::new(ds, managed);
    if Api::<Namespace>::all(client.clone())
        .get_metadata_opt(&names.namespace)
        .await?
        .is_none()
    {
        return Err(Error::Invalid {
            field: "spec.managed.namespace".into(),
            reason: format!(
                "namespace {} does not exist; create it first",
                names.namespace
            ),
        });
    }
    let read = |name: String| key_pair_from_secret(client, &names.namespace, name);
    let (ca, server, root) = futures::try_join!(
        read(names.ca_secret()),
        read(names.server_secret()),
        read(names.root_secret()),
    )?;
    Ok(ManagedPki { ca, server, root })
}
