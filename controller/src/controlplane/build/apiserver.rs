//! The kube-apiserver container and the volume with its certificates and keys.

use super::container::{args, https_probe, mount, pki, resources, writable_mount};
use super::volumes::{projected, secret_files};
use super::{CONFIG_DIR, DeploymentInputs, Names, PKI_DIR, UDS_DIR};
use crate::api::TenantControlPlane;
use crate::podspec::{field_env, restricted_container};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Lifecycle, LifecycleHandler, SleepAction, Volume,
};
use std::collections::BTreeMap;

/// How long a replica that is going away keeps serving before it is told to stop: the time for
/// its endpoint to leave the Service everywhere, so no new request reaches it after it stopped
/// (a roll of an HA tenant loses no request).
pub const DRAIN_SECONDS: i64 = 5;

/// Orrery's kube-apiserver flags, before the spec's `extraArgs`.
fn flags(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> BTreeMap<&'static str, String> {
    let net = &tcp.spec.network;
    let mut flags = BTreeMap::from([
        ("allow-privileged", "true".to_string()),
        ("authorization-mode", "Node,RBAC".to_string()),
        ("bind-address", "0.0.0.0".to_string()),
        ("client-ca-file", pki("ca.crt")),
        ("enable-admission-plugins", "NodeRestriction".to_string()),
        ("enable-bootstrap-token-auth", "true".to_string()),
        ("etcd-cafile", pki("datastore-ca.crt")),
        ("etcd-certfile", pki("datastore-client.crt")),
        ("etcd-keyfile", pki("datastore-client.key")),
        // A tenant's etcd user may touch its own prefix only; compaction of a shared etcd is
        // the DataStore's job.
        ("etcd-compaction-interval", "0".to_string()),
        ("etcd-prefix", inputs.etcd_prefix.clone()),
        ("etcd-servers", inputs.datastore_endpoints.join(",")),
        (
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        ("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        (
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname".to_string(),
        ),
        ("proxy-client-cert-file", pki("front-proxy-client.crt")),
        ("proxy-client-key-file", pki("front-proxy-client.key")),
        (
            "requestheader-allowed-names",
            "front-proxy-client".to_string(),
        ),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        (
            "requestheader-extra-headers-prefix",
            "X-Remote-Extra-".to_string(),
        ),
        ("requestheader-group-headers", "X-Remote-Group".to_string()),
        (
            "requestheader-username-headers",
            "X-Remote-User".to_string(),
        ),
        ("secure-port", net.port.to_string()),
        (
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", net.cluster_domain),
        ),
        ("service-account-key-file", pki("sa.pub")),
        ("service-account-signing-key-file", pki("sa.key")),
        ("service-cluster-ip-range", net.service_cidr.clone()),
        ("tls-cert-file", pki("apiserver.crt")),
        ("tls-private-key-file", pki("apiserver.key")),
    ]);
    if let Some(addr) = &inputs.advertise_address {
        flags.insert("advertise-address", addr.clone());
    }
    if tcp.spec.addons.konnectivity.enabled {
        flags.insert(
            "egress-selector-config-file",
            format!("{CONFIG_DIR}/egress-selector-configuration.yaml"),
        );
    }
    flags
}

/// The kube-apiserver container; with konnectivity it also mounts the egress configuration and
/// the directory of konnectivity-server's socket.
pub(super) fn container(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Container {
    let spec = &tcp.spec.control_plane.api_server;
    let port = tcp.spec.network.port;
    let mut mounts = vec![mount("apiserver-pki", PKI_DIR)];
    if tcp.spec.addons.konnectivity.enabled {
        mounts.push(mount("config", CONFIG_DIR));
        mounts.push(writable_mount("konnectivity-uds", UDS_DIR));
    }
    Container {
        name: "kube-apiserver".into(),
        image: Some(inputs.images.api_server.clone()),
        command: Some(vec!["kube-apiserver".into()]),
        args: Some(args(flags(tcp, inputs), &spec.extra_args)),
        env: Some(vec![field_env("POD_IP", "status.podIP")]),
        ports: Some(vec![ContainerPort {
            name: Some("kube-apiserver".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        startup_probe: Some(https_probe("/livez", port, 2, 60)),
        liveness_probe: Some(https_probe("/livez", port, 10, 6)),
        readiness_probe: Some(https_probe("/readyz", port, 2, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: DRAIN_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(resources(spec, "100m", "256Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The apiserver's serving, client and service-account key pairs and the CAs it trusts.
pub(super) fn volumes(names: &Names) -> Vec<Volume> {
    vec![projected(
        "apiserver-pki",
        vec![
            secret_files(
                names.certs(),
                &[
                    "ca.crt",
                    "front-proxy-ca.crt",
                    "datastore-ca.crt",
                    "apiserver.crt",
                    "apiserver.key",
                    "apiserver-kubelet-client.crt",
                    "apiserver-kubelet-client.key",
                    "front-proxy-client.crt",
                    "front-proxy-client.key",
                    "datastore-client.crt",
                    "datastore-client.key",
                ],
            ),
            secret_files(names.service_account(), &["sa.key", "sa.pub"]),
        ],
    )]
}
