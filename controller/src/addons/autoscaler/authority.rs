//! The certificates of the autoscaler API: a CA of its own, the server's certificate for the
//! Service's names, and one client certificate per tenant naming it
//! ([`super::identity::Tenant`]). The CA and the server's key pair live in Secrets in the
//! operator's namespace; every replica serving the API makes or reads the same ones.
//!
//! Made at most once: a Secret is created, and a replica that loses the race reads the winner's.
//! The server certificate is renewed when a third of its life is left; the CA never silently.

use super::ApiEndpoint;
use super::identity::Tenant;
use crate::Result;
use crate::apply::MANAGED_BY;
use crate::pki::{self, CertProfile, CertUsage, KeyPairPem, TLS_CRT, TLS_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tracing::info;

/// The organization of tenants' client certificates.
pub const CLIENT_ORGANIZATION: &str = "orrery.dev:cluster-autoscaler";
/// The CA bundle key next to a leaf's `tls.crt` and `tls.key`.
pub const CA_CRT: &str = "ca.crt";
/// The component label of the API's Secrets.
const COMPONENT: &str = "autoscaler-api";

/// Name of the Secret holding the CA.
pub fn ca_secret(api: &ApiEndpoint) -> String {
    format!("{}-ca", api.service)
}

/// Name of the Secret holding the server's key pair.
pub fn server_secret(api: &ApiEndpoint) -> String {
    format!("{}-server", api.service)
}

/// The server certificate: every name the Service answers to.
pub fn server_profile(api: &ApiEndpoint) -> CertProfile {
    CertProfile {
        common_name: api.host(),
        organizations: Vec::new(),
        dns_names: api.dns_names(),
        ip_addresses: Vec::new(),
        usage: CertUsage::Server,
        validity: pki::LEAF_VALIDITY,
    }
}

/// The client certificate of `tenant`'s autoscaler.
pub fn client_profile(tenant: &Tenant) -> CertProfile {
    CertProfile::client(
        &tenant.common_name(),
        &[CLIENT_ORGANIZATION],
        pki::LEAF_VALIDITY,
    )
}

/// The key pair in a Secret's `tls.crt` and `tls.key`, if both are there.
pub fn key_pair(secret: &Secret) -> Option<KeyPairPem> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    Some(KeyPairPem {
        cert: text(TLS_CRT)?,
        key: text(TLS_KEY)?,
    })
}

/// A `kubernetes.io/tls` Secret of the API holding `pair`, with the CA bundle when given.
fn tls_secret(api: &ApiEndpoint, name: String, pair: &KeyPairPem, ca: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (
            TLS_CRT.to_string(),
            ByteString(pair.cert.clone().into_bytes()),
        ),
        (
            TLS_KEY.to_string(),
            ByteString(pair.key.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = ca {
        data.insert(CA_CRT.into(), ByteString(ca.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(api.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                ("app.kubernetes.io/component".into(), COMPONENT.into()),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Creates `secret`, or returns the one that exists already (another replica's).
async fn create_or_read(api: &Api<Secret>, secret: &Secret) -> Result<Secret> {
    match api.create(&PostParams::default(), secret).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            Ok(api.get(name).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The API's CA, made now if its Secret does not exist. An unusable one is an error: replacing
/// it would cut off every tenant's autoscaler, so a human decides (deleting the Secret makes a
/// new CA, and new client certificates follow).
pub async fn ensure_ca(client: &kube::Client, api: &ApiEndpoint) -> Result<KeyPairPem> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &api.namespace);
    let name = ca_secret(api);
    let secret = match secrets.get_opt(&name).await? {
        Some(s) => s,
        None => {
            let ca = pki::generate_ca("orrery cluster-autoscaler API", pki::CA_VALIDITY)?;
            let made = create_or_read(&secrets, &tls_secret(api, name.clone(), &ca, None)).await?;
            info!(secret = %name, namespace = %api.namespace, "autoscaler API CA ready");
            made
        }
    };
    key_pair(&secret).ok_or_else(|| crate::Error::Invalid {
        field: format!("Secret {}/{name}", api.namespace),
        reason: "it lacks tls.crt or tls.key".into(),
    })
}

/// The server's key pair, issued by `ca` when the Secret lacks a valid one. A replica that finds
/// the Secret changed under it takes the other's certificate when that one is valid.
pub async fn ensure_server(
    client: &kube::Client,
    api: &ApiEndpoint,
    ca: &KeyPairPem,
    now: SystemTime,
) -> Result<KeyPairPem> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &api.namespace);
    let name = server_secret(api);
    let profile = server_profile(api);
    let current = secrets.get_opt(&name).await?;
    if let Some(pair) = current.as_ref().and_then(key_pair)
        && pki::is_valid_for(&pair, ca, &profile, now)
    {
        return Ok(pair);
    }
    let pair = pki::issue(ca, &profile, now)?;
    let mut wanted = tls_secret(api, name.clone(), &pair, Some(&ca.cert));
    let written = match current {
        None => create_or_read(&secrets, &wanted).await?,
        Some(old) => {
            wanted.metadata.resource_version = old.metadata.resource_version;
            match secrets
                .replace(&name, &PostParams::default(), &wanted)
                .await
            {
                Ok(s) => s,
                Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    match key_pair(&written) {
        Some(pair) if pki::is_valid_for(&pair, ca, &profile, now) => {
            info!(secret = %name, "autoscaler API server certificate issued");
            Ok(pair)
        }
        _ => Err(crate::Error::Pending(format!(
            "Secret {}/{name} was changed while its certificate was renewed",
            api.namespace
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> ApiEndpoint {
        ApiEndpoint {
            service: "orrery-autoscaler".into(),
            namespace: "orrery-system".into(),
            port: 8443,
        }
    }

    #[test]
    fn the_server_certificate_names_the_service_and_a_client_names_its_tenant() {
        let server = server_profile(&api());
        assert_eq!(server.common_name, "orrery-autoscaler.orrery-system.svc");
        assert_eq!(
            server.dns_names,
            [
                "orrery-autoscaler",
                "orrery-autoscaler.orrery-system",
                "orrery-autoscaler.orrery-system.svc",
                "orrery-autoscaler.orrery-system.svc.cluster.local",
            ]
        );
        assert_eq!(server.usage, CertUsage::Server);
        let client = client_profile(&Tenant::new("tenants", "demo"));
        assert_eq!(client.common_name, "tenants/demo");
        assert_eq!(client.organizations, [CLIENT_ORGANIZATION]);
        assert_eq!(client.usage, CertUsage::Client);
        assert_eq!(ca_secret(&api()), "orrery-autoscaler-ca");
        assert_eq!(server_secret(&api()), "orrery-autoscaler-server");
    }

    #[test]
    fn a_key_pair_is_read_back_from_its_secret() {
        let ca = pki::generate_ca("t", std::time::Duration::from_secs(60)).unwrap();
        let secret = tls_secret(&api(), "s".into(), &ca, Some("bundle"));
        assert_eq!(key_pair(&secret), Some(ca));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            secret.data.unwrap().get(CA_CRT).map(|b| b.0.clone()),
            Some(b"bundle".to_vec())
        );
        assert_eq!(key_pair(&Secret::default()), None);
    }
}
