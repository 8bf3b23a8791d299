//! The kube-proxy add-on: a privileged DaemonSet that programs Service routing on every node,
//! configured from the `kube-proxy` ConfigMap that `kubeadm join` also reads.

use super::pod::{k8s_app, selector, template, tolerate_everything};
use super::rbac::{cluster_role_binding, service_account_subject};
use super::{KUBE_SYSTEM, TenantObjects, meta};
use crate::api::AddonSpec;
use crate::config::kube_proxy::{ClientConnection, KubeProxyConfiguration, ProxyMode};
use crate::config::{self, ComponentConfig};
use crate::podspec::field_env;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, HostPathVolumeSource, PodSpec, SecurityContext,
    ServiceAccount, Volume, VolumeMount,
};
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use std::collections::BTreeMap;

/// Where the ConfigMap is mounted.
const CONFIG_DIR: &str = "/var/lib/kube-proxy";
/// The pod's service account credentials, which kube-proxy's kubeconfig points at.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The spec's image or kube-proxy of the tenant's Kubernetes version.
pub(super) fn image(addon: &AddonSpec, registry: &str, version: &str) -> String {
    addon
        .image
        .clone()
        .unwrap_or_else(|| format!("{registry}/kube-proxy:{version}"))
}

/// kube-proxy's objects; it reaches the apiserver at `endpoint`, pods live in `pod_cidr`.
pub(super) fn objects(o: &mut TenantObjects, image: &str, endpoint: &str, pod_cidr: &str) {
    o.service_accounts.push(ServiceAccount {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:node-proxier",
        "system:node-proxier",
        vec![service_account_subject("kube-proxy", KUBE_SYSTEM)],
    ));
    o.config_maps.push(ConfigMap {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([
            ("config.conf".to_string(), configuration(pod_cidr)),
            ("kubeconfig.conf".to_string(), kubeconfig(endpoint)),
        ])),
        ..Default::default()
    });
    o.daemon_sets.push(daemon_set(image));
}

fn configuration(pod_cidr: &str) -> String {
    KubeProxyConfiguration {
        bind_address: "0.0.0.0".into(),
        client_connection: ClientConnection {
            kubeconfig: format!("{CONFIG_DIR}/kubeconfig.conf"),
        },
        cluster_cidr: pod_cidr.into(),
        mode: ProxyMode::Iptables,
    }
    .to_yaml()
}

/// kube-proxy authenticates with its pod's service-account token, trusting the cluster CA that
/// comes with it.
fn kubeconfig(endpoint: &str) -> String {
    const NAME: &str = "default";
    config::to_yaml(&Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(format!("https://{endpoint}")),
                certificate_authority: Some(format!("{SERVICE_ACCOUNT_DIR}/ca.crt")),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                namespace: Some(NAME.into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(NAME.into()),
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(AuthInfo {
                token_file: Some(format!("{SERVICE_ACCOUNT_DIR}/token")),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        ..Kubeconfig::default()
    })
}

fn daemon_set(image: &str) -> DaemonSet {
    let labels = k8s_app("kube-proxy");
    DaemonSet {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        spec: Some(DaemonSetSpec {
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    service_account_name: Some("kube-proxy".into()),
                    host_network: Some(true),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(tolerate_everything()),
                    node_selector: Some(BTreeMap::from([(
                        "kubernetes.io/os".to_string(),
                        "linux".to_string(),
                    )])),
                    containers: vec![container(image)],
                    volumes: Some(volumes()),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(image: &str) -> Container {
    let mount = |name: &str, path: &str, read_only: Option<bool>| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        ..Default::default()
    };
    Container {
        name: "kube-proxy".into(),
        image: Some(image.into()),
        command: Some(vec![
            "kube-proxy".into(),
            format!("--config={CONFIG_DIR}/config.conf"),
            "--hostname-override=$(NODE_NAME)".into(),
        ]),
        env: Some(vec![field_env("NODE_NAME", "spec.nodeName")]),
        // kube-proxy programs the node's iptables: it is a privileged node agent.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("kube-proxy", CONFIG_DIR, Some(true)),
            mount("xtables-lock", "/run/xtables.lock", None),
            mount("lib-modules", "/lib/modules", Some(true)),
        ]),
        ..Default::default()
    }
}

/// The ConfigMap, and the node's iptables lock and kernel modules.
fn volumes() -> Vec<Volume> {
    let host_path = |name: &str, path: &str, type_: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    };
    vec![
        Volume {
            name: "kube-proxy".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "kube-proxy".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path("xtables-lock", "/run/xtables.lock", "FileOrCreate"),
        host_path("lib-modules", "/lib/modules", ""),
    ]
}
