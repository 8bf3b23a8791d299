//! kube-proxy's `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1), kept in the
//! `kube-proxy` ConfigMap that both the DaemonSet and `kubeadm join` read.

use super::ComponentConfig;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub bind_address: String,
    pub client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub mode: ProxyMode,
}

impl ComponentConfig for KubeProxyConfiguration {
    const API_VERSION: &'static str = "kubeproxy.config.k8s.io/v1alpha1";
    const KIND: &'static str = "KubeProxyConfiguration";
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    /// Path of the kubeconfig kube-proxy talks to the apiserver with.
    pub kubeconfig: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Iptables,
    Ipvs,
    Nftables,
}
