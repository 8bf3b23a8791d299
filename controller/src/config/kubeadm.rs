//! kubeadm's `ClusterConfiguration` (kubeadm.k8s.io/v1beta4), which `kubeadm join` reads from the
//! `kubeadm-config` ConfigMap.

use super::ComponentConfig;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfiguration {
    pub cluster_name: String,
    pub kubernetes_version: String,
    /// host:port of the apiserver as nodes reach it.
    pub control_plane_endpoint: String,
    pub certificates_dir: String,
    pub image_repository: String,
    pub networking: Networking,
}

impl ComponentConfig for ClusterConfiguration {
    const API_VERSION: &'static str = "kubeadm.k8s.io/v1beta4";
    const KIND: &'static str = "ClusterConfiguration";
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    pub dns_domain: String,
    pub service_subnet: String,
    pub pod_subnet: String,
}
