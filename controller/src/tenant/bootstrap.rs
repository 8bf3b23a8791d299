//! What `kubeadm init` leaves in a cluster for `kubeadm join`: the `kubeadm-config`,
//! `kubelet-config` and `cluster-info` ConfigMaps and the bootstrap-token RBAC.

use super::rbac::{cluster_role_binding, group, role_with_binding, rule, user};
use super::{BOOTSTRAPPERS, BootstrapInputs, KUBE_PUBLIC, KUBE_SYSTEM, TenantObjects, meta};
use crate::api::TenantControlPlane;
use crate::config::kubeadm::{ClusterConfiguration, Networking};
use crate::config::kubelet::{
    Enabled, KubeletAuthentication, KubeletAuthorization, KubeletAuthorizationMode,
    KubeletConfiguration, KubeletX509Authentication,
};
use crate::config::{self, ComponentConfig};
use crate::{Error, Result};
use base64::Engine as _;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::config::{Cluster, Kubeconfig, NamedCluster, Preferences};
use std::collections::BTreeMap;
use std::net::IpAddr;

const PKI_DIR: &str = "/etc/kubernetes/pki";

/// The bootstrap objects, `dns_ip` being the cluster DNS Service address.
pub(super) fn objects(
    tcp: &TenantControlPlane,
    inputs: &BootstrapInputs,
    dns_ip: &str,
) -> TenantObjects {
    let mut o = TenantObjects {
        config_maps: config_maps(tcp, inputs, dns_ip),
        ..Default::default()
    };
    token_rbac(&mut o);
    configmap_readers(&mut o);
    o
}

/// The tenth address of the service CIDR, kubeadm's default for the DNS Service.
pub fn default_dns_ip(service_cidr: &str) -> Result<IpAddr> {
    let net: ipnet::IpNet = service_cidr
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|_| Error::Invalid {
            field: "spec.network.serviceCIDR".into(),
            reason: format!("{service_cidr} is not a CIDR"),
        })?;
    // kubeadm takes the network address plus ten.
    let too_small = || Error::Invalid {
        field: "spec.network.serviceCIDR".into(),
        reason: "is too small to hold a DNS Service IP".into(),
    };
    if net.hosts().nth(10).is_none() {
        return Err(too_small());
    }
    Ok(match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 10).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 10).into()),
    })
}

