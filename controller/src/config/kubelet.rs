//! The `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1) that joining nodes read from the
//! `kubelet-config` ConfigMap.

use super::ComponentConfig;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub authentication: KubeletAuthentication,
    pub authorization: KubeletAuthorization,
    pub cgroup_driver: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
    pub static_pod_path: String,
}

impl ComponentConfig for KubeletConfiguration {
    const API_VERSION: &'static str = "kubelet.config.k8s.io/v1beta1";
    const KIND: &'static str = "KubeletConfiguration";
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletAuthentication {
    pub anonymous: Enabled,
    pub webhook: Enabled,
    pub x509: KubeletX509Authentication,
}

/// The `enabled` switch of an authentication method.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletX509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletAuthorization {
    pub mode: KubeletAuthorizationMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum KubeletAuthorizationMode {
    AlwaysAllow,
    /// Ask the apiserver with SubjectAccessReview.
    #[default]
    Webhook,
}
