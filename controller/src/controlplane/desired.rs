//! The build step (pure): from the spec and what was read, the tenant's PKI and every object the
//! management cluster should hold for it.

use super::build::{self, DeploymentInputs, Names};
use super::dereference::Read;
use crate::api::TenantControlPlane;
use crate::context::Settings;
use crate::etcd::{etcd_prefix, etcd_user};
use crate::pki::{self, DesiredPki, PkiError, TenantPkiSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Where the tenant apiserver is reached, once its Service has an address.
#[derive(Clone, Debug, PartialEq)]
pub struct Exposure {
    /// `host:port` that users and workers use.
    pub endpoint: String,
    /// The Service's IPs (load balancer first), for the serving certificate.
    pub service_ips: Vec<IpAddr>,
}

/// Everything the management cluster should hold for a tenant, besides its Service.
pub struct Desired {
    pub pki: DesiredPki,
    pub secrets: Vec<Secret>,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// Issues or keeps the tenant's certificates and builds the objects that carry and use them.
pub fn desired(
    tcp: &TenantControlPlane,
    settings: &Settings,
    read: &Read,
    exposure: &Exposure,
    now: SystemTime,
) -> Result<Desired, PkiError> {
    let pki = pki::reconcile_pki(
        &pki_spec(tcp, exposure),
        &read.pki,
        &read.connection.ca,
        now,
    )?;
    let names = Names::new(tcp);
    let config_map = build::config_map(tcp);
    let config_hashes = BTreeMap::from([
        (names.ca(), crate::hash::of_map(&pki.ca)),
        (
            names.service_account(),
            crate::hash::of_map(&pki.service_account),
        ),
        (names.certs(), crate::hash::of_map(&pki.certs)),
        (
            names.kubeconfigs(),
            crate::hash::of_map(&pki.component_kubeconfigs),
        ),
        (
            names.config(),
            crate::hash::of_map(&config_map.data.clone().unwrap_or_default()),
        ),
    ]);
    let inputs = DeploymentInputs {
        images: build::images(tcp, settings),
        datastore_endpoints: read.connection.endpoints.clone(),
        etcd_prefix: etcd_prefix(&tcp.namespace().unwrap_or_default(), &names.tenant),
        advertise_address: exposure.service_ips.first().map(ToString::to_string),
        config_hashes,
    };
    Ok(Desired {
        secrets: secrets(tcp, &pki, read.user_ca),
        config_map,
        deployment: build::deployment(tcp, &inputs),
        pod_disruption_budget: build::pod_disruption_budget(tcp),
        pki,
    })
}

fn pki_spec(tcp: &TenantControlPlane, exposure: &Exposure) -> TenantPkiSpec {
    let spec = &tcp.spec;
    let names = Names::new(tcp);
    let svc = names.workload();
    let ns = tcp.namespace().unwrap_or_default();
    TenantPkiSpec {
        tenant_name: names.tenant.clone(),
        cluster_domain: spec.network.cluster_domain.clone(),
        service_cidr: spec.network.service_cidr.clone(),
        api_port: spec.network.port as u16,
        service_dns_names: vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ],
        service_ips: exposure.service_ips.clone(),
        endpoint: exposure.endpoint.clone(),
        cert_sans: spec.network.cert_sans.clone(),
        validity: Duration::from_secs(spec.certificates.validity_hours as u64 * 3600),
        renew_before: Duration::from_secs(spec.certificates.renew_before_hours as u64 * 3600),
        datastore_user: etcd_user(&ns, &names.tenant),
    }
}

/// The Secrets that hold the PKI; the user's own CA Secret is never written.
fn secrets(tcp: &TenantControlPlane, pki: &DesiredPki, user_ca: bool) -> Vec<Secret> {
    let names = Names::new(tcp);
    let tls = "kubernetes.io/tls";
    let mut wanted = vec![
        (names.front_proxy_ca(), &pki.front_proxy_ca, tls),
        (names.service_account(), &pki.service_account, "Opaque"),
        (names.certs(), &pki.certs, "Opaque"),
        (names.admin_kubeconfig(), &pki.admin_kubeconfig, "Opaque"),
        (names.kubeconfigs(), &pki.component_kubeconfigs, "Opaque"),
        (names.addon_kubeconfigs(), &pki.addon_kubeconfigs, "Opaque"),
    ];
    if !user_ca {
        wanted.insert(0, (names.ca(), &pki.ca, tls));
    }
    wanted
        .into_iter()
        .map(|(name, data, type_)| Secret {
            metadata: build::child_meta(tcp, name, "pki"),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            type_: Some(type_.into()),
            ..Default::default()
        })
        .collect()
}
