//! The konnectivity-server sidecar: agents in the tenant's nodes dial it, and the apiserver sends
//! cluster traffic to it over a Unix socket in a shared emptyDir.

use super::container::{args, kubeconfig, mount, pki, resources, writable_mount};
use super::volumes::{config_map, empty_dir, projected, secret_files};
use super::{
    DeploymentInputs, KONNECTIVITY_ADMIN_PORT, KONNECTIVITY_AGENT_PORT, KONNECTIVITY_HEALTH_PORT,
    KUBECONFIG_DIR, Names, PKI_DIR, UDS_DIR, UDS_PATH,
};
use crate::api::TenantControlPlane;
use crate::podspec::restricted_container;
use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Orrery's konnectivity-server flags, before the spec's `extraArgs`.
fn flags(tcp: &TenantControlPlane) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("admin-port", KONNECTIVITY_ADMIN_PORT.to_string()),
        ("agent-namespace", "kube-system".to_string()),
        ("agent-port", KONNECTIVITY_AGENT_PORT.to_string()),
        ("agent-service-account", "konnectivity-agent".to_string()),
        (
            "authentication-audience",
            "system:konnectivity-server".to_string(),
        ),
        ("cluster-cert", pki("apiserver.crt")),
        ("cluster-key", pki("apiserver.key")),
        ("delete-existing-uds-file", "true".to_string()),
        ("health-port", KONNECTIVITY_HEALTH_PORT.to_string()),
        ("kubeconfig", kubeconfig("konnectivity-server.conf")),
        ("mode", "grpc".to_string()),
        ("proxy-strategies", "destHost,default".to_string()),
        ("server-count", tcp.spec.replicas.to_string()),
        ("server-port", "0".to_string()),
        ("uds-name", UDS_PATH.to_string()),
    ])
}

/// The health endpoint is plain HTTP.
fn liveness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(KONNECTIVITY_HEALTH_PORT),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

pub(super) fn container(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Container {
    let spec = &tcp.spec.control_plane.konnectivity_server;
    Container {
        name: "konnectivity-server".into(),
        image: Some(inputs.images.konnectivity_server.clone()),
        command: Some(vec!["/proxy-server".into()]),
        args: Some(args(flags(tcp), &spec.extra_args)),
        ports: Some(vec![ContainerPort {
            name: Some("konnectivity".into()),
            container_port: KONNECTIVITY_AGENT_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(liveness_probe()),
        resources: Some(resources(spec, "20m", "32Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("konnectivity-pki", PKI_DIR),
            mount("konnectivity-kubeconfig", KUBECONFIG_DIR),
            writable_mount("konnectivity-uds", UDS_DIR),
        ]),
        ..Default::default()
    }
}

/// konnectivity-server's own volumes plus the socket directory and the egress configuration it
/// shares with the apiserver.
pub(super) fn volumes(names: &Names) -> Vec<Volume> {
    vec![
        projected(
            "konnectivity-pki",
            vec![secret_files(
                names.certs(),
                &["apiserver.crt", "apiserver.key"],
            )],
        ),
        projected(
            "konnectivity-kubeconfig",
            vec![secret_files(
                names.kubeconfigs(),
                &["konnectivity-server.conf"],
            )],
        ),
        empty_dir("konnectivity-uds"),
        config_map("config", names.config()),
    ]
}
