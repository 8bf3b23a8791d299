//! The CoreDNS add-on: cluster DNS behind the `kube-dns` Service, as kubeadm deploys it.

use super::pod::{k8s_app, selector, template};
use super::rbac::{cluster_role_binding, rule, service_account_subject};
use super::{KUBE_SYSTEM, TenantObjects, meta};
use crate::api::AddonSpec;
use crate::podspec::{restricted_container, restricted_pod};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    KeyToPath, PodSecurityContext, PodSpec, Probe, Service, ServiceAccount, ServicePort,
    ServiceSpec, Sysctl, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The CoreDNS release for each supported minor, as that minor's kubeadm deploys it (its
/// constant CoreDNSVersion); a test checks that every supported minor has one.
pub const RELEASES: [(u32, &str); 4] = [
    (34, "v1.12.1"),
    (35, "v1.13.1"),
    (36, "v1.14.2"),
    (37, "v1.14.6"),
];
/// DNS over UDP and TCP, and Prometheus metrics: (name, port, protocol).
const PORTS: [(&str, i32, &str); 3] = [
    ("dns", 53, "UDP"),
    ("dns-tcp", 53, "TCP"),
    ("metrics", 9153, "TCP"),
];

/// The spec's image or the upstream CoreDNS release for a tenant running `version`.
pub(super) fn image(addon: &AddonSpec, registry: &str, version: &str) -> String {
    addon.image.clone().unwrap_or_else(|| {
        let release = crate::api::release_for(&RELEASES, version);
        format!("{registry}/coredns/coredns:{release}")
    })
}

/// CoreDNS's objects, serving `domain` at `dns_ip`.
pub(super) fn objects(o: &mut TenantObjects, image: &str, dns_ip: &str, domain: &str) {
    o.service_accounts.push(ServiceAccount {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    o.cluster_roles.push(cluster_role());
    o.cluster_role_bindings.push(cluster_role_binding(
        "system:coredns",
        "system:coredns",
        vec![service_account_subject("coredns", KUBE_SYSTEM)],
    ));
    o.config_maps.push(ConfigMap {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([("Corefile".to_string(), corefile(domain))])),
        ..Default::default()
    });
    o.deployments.push(deployment(image));
    o.services.push(service(dns_ip));
}

/// The Corefile. It is CoreDNS's own block syntax, not YAML or JSON, so a template it stays.
fn corefile(domain: &str) -> String {
    format!(
        ".:53 {{\n    errors\n    health {{\n       lameduck 5s\n    }}\n    ready\n    kubernetes {domain} in-addr.arpa ip6.arpa {{\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }}\n    prometheus :9153\n    forward . /etc/resolv.conf {{\n       max_concurrent 1000\n    }}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n"
    )
}

/// CoreDNS watches Services, endpoints, pods and namespaces; it writes nothing.
fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta("system:coredns", None),
        rules: Some(vec![
            rule(
                &[""],
                &["endpoints", "services", "pods", "namespaces"],
                &[],
                &["list", "watch"],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &[],
                &["list", "watch"],
            ),
        ]),
        ..Default::default()
    }
}

fn deployment(image: &str) -> Deployment {
    let labels = k8s_app("kube-dns");
    Deployment {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    service_account_name: Some("coredns".into()),
                    priority_class_name: Some("system-cluster-critical".into()),
                    tolerations: Some(vec![Toleration {
                        key: Some("CriticalAddonsOnly".into()),
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    containers: vec![container(image)],
                    volumes: Some(vec![config_volume()]),
                    dns_policy: Some("Default".into()),
                    // A non-root process binds port 53 through this namespaced, safe sysctl;
                    // the capability below only helps images whose binary carries it as a file
                    // capability.
                    security_context: Some(PodSecurityContext {
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".into(),
                            value: "53".into(),
                        }]),
                        ..restricted_pod()
                    }),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(image: &str) -> Container {
    let mut security = restricted_container();
    // Binding port 53 needs this one capability.
    security.capabilities = Some(Capabilities {
        add: Some(vec!["NET_BIND_SERVICE".into()]),
        drop: Some(vec!["ALL".into()]),
    });
    Container {
        name: "coredns".into(),
        image: Some(image.into()),
        args: Some(vec!["-conf".into(), "/etc/coredns/Corefile".into()]),
        ports: Some(
            PORTS
                .iter()
                .map(|(name, port, protocol)| ContainerPort {
                    name: Some((*name).into()),
                    container_port: *port,
                    protocol: Some((*protocol).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        liveness_probe: Some(http_probe("/health", 8080)),
        readiness_probe: Some(http_probe("/ready", 8181)),
        security_context: Some(security),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: "/etc/coredns".into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The Corefile from the `coredns` ConfigMap.
fn config_volume() -> Volume {
    Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: "coredns".into(),
            items: Some(vec![KeyToPath {
                key: "Corefile".into(),
                path: "Corefile".into(),
                mode: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `kube-dns` Service at the cluster DNS address.
fn service(dns_ip: &str) -> Service {
    Service {
        metadata: meta("kube-dns", Some(KUBE_SYSTEM)),
        spec: Some(ServiceSpec {
            cluster_ip: Some(dns_ip.into()),
            selector: Some(k8s_app("kube-dns")),
            ports: Some(
                PORTS
                    .iter()
                    .map(|(name, port, protocol)| ServicePort {
                        name: Some((*name).into()),
                        port: *port,
                        protocol: Some((*protocol).into()),
                        target_port: Some(IntOrString::Int(*port)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}
