//! The configuration files Orrery writes for Kubernetes components, as typed structs spelled like
//! the upstream API types. Only the fields Orrery sets are modelled; the components default the
//! rest.

pub mod egress_selector;
pub mod kube_proxy;
pub mod kubeadm;
pub mod kubelet;

use serde::Serialize;

/// A component configuration: a versioned Kubernetes config type read from a file.
pub trait ComponentConfig: Serialize + Sized {
    const API_VERSION: &'static str;
    const KIND: &'static str;

    /// The file's content: `apiVersion` and `kind`, then the fields.
    fn to_yaml(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Typed<'a, T> {
            api_version: &'static str,
            kind: &'static str,
            #[serde(flatten)]
            config: &'a T,
        }
        to_yaml(&Typed {
            api_version: Self::API_VERSION,
            kind: Self::KIND,
            config: self,
        })
    }
}

/// Any serializable configuration (a component configuration, a kubeconfig) as YAML.
pub fn to_yaml<T: Serialize>(config: &T) -> String {
    // Configuration types hold strings, numbers, booleans, sequences and structs, all of which
    // serde_yaml_ng can always write.
    serde_yaml_ng::to_string(config).expect("configuration types serialize to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Writes `config` and reads it back as a generic document.
    fn read_back<T: ComponentConfig>(config: &T) -> Value {
        serde_yaml_ng::from_str(&config.to_yaml()).unwrap()
    }

    /// Each configuration, written and read back, carries its type and the field it was given,
    /// spelled as upstream spells it.
    #[test]
    fn configurations_read_back_with_their_type_and_fields() {
        let cases = [
            (
                read_back(&egress_selector::EgressSelectorConfiguration {
                    egress_selections: vec![egress_selector::EgressSelection::grpc_over_uds(
                        "cluster",
                        "/run/k.sock",
                    )],
                }),
                "apiserver.k8s.io/v1beta1",
                "EgressSelectorConfiguration",
                "/egressSelections/0/connection",
                json!({"proxyProtocol": "GRPC", "transport": {"uds": {"udsName": "/run/k.sock"}}}),
            ),
            (
                read_back(&kubeadm::ClusterConfiguration {
                    control_plane_endpoint: "10.0.0.1:6443".into(),
                    ..Default::default()
                }),
                "kubeadm.k8s.io/v1beta4",
                "ClusterConfiguration",
                "/controlPlaneEndpoint",
                json!("10.0.0.1:6443"),
            ),
            (
                read_back(&kubelet::KubeletConfiguration {
                    cluster_dns: vec!["10.96.0.10".into()],
                    server_tls_bootstrap: true,
                    ..Default::default()
                }),
                "kubelet.config.k8s.io/v1beta1",
                "KubeletConfiguration",
                "/serverTLSBootstrap",
                json!(true),
            ),
            (
                read_back(&kubelet::KubeletConfiguration {
                    cluster_dns: vec!["10.96.0.10".into()],
                    ..Default::default()
                }),
                "kubelet.config.k8s.io/v1beta1",
                "KubeletConfiguration",
                "/clusterDNS",
                json!(["10.96.0.10"]),
            ),
            (
                read_back(&kube_proxy::KubeProxyConfiguration {
                    cluster_cidr: "10.244.0.0/16".into(),
                    ..Default::default()
                }),
                "kubeproxy.config.k8s.io/v1alpha1",
                "KubeProxyConfiguration",
                "/clusterCIDR",
                json!("10.244.0.0/16"),
            ),
        ];
        for (doc, api_version, kind, pointer, want) in cases {
            assert_eq!(doc["apiVersion"], api_version, "{doc}");
            assert_eq!(doc["kind"], kind, "{doc}");
            assert_eq!(doc.pointer(pointer), Some(&want), "{pointer} in {doc}");
        }
    }

    #[test]
    fn type_comes_first() {
        let yaml = kube_proxy::KubeProxyConfiguration::default().to_yaml();
        assert!(
            yaml.starts_with(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            ),
            "{yaml}"
        );
    }
}
