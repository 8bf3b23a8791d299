//! Pod pieces the add-on workloads share: the `k8s-app` label, its selector, the pod template.

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use std::collections::BTreeMap;

pub(super) fn k8s_app(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("k8s-app".to_string(), name.to_string())])
}

pub(super) fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        ..Default::default()
    }
}

/// A pod template whose pods carry `labels`.
pub(super) fn template(labels: BTreeMap<String, String>, pod: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(pod),
    }
}

/// Node agents run on every node, whatever its taints.
pub(super) fn tolerate_everything() -> Vec<Toleration> {
    vec![Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    }]
}
