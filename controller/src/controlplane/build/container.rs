//! Pieces every control-plane container uses: flags, probes, resources, mounts and file paths.

use super::{KUBECONFIG_DIR, PKI_DIR};
use crate::api::ComponentSpec;
use k8s_openapi::api::core::v1::{HTTPGetAction, Probe, ResourceRequirements, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// A file in the containers' PKI directory.
pub(super) fn pki(file: &str) -> String {
    format!("{PKI_DIR}/{file}")
}

/// A file in the containers' kubeconfig directory.
pub(super) fn kubeconfig(file: &str) -> String {
    format!("{KUBECONFIG_DIR}/{file}")
}

/// Flags as a sorted map so `extraArgs` can override Orrery's and the output is deterministic.
pub(super) fn args(base: BTreeMap<&str, String>, extra: &BTreeMap<String, String>) -> Vec<String> {
    let mut all: BTreeMap<String, String> =
        base.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.into_iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

pub(super) fn https_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some("HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The spec's resources, or requests of `cpu` and `memory`.
pub(super) fn resources(spec: &ComponentSpec, cpu: &str, memory: &str) -> ResourceRequirements {
    spec.resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ])),
            ..Default::default()
        })
}

pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// A mount the container writes to, such as the konnectivity socket's directory.
pub(super) fn writable_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}
