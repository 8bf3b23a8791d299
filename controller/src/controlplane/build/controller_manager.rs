//! The kube-controller-manager container and its volumes: the only place the cluster CA's key is
//! mounted (it signs node certificates).

use super::container::{args, https_probe, kubeconfig, mount, pki, resources};
use super::volumes::{projected, secret_files, secret_projection};
use super::{CONTROLLER_MANAGER_PORT, DeploymentInputs, KUBECONFIG_DIR, Names, PKI_DIR};
use crate::api::TenantControlPlane;
use crate::podspec::restricted_container;
use k8s_openapi::api::core::v1::{Container, Volume};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Orrery's kube-controller-manager flags, before the spec's `extraArgs`.
fn flags(tcp: &TenantControlPlane) -> BTreeMap<&'static str, String> {
    let net = &tcp.spec.network;
    let conf = kubeconfig("controller-manager.conf");
    BTreeMap::from([
        ("allocate-node-cidrs", "true".to_string()),
        ("authentication-kubeconfig", conf.clone()),
        ("authorization-kubeconfig", conf.clone()),
        ("bind-address", "0.0.0.0".to_string()),
        ("client-ca-file", pki("ca.crt")),
        ("cluster-cidr", net.pod_cidr.clone()),
        ("cluster-name", tcp.name_any()),
        ("cluster-signing-cert-file", pki("ca.crt")),
        ("cluster-signing-key-file", pki("ca.key")),
        ("controllers", "*,bootstrapsigner,tokencleaner".to_string()),
        ("kubeconfig", conf),
        ("leader-elect", "true".to_string()),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        ("root-ca-file", pki("ca.crt")),
        ("secure-port", CONTROLLER_MANAGER_PORT.to_string()),
        ("service-account-private-key-file", pki("sa.key")),
        ("service-cluster-ip-range", net.service_cidr.clone()),
        ("use-service-account-credentials", "true".to_string()),
    ])
}

pub(super) fn container(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Container {
    let spec = &tcp.spec.control_plane.controller_manager;
    Container {
        name: "kube-controller-manager".into(),
        image: Some(inputs.images.controller_manager.clone()),
        command: Some(vec!["kube-controller-manager".into()]),
        args: Some(args(flags(tcp), &spec.extra_args)),
        startup_probe: Some(https_probe("/healthz", CONTROLLER_MANAGER_PORT, 2, 60)),
        liveness_probe: Some(https_probe("/healthz", CONTROLLER_MANAGER_PORT, 10, 6)),
        resources: Some(resources(spec, "50m", "64Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("controller-manager-pki", PKI_DIR),
            mount("controller-manager-kubeconfig", KUBECONFIG_DIR),
        ]),
        ..Default::default()
    }
}

pub(super) fn volumes(names: &Names) -> Vec<Volume> {
    vec![
        projected(
            "controller-manager-pki",
            vec![
                secret_projection(names.ca(), &[("tls.crt", "ca.crt"), ("tls.key", "ca.key")]),
                secret_files(names.certs(), &["front-proxy-ca.crt"]),
                secret_files(names.service_account(), &["sa.key"]),
            ],
        ),
        projected(
            "controller-manager-kubeconfig",
            vec![secret_files(
                names.kubeconfigs(),
                &["controller-manager.conf"],
            )],
        ),
    ]
}
