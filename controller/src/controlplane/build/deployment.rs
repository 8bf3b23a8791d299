//! The control-plane Deployment: one pod with every control-plane container.

use super::{
    COMPONENT, DeploymentInputs, Names, apiserver, controller_manager, konnectivity_server, meta,
    scheduler, selector_labels,
};
use crate::api::TenantControlPlane;
use crate::apply::{TENANT_LABEL, child_labels};
use crate::podspec::restricted_pod;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Volume,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// How long a roll may go without progress before it is reported stalled.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 180;

/// The control-plane Deployment.
pub fn deployment(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Deployment {
    Deployment {
        metadata: meta(tcp, Names::new(tcp).workload(), COMPONENT),
        spec: Some(DeploymentSpec {
            // A sleeping tenant keeps its Deployment, with no pods.
            replicas: Some(if tcp.spec.sleep { 0 } else { tcp.spec.replicas }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tcp)),
                ..Default::default()
            },
            // A new pod is ready before an old one goes: the apiserver stays reachable. Every
            // new pod starts at once, so a roll (an upgrade) takes one pod's start, not one per
            // replica.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("100%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(tcp, inputs),
            // A roll (an upgrade) with no new replica ready for this long is reported stalled
            // in VersionCurrent; the old replicas keep serving meanwhile.
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pods carry the hash of each object they mount, so a change of one rolls them.
fn pod_template(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> PodTemplateSpec {
    let mut labels = child_labels(TENANT_LABEL, &tcp.name_any(), COMPONENT);
    labels.extend(selector_labels(tcp));
    let annotations: BTreeMap<String, String> = inputs
        .config_hashes
        .iter()
        .map(|(name, hash)| (format!("checksum.orrery.dev/{name}"), hash.clone()))
        .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(pod_spec(tcp, inputs)),
    }
}

fn pod_spec(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> PodSpec {
    let sched = &tcp.spec.control_plane.scheduling;
    PodSpec {
        // No management-cluster credentials in tenant pods.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        containers: containers(tcp, inputs),
        volumes: Some(volumes(tcp)),
        security_context: Some(restricted_pod()),
        node_selector: (!sched.node_selector.is_empty()).then(|| sched.node_selector.clone()),
        tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
        topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
            .then(|| sched.topology_spread_constraints.clone()),
        priority_class_name: sched.priority_class_name.clone(),
        affinity: Some(affinity(tcp)),
        ..Default::default()
    }
}

fn containers(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Vec<Container> {
    let mut containers = vec![
        apiserver::container(tcp, inputs),
        controller_manager::container(tcp, inputs),
        scheduler::container(tcp, inputs),
    ];
    if tcp.spec.addons.konnectivity.enabled {
        containers.push(konnectivity_server::container(tcp, inputs));
    }
    containers
}

fn volumes(tcp: &TenantControlPlane) -> Vec<Volume> {
    let names = Names::new(tcp);
    let mut volumes = apiserver::volumes(&names);
    volumes.extend(controller_manager::volumes(&names));
    volumes.extend(scheduler::volumes(&names));
    if tcp.spec.addons.konnectivity.enabled {
        volumes.extend(konnectivity_server::volumes(&names));
    }
    volumes
}

/// The spec's affinity or, by default, replicas spread over nodes when the nodes allow it.
fn affinity(tcp: &TenantControlPlane) -> Affinity {
    if let Some(affinity) = &tcp.spec.control_plane.scheduling.affinity {
        return affinity.clone();
    }
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(tcp)),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