/// The `cluster-info` kubeconfig: the CA and the server, no credentials. The controller-manager's
/// bootstrapsigner adds a JWS signature per bootstrap token, which `kubeadm join` verifies.
pub fn cluster_info_kubeconfig(endpoint: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    config::to_yaml(&Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        // kubeadm writes an unnamed cluster, no context and no user.
        clusters: vec![NamedCluster {
            name: String::new(),
            cluster: Some(Cluster {
                server: Some(format!("https://{endpoint}")),
                certificate_authority_data: Some(ca),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        current_context: Some(String::new()),
        preferences: Some(Preferences::default()),
        ..Kubeconfig::default()
    })
}

/// kubeadm's view of the cluster, read by `kubeadm join`.
fn cluster_configuration(tcp: &TenantControlPlane, inputs: &BootstrapInputs) -> String {
    let net = &tcp.spec.network;
    ClusterConfiguration {
        cluster_name: tcp.metadata.name.clone().unwrap_or_default(),
        kubernetes_version: tcp.spec.version.clone(),
        control_plane_endpoint: inputs.endpoint.clone(),
        certificates_dir: PKI_DIR.into(),
        image_repository: inputs.image_registry.clone(),
        networking: Networking {
            dns_domain: net.cluster_domain.clone(),
            service_subnet: net.service_cidr.clone(),
            pod_subnet: net.pod_cidr.clone(),
        },
    }
    .to_yaml()
}

/// The kubelet configuration joining nodes take: clients authenticate with certificates of the
/// cluster CA or tokens, and the apiserver authorizes them.
fn kubelet_configuration(tcp: &TenantControlPlane, dns_ip: &str) -> String {
    KubeletConfiguration {
        authentication: KubeletAuthentication {
            anonymous: Enabled { enabled: false },
            webhook: Enabled { enabled: true },
            x509: KubeletX509Authentication {
                client_ca_file: format!("{PKI_DIR}/ca.crt"),
            },
        },
        authorization: KubeletAuthorization {
            mode: KubeletAuthorizationMode::Webhook,
        },
        cgroup_driver: "systemd".into(),
        cluster_dns: vec![dns_ip.into()],
        cluster_domain: tcp.spec.network.cluster_domain.clone(),
        rotate_certificates: true,
        server_tls_bootstrap: false,
        static_pod_path: "/etc/kubernetes/manifests".into(),
    }
    .to_yaml()
}

fn config_maps(tcp: &TenantControlPlane, inputs: &BootstrapInputs, dns_ip: &str) -> Vec<ConfigMap> {
    let cm = |name: &str, ns: &str, key: &str, value: String| ConfigMap {
        metadata: meta(name, Some(ns)),
        data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..Default::default()
    };
    vec![
        cm(
            "kubeadm-config",
            KUBE_SYSTEM,
            "ClusterConfiguration",
            cluster_configuration(tcp, inputs),
        ),
        cm(
            "kubelet-config",
            KUBE_SYSTEM,
            "kubelet",
            kubelet_configuration(tcp, dns_ip),
        ),
        cm(
            "cluster-info",
            KUBE_PUBLIC,
            "kubeconfig",
            cluster_info_kubeconfig(&inputs.endpoint, &inputs.ca_pem),
        ),
    ]
}

/// Bootstrap-token RBAC, as kubeadm sets it up.
fn token_rbac(o: &mut TenantObjects) {
    for (name, role, subject) in [
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            BOOTSTRAPPERS,
        ),
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            BOOTSTRAPPERS,
        ),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
        ("kubeadm:get-nodes", "kubeadm:get-nodes", BOOTSTRAPPERS),
        (
            "kubeadm:cluster-admins",
            "cluster-admin",
            "kubeadm:cluster-admins",
        ),
    ] {
        o.cluster_role_bindings
            .push(cluster_role_binding(name, role, vec![group(subject)]));
    }
    o.cluster_roles.push(ClusterRole {
        metadata: meta("kubeadm:get-nodes", None),
        rules: Some(vec![rule(&[""], &["nodes"], &[], &["get"])]),
        ..Default::default()
    });
}

/// Who may read which bootstrap ConfigMap.
fn configmap_readers(o: &mut TenantObjects) {
    let nodes = || vec![group(BOOTSTRAPPERS), group("system:nodes")];
    for (name, namespace, config_map, subjects) in [
        (
            "kubeadm:nodes-kubeadm-config",
            KUBE_SYSTEM,
            "kubeadm-config",
            nodes(),
        ),
        (
            "kubeadm:kubelet-config",
            KUBE_SYSTEM,
            "kubelet-config",
            nodes(),
        ),
        // `kubeadm join` reads kube-proxy's component config with the bootstrap token.
        (
            "kube-proxy",
            KUBE_SYSTEM,
            "kube-proxy",
            vec![group(BOOTSTRAPPERS)],
        ),
        (
            "kubeadm:bootstrap-signer-clusterinfo",
            KUBE_PUBLIC,
            "cluster-info",
            vec![user("system:anonymous")],
        ),
    ] {
        let reader = rule(&[""], &["configmaps"], &[config_map], &["get"]);
        let (r, b) = role_with_binding(name, namespace, vec![reader], subjects);
        o.roles.push(r);
        o.role_bindings.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_ip_is_the_tenth_service_address() {
        assert_eq!(
            default_dns_ip("10.96.0.0/16").unwrap().to_string(),
            "10.96.0.10"
        );
        assert_eq!(
            default_dns_ip("fd00:10::/108").unwrap().to_string(),
            "fd00:10::a"
        );
        assert!(default_dns_ip("10.0.0.0/30").is_err());
    }
}
