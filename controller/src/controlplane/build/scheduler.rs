//! The kube-scheduler container and its kubeconfig volume.

use super::container::{args, https_probe, kubeconfig, mount, resources};
use super::volumes::{projected, secret_files};
use super::{DeploymentInputs, KUBECONFIG_DIR, Names, SCHEDULER_PORT};
use crate::api::TenantControlPlane;
use crate::podspec::restricted_container;
use k8s_openapi::api::core::v1::{Container, Volume};
use std::collections::BTreeMap;

/// Orrery's kube-scheduler flags, before the spec's `extraArgs`.
fn flags() -> BTreeMap<&'static str, String> {
    let conf = kubeconfig("scheduler.conf");
    BTreeMap::from([
        ("authentication-kubeconfig", conf.clone()),
        ("authorization-kubeconfig", conf.clone()),
        ("bind-address", "0.0.0.0".to_string()),
        ("kubeconfig", conf),
        ("leader-elect", "true".to_string()),
        ("secure-port", SCHEDULER_PORT.to_string()),
    ])
}

pub(super) fn container(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Container {
    let spec = &tcp.spec.control_plane.scheduler;
    Container {
        name: "kube-scheduler".into(),
        image: Some(inputs.images.scheduler.clone()),
        command: Some(vec!["kube-scheduler".into()]),
        args: Some(args(flags(), &spec.extra_args)),
        startup_probe: Some(https_probe("/healthz", SCHEDULER_PORT, 2, 60)),
        liveness_probe: Some(https_probe("/healthz", SCHEDULER_PORT, 10, 6)),
        resources: Some(resources(spec, "20m", "32Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![mount("scheduler-kubeconfig", KUBECONFIG_DIR)]),
        ..Default::default()
    }
}

pub(super) fn volumes(names: &Names) -> Vec<Volume> {
    vec![projected(
        "scheduler-kubeconfig",
        vec![secret_files(names.kubeconfigs(), &["scheduler.conf"])],
    )]
}
