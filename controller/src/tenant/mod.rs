//! Bootstrap inside the tenant cluster: what `kubeadm init` leaves in a cluster so that nodes can
//! `kubeadm join` it, plus the add-ons (CoreDNS, kube-proxy, konnectivity-agent). Pure builders;
//! [`apply::apply_and_prune`] sends them to the tenant apiserver and removes what is no longer
//! wanted.
//!
//! One file per part (`bootstrap`, `coredns`, `kube_proxy`, `konnectivity_agent`); `rbac` and
//! `pod` hold the pieces they share. [`build`] labels each part's objects with [`ADDON_LABEL`].

use crate::Result;
use crate::api::TenantControlPlane;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The group kubeadm's default bootstrap tokens authenticate as.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers:kubeadm:default-node-token";
const KUBE_SYSTEM: &str = "kube-system";
const KUBE_PUBLIC: &str = "kube-public";
const LABEL_MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "orrery");
/// Names the part of the tenant bootstrap an object belongs to (`bootstrap` or an add-on), so
/// objects of a part switched off can be found and removed.
pub const ADDON_LABEL: &str = "orrery.dev/addon";
/// [`ADDON_LABEL`] values of the add-ons, which are also the names of their workloads in
/// kube-system (a Deployment for CoreDNS, DaemonSets for the others).
pub const COREDNS: &str = "coredns";
pub const KUBE_PROXY: &str = "kube-proxy";
pub const KONNECTIVITY_AGENT: &str = "konnectivity-agent";
/// The CSI driver's part: its CSIDriver, default StorageClass and node plugin.
pub const CSI: &str = "csi";
/// What the cloud controller and the CSI driver's controllers may do in the tenant.
pub const CLOUD_CONTROLLER_ACCESS: &str = "cloud-controller-access";
/// What the cluster-autoscaler may do in the tenant.
pub const CLUSTER_AUTOSCALER_ACCESS: &str = "cluster-autoscaler-access";

mod addon_access;
pub mod apply;
mod bootstrap;
mod coredns;
pub use coredns::RELEASES as COREDNS_RELEASES;
mod csi;
mod konnectivity_agent;
mod kube_proxy;
mod pod;
mod rbac;

pub use bootstrap::{cluster_info_kubeconfig, default_dns_ip};

/// Everything Orrery keeps inside one tenant cluster.
#[derive(Clone, Debug, Default)]
pub struct TenantObjects {
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub daemon_sets: Vec<DaemonSet>,
    pub services: Vec<Service>,
    pub csi_drivers: Vec<CSIDriver>,
    pub storage_classes: Vec<StorageClass>,
}

/// Calls `$f` with the metadata of every object of `$o`.
macro_rules! each_meta {
    ($o:expr, $f:expr) => {{
        let f = $f;
        $o.config_maps.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.service_accounts
            .iter_mut()
            .for_each(|x| f(&mut x.metadata));
        $o.cluster_roles.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.cluster_role_bindings
            .iter_mut()
            .for_each(|x| f(&mut x.metadata));
        $o.roles.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.role_bindings.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.deployments.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.daemon_sets.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.services.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.csi_drivers.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.storage_classes
            .iter_mut()
            .for_each(|x| f(&mut x.metadata));
    }};
}

impl TenantObjects {
    /// Labels every object as part of `addon`.
    fn labelled(mut self, addon: &str) -> Self {
        each_meta!(self, |m: &mut ObjectMeta| {
            m.labels
                .get_or_insert_with(Default::default)
                .insert(ADDON_LABEL.to_string(), addon.to_string());
        });
        self
    }

