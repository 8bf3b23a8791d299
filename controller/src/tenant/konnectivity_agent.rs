//! The konnectivity-agent add-on: on every node, an agent that dials konnectivity-server in the
//! control-plane pod, so the apiserver can reach the tenant's nodes and pods through it.

use super::pod::{k8s_app, selector, template, tolerate_everything};
use super::rbac::{cluster_role_binding, user};
use super::{KUBE_SYSTEM, TenantObjects, meta};
use crate::api::AddonSpec;
use crate::controlplane::build::KONNECTIVITY_RELEASES;
use crate::podspec::restricted_container;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource,
    SeccompProfile, ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const HEALTH_PORT: i32 = 8134;
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN: &str = "konnectivity-agent-token";

/// The spec's image or the agent of the konnectivity release for a tenant running `version`.
pub(super) fn image(addon: &AddonSpec, registry: &str, version: &str) -> String {
    addon.image.clone().unwrap_or_else(|| {
        let release = crate::api::release_for(&KONNECTIVITY_RELEASES, version);
        format!("{registry}/kas-network-proxy/proxy-agent:{release}")
    })
}

/// The agent's objects; it dials konnectivity-server at the host of `endpoint` on `port`.
pub(super) fn objects(o: &mut TenantObjects, image: &str, endpoint: &str, port: i32) {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    o.service_accounts.push(ServiceAccount {
        metadata: meta("konnectivity-agent", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    // konnectivity-server authenticates agents with TokenReview as this user.
    o.cluster_role_bindings.push(cluster_role_binding(
        "system:konnectivity-server",
        "system:auth-delegator",
        vec![user("system:konnectivity-server")],
    ));
    o.daemon_sets.push(daemon_set(image, host, port));
}

fn daemon_set(image: &str, host: &str, port: i32) -> DaemonSet {
    let labels = k8s_app("konnectivity-agent");
    DaemonSet {
        metadata: meta("konnectivity-agent", Some(KUBE_SYSTEM)),
        spec: Some(DaemonSetSpec {
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    service_account_name: Some("konnectivity-agent".into()),
                    priority_class_name: Some("system-cluster-critical".into()),
                    tolerations: Some(tolerate_everything()),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container(image, host, port)],
                    volumes: Some(vec![token_volume()]),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(image: &str, host: &str, port: i32) -> Container {
    Container {
        name: "konnectivity-agent".into(),
        image: Some(image.into()),
        command: Some(vec!["/proxy-agent".into()]),
        args: Some(vec![
            "--logtostderr=true".into(),
            "--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            format!("--proxy-server-host={host}"),
            format!("--proxy-server-port={port}"),
            "--admin-server-port=8133".into(),
            format!("--health-server-port={HEALTH_PORT}"),
            format!("--service-account-token-path={TOKEN_DIR}/{TOKEN}"),
            "--agent-identifiers=default-route=true".into(),
        ]),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(HEALTH_PORT),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// A service-account token for konnectivity-server's audience only, renewed by the kubelet.
fn token_volume() -> Volume {
    Volume {
        name: TOKEN.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: TOKEN.into(),
                    audience: Some("system:konnectivity-server".into()),
                    expiration_seconds: Some(3600),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