    /// Moves every object of `other` into `self`.
    fn extend(&mut self, other: TenantObjects) {
        self.config_maps.extend(other.config_maps);
        self.service_accounts.extend(other.service_accounts);
        self.cluster_roles.extend(other.cluster_roles);
        self.cluster_role_bindings
            .extend(other.cluster_role_bindings);
        self.roles.extend(other.roles);
        self.role_bindings.extend(other.role_bindings);
        self.deployments.extend(other.deployments);
        self.daemon_sets.extend(other.daemon_sets);
        self.services.extend(other.services);
        self.csi_drivers.extend(other.csi_drivers);
        self.storage_classes.extend(other.storage_classes);
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.config_maps.len()
            + self.service_accounts.len()
            + self.cluster_roles.len()
            + self.cluster_role_bindings.len()
            + self.roles.len()
            + self.role_bindings.len()
            + self.deployments.len()
            + self.daemon_sets.len()
            + self.services.len()
            + self.csi_drivers.len()
            + self.storage_classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the builders need besides the spec.
#[derive(Clone, Debug)]
pub struct BootstrapInputs {
    /// host:port of the tenant apiserver as nodes reach it.
    pub endpoint: String,
    /// PEM of the tenant cluster CA.
    pub ca_pem: String,
    /// Registry and path prefix of the add-on images.
    pub image_registry: String,
    /// The version the control plane runs on every replica (the spec's before the first
    /// rollout). The add-ons take it, so during an upgrade they move only once the control
    /// plane's roll has completed.
    pub running_version: String,
    /// The CSI node plugin's image, unless the spec names one.
    pub csi_node_image: String,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(BTreeMap::from([(
            LABEL_MANAGED.0.to_string(),
            LABEL_MANAGED.1.to_string(),
        )])),
        ..Default::default()
    }
}

/// Builds every object of the tenant bootstrap and the enabled add-ons.
pub fn build(tcp: &TenantControlPlane, inputs: &BootstrapInputs) -> Result<TenantObjects> {
    let spec = &tcp.spec;
    let net = &spec.network;
    let dns_ip = match &net.dns_service_ip {
        Some(ip) => ip.clone(),
        None => default_dns_ip(&net.service_cidr)?.to_string(),
    };

    let mut o = bootstrap::objects(tcp, inputs, &dns_ip).labelled("bootstrap");
    let addons = &spec.addons;
    let version = inputs.running_version.as_str();
    let registry = inputs.image_registry.trim_end_matches('/');
    if addons.core_dns.enabled {
        let image = coredns::image(&addons.core_dns, registry, version);
        let mut part = TenantObjects::default();
        coredns::objects(&mut part, &image, &dns_ip, &net.cluster_domain);
        o.extend(part.labelled(COREDNS));
    }
    if addons.kube_proxy.enabled {
        let image = kube_proxy::image(&addons.kube_proxy, registry, version);
        let mut part = TenantObjects::default();
        kube_proxy::objects(&mut part, &image, &inputs.endpoint, &net.pod_cidr);
        o.extend(part.labelled(KUBE_PROXY));
    }
    if addons.konnectivity.enabled {
        let image = konnectivity_agent::image(&addons.konnectivity, registry, version);
        let mut part = TenantObjects::default();
        konnectivity_agent::objects(
            &mut part,
            &image,
            &inputs.endpoint,
            tcp.spec.network.konnectivity_port,
        );
        o.extend(part.labelled(KONNECTIVITY_AGENT));
    }
    if addons.csi.enabled {
        let image = addons
            .csi
            .node_image
            .as_deref()
            .unwrap_or(&inputs.csi_node_image);
        let mut part = TenantObjects::default();
        csi::objects(&mut part, image);
        o.extend(part.labelled(CSI));
    }
    let (cloud, csi) = (addons.cloud_controller.enabled, addons.csi.enabled);
    if cloud || csi {
        let mut part = TenantObjects::default();
        addon_access::cloud(&mut part, cloud, csi);
        o.extend(part.labelled(CLOUD_CONTROLLER_ACCESS));
    }
    if addons.cluster_autoscaler.enabled {
        let mut part = TenantObjects::default();
        addon_access::autoscaler(&mut part);
        o.extend(part.labelled(CLUSTER_AUTOSCALER_ACCESS));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::{Value, json};

    fn tcp(yaml: &str) -> TenantControlPlane {
        TenantControlPlane::new("t1", serde_yaml_ng::from_str(yaml).unwrap())
    }

    fn inputs() -> BootstrapInputs {
        BootstrapInputs {
            endpoint: "10.96.4.5:6443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            image_registry: "registry.k8s.io".into(),
            running_version: "v1.34.4".into(),
            csi_node_image: "orrery.dev/csi-node:0.1.0".into(),
        }
    }

    #[test]
    fn bootstrap_matches_what_kubeadm_join_needs() {
        let o = build(&tcp("version: v1.34.4"), &inputs()).unwrap();
        let cm = |name: &str| {
            o.config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        let info = cm("cluster-info");
        assert_eq!(info.metadata.namespace.as_deref(), Some("kube-public"));
        let kubeconfig = config_file(&o, "cluster-info", "kubeconfig");
        assert_eq!(
            kubeconfig["clusters"][0]["cluster"]["server"],
            "https://10.96.4.5:6443"
        );
        assert!(
            kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap()
                .starts_with("LS0tLS1CRUdJTi")
        );
        assert_eq!(
            config_file(&o, "kubeadm-config", "ClusterConfiguration")["controlPlaneEndpoint"],
            "10.96.4.5:6443"
        );
        assert_eq!(
            config_file(&o, "kubelet-config", "kubelet")["clusterDNS"],
            json!(["10.96.0.10"])
        );
        let crb = |name: &str| {
            o.cluster_role_bindings
                .iter()
                .find(|b| b.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        assert_eq!(
            crb("kubeadm:kubelet-bootstrap").role_ref.name,
            "system:node-bootstrapper"
        );
        assert_eq!(
            crb("kubeadm:node-autoapprove-bootstrap")
                .subjects
                .as_ref()
                .unwrap()[0]
                .name,
            BOOTSTRAPPERS
        );
        assert_eq!(
            crb("kubeadm:node-autoapprove-certificate-rotation")
                .subjects
                .as_ref()
                .unwrap()[0]
                .name,
            "system:nodes"
        );
        let anon = o
            .role_bindings
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some("kubeadm:bootstrap-signer-clusterinfo"))
            .unwrap();
        assert_eq!(anon.subjects.as_ref().unwrap()[0].name, "system:anonymous");
        // No wildcard anywhere in what Orrery grants inside the tenant.
        for r in o
            .cluster_roles
            .iter()
            .flat_map(|r| r.rules.iter().flatten())
            .chain(o.roles.iter().flat_map(|r| r.rules.iter().flatten()))
        {
            assert!(!r.verbs.iter().any(|v| v == "*"));
            assert!(!r.resources.iter().flatten().any(|v| v == "*"));
        }
    }

    /// The images of every add-on: CoreDNS's Deployment, then each DaemonSet's.
    fn addon_images(o: &TenantObjects) -> Vec<String> {
        let pod_images = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
            t.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        };
        let mut images: Vec<String> = o
            .deployments
            .iter()
            .map(|d| pod_images(&d.spec.as_ref().unwrap().template))
            .collect();
        images.extend(
            o.daemon_sets
                .iter()
                .map(|d| pod_images(&d.spec.as_ref().unwrap().template)),
        );
        images.sort();
        images
    }

    #[test]
    fn addons_take_the_version_the_control_plane_runs() {
        // Mid-upgrade: the spec asks for v1.37.2, the control plane still runs v1.36.3 somewhere.
        let upgrading = tcp("version: v1.37.2");
        let mut i = inputs();
        i.running_version = "v1.36.3".into();
        assert_eq!(
            addon_images(&build(&upgrading, &i).unwrap()),
            [
                "registry.k8s.io/coredns/coredns:v1.14.2",
                "registry.k8s.io/kas-network-proxy/proxy-agent:v0.34.0",
                "registry.k8s.io/kube-proxy:v1.36.3",
            ]
        );
        // Rolled: kube-proxy with the control plane, CoreDNS as kubeadm v1.37 maps it.
        i.running_version = "v1.37.2".into();
        assert_eq!(
            addon_images(&build(&upgrading, &i).unwrap()),
            [
                "registry.k8s.io/coredns/coredns:v1.14.6",
                "registry.k8s.io/kas-network-proxy/proxy-agent:v0.36.0",
                "registry.k8s.io/kube-proxy:v1.37.2",
            ]
        );
    }

    #[test]
    fn addons_follow_the_spec() {
        let o = build(&tcp("version: v1.34.4"), &inputs()).unwrap();
        assert_eq!(o.deployments.len(), 1);
        assert_eq!(o.daemon_sets.len(), 2);
        // CoreDNS runs as non-root and binds port 53 through the pod's network sysctl.
        let coredns = o.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let sysctls = coredns
            .security_context
            .as_ref()
            .unwrap()
            .sysctls
            .as_ref()
            .unwrap();
        assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
        assert_eq!(sysctls[0].value, "53");
        assert_eq!(
            coredns.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let dns = &o.services[0];
        assert_eq!(
            dns.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
        let agent = o
            .daemon_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("konnectivity-agent"))
            .unwrap();
        let pod = agent.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let args = pod.containers[0].args.as_ref().unwrap();
        assert!(args.contains(&"--proxy-server-host=10.96.4.5".to_string()));
        assert!(args.contains(&"--proxy-server-port=8132".to_string()));
        let token = pod.volumes.as_ref().unwrap()[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(
            token.audience.as_deref(),
            Some("system:konnectivity-server")
        );

        let off = build(
            &tcp("version: v1.34.4\nnetwork:\n  dnsServiceIP: 10.96.0.53\naddons:\n  coreDNS:\n    enabled: false\n  kubeProxy:\n    enabled: false\n  konnectivity:\n    enabled: false\n"),
            &inputs(),
        )
        .unwrap();
        assert!(
            off.deployments.is_empty() && off.daemon_sets.is_empty() && off.services.is_empty()
        );
        assert_eq!(
            config_file(&off, "kubelet-config", "kubelet")["clusterDNS"],
            json!(["10.96.0.53"])
        );
    }

    /// File `key` of ConfigMap `name`.
    fn config_text<'a>(o: &'a TenantObjects, name: &str, key: &str) -> &'a str {
        let cm = o
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no ConfigMap {name}"));
        &cm.data.as_ref().unwrap()[key]
    }

    /// File `key` of ConfigMap `name`, parsed.
    fn config_file(o: &TenantObjects, name: &str, key: &str) -> Value {
        serde_yaml_ng::from_str(config_text(o, name, key)).unwrap()
    }

    /// Every configuration file Orrery writes into the tenant, read back: its type and the fields
    /// that come from the spec and the inputs (JSON pointer → value).
    #[test]
    fn config_files_read_back() {
        let t = tcp(
            "version: v1.33.2\nnetwork:\n  serviceCIDR: 10.100.0.0/16\n  podCIDR: 10.200.0.0/16\n  clusterDomain: tenant.local\n",
        );
        let o = build(&t, &inputs()).unwrap();
        let ca = base64::engine::general_purpose::STANDARD.encode(inputs().ca_pem);
        let cases = [
            (
                "kubeadm-config",
                "ClusterConfiguration",
                json!({
                    "/apiVersion": "kubeadm.k8s.io/v1beta4",
                    "/kind": "ClusterConfiguration",
                    "/clusterName": "t1",
                    "/kubernetesVersion": "v1.33.2",
                    "/controlPlaneEndpoint": "10.96.4.5:6443",
                    "/imageRepository": "registry.k8s.io",
                    "/networking": {
                        "dnsDomain": "tenant.local",
                        "serviceSubnet": "10.100.0.0/16",
                        "podSubnet": "10.200.0.0/16",
                    },
                }),
            ),
            (
                "kubelet-config",
                "kubelet",
                json!({
                    "/apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "/kind": "KubeletConfiguration",
                    "/clusterDNS": ["10.100.0.10"],
                    "/clusterDomain": "tenant.local",
                    "/authentication/anonymous/enabled": false,
                    "/authentication/webhook/enabled": true,
                    "/authentication/x509/clientCAFile": "/etc/kubernetes/pki/ca.crt",
                    "/authorization/mode": "Webhook",
                    "/serverTLSBootstrap": false,
                    "/rotateCertificates": true,
                }),
            ),
            (
                "cluster-info",
                "kubeconfig",
                json!({
                    "/apiVersion": "v1",
                    "/kind": "Config",
                    "/clusters/0/cluster/server": "https://10.96.4.5:6443",
                    "/clusters/0/cluster/certificate-authority-data": ca,
                    "/users": [],
                }),
            ),
            (
                "kube-proxy",
                "config.conf",
                json!({
                    "/apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "/kind": "KubeProxyConfiguration",
                    "/clusterCIDR": "10.200.0.0/16",
                    "/mode": "iptables",
                    "/clientConnection/kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf",
                }),
            ),
            (
                "kube-proxy",
                "kubeconfig.conf",
                json!({
                    "/apiVersion": "v1",
                    "/kind": "Config",
                    "/clusters/0/cluster/server": "https://10.96.4.5:6443",
                    "/current-context": "default",
                    "/contexts/0/context": {"cluster": "default", "namespace": "default", "user": "default"},
                    "/users/0/user/tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                }),
            ),
        ];
        for (name, key, fields) in cases {
            let doc = config_file(&o, name, key);
            for (pointer, want) in fields.as_object().unwrap() {
                assert_eq!(doc.pointer(pointer), Some(want), "{name}/{key}{pointer}");
            }
        }
    }

    /// The kubeconfigs load as kubeconfigs, the way clients read them.
    #[test]
    fn kubeconfigs_load() {
        let o = build(&tcp("version: v1.34.4"), &inputs()).unwrap();
        for (name, key) in [
            ("cluster-info", "kubeconfig"),
            ("kube-proxy", "kubeconfig.conf"),
        ] {
            let config = kube::config::Kubeconfig::from_yaml(config_text(&o, name, key))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.clusters.len(), 1, "{name}");
        }
    }
}
