//! The `orrery.dev/v1alpha1` API: `TenantControlPlane`, `DataStore` and `NodePool` (in
//! `api/nodepool.rs`).
//!
//! Admission is done by the apiserver from the CEL rules and OpenAPI bounds declared here, so a bad
//! object never reaches the controller; every message names the field it is about. The reconcile
//! checks the same again (`controlplane::validate::spec`) for objects admitted before a rule existed.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod nodepool;
pub use nodepool::*;

/// Kubernetes minor versions a tenant may run: the one place that spec.version's admission
/// rule, the kubectl plugin, the per-minor release tables and the tests read (a test checks that
/// spec.version's documentation names the same range).
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 34..=37;

/// The supported range in words: `v1.34.0 to v1.37.x`.
pub fn supported_range() -> String {
    format!(
        "v1.{}.0 to v1.{}.x",
        SUPPORTED_MINORS.start(),
        SUPPORTED_MINORS.end()
    )
}

/// The minor of a `vMAJOR.MINOR.PATCH` version.
pub fn minor_of(version: &str) -> Option<u32> {
    version.split('.').nth(1).and_then(|m| m.parse().ok())
}

/// The release a table keyed by minor gives `version`; the newest for a minor admission would
/// refuse (a test keeps every table covering [`SUPPORTED_MINORS`]).
pub fn release_for(table: &[(u32, &'static str)], version: &str) -> &'static str {
    let minor = minor_of(version);
    table
        .iter()
        .find(|(m, _)| Some(*m) == minor)
        .or_else(|| table.last())
        .map_or("", |(_, r)| r)
}

/// spec.version's admission rule for the range, made from [`SUPPORTED_MINORS`]. A version not of
/// the form vMAJOR.MINOR.PATCH is left to the format rule.
fn version_range_rule() -> Rule {
    let minors: Vec<String> = SUPPORTED_MINORS.map(|m| m.to_string()).collect();
    Rule::new(format!(
        r"!self.matches('^v[0-9]+\\.[0-9]+\\.[0-9]+$') || self.matches('^v1\\.({})\\.[0-9]+$')",
        minors.join("|")
    ))
    .message(Message::Message(format!(
        "spec.version is outside the supported range {}",
        supported_range()
    )))
}

/// A tenant Kubernetes control plane run as pods in the management cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orrery.dev",
    version = "v1alpha1",
    kind = "TenantControlPlane",
    namespaced,
    shortname = "tcp",
    category = "orrery",
    status = "TenantControlPlaneStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(oldSelf.dataStore) || (has(self.dataStore) && self.dataStore == oldSelf.dataStore)"
    ).message("spec.dataStore is immutable once set: moving a tenant to another DataStore is not supported yet"),
    validation = pod_range_size_rule(),
)]
pub struct TenantControlPlaneSpec {
    /// Kubernetes version of the tenant control plane, as vMAJOR.MINOR.PATCH (v1.34.0 to v1.37.x).
    /// Upgrades go one minor version at a time; downgrades are refused.
    #[x_kube(
        validation = Rule::new(r"self.matches('^v[0-9]+\\.[0-9]+\\.[0-9]+$')")
            .message("spec.version must have the form vMAJOR.MINOR.PATCH, for example v1.34.4"),
        validation = version_range_rule(),
        validation = Rule::new(
            "!self.matches('^v1\\\\.[0-9]+\\\\.[0-9]+$') || !oldSelf.matches('^v1\\\\.[0-9]+\\\\.[0-9]+$') || \
             int(self.split('.')[1]) > int(oldSelf.split('.')[1]) || \
             (int(self.split('.')[1]) == int(oldSelf.split('.')[1]) && int(self.split('.')[2]) >= int(oldSelf.split('.')[2]))"
        ).message("spec.version may not be downgraded"),
        validation = Rule::new(
            "!self.matches('^v1\\\\.[0-9]+\\\\.[0-9]+$') || !oldSelf.matches('^v1\\\\.[0-9]+\\\\.[0-9]+$') || \
             int(self.split('.')[1]) <= int(oldSelf.split('.')[1]) + 1"
        ).message("spec.version may not skip a minor version: upgrade one minor at a time"),
    )]
    #[schemars(length(max = 32))]
    pub version: String,

    /// Number of control-plane pods (kube-apiserver, kube-controller-manager, kube-scheduler and
    /// konnectivity-server together).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// How the tenant apiserver is exposed and the tenant cluster's networks.
    #[serde(default)]
    pub network: NetworkSpec,

    /// Name of the cluster-scoped DataStore holding this tenant's state. When unset, the DataStore
    /// annotated `orrery.dev/default-datastore: "true"` is used. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub data_store: Option<String>,

    /// Settings of the control-plane pods: images, resources, extra arguments and scheduling.
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,

    /// Certificate lifetimes and renewal.
    #[serde(default)]
    pub certificates: CertificatesSpec,

    /// Add-ons installed into the tenant cluster.
    #[serde(default)]
    pub addons: AddonsSpec,

    /// Puts the tenant to sleep: its control plane is scaled to zero pods (phase Sleeping) while
    /// every certificate, key, Service address and byte of its data is kept; its add-ons in the
    /// management cluster stop, and its NodePools keep their machines as they are. Set back to
    /// false, the tenant wakes with the same data and endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sleep: bool,
}

fn default_replicas() -> i32 {
    2
}

/// Networking of a tenant cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!isCIDR(self.serviceCIDR) || !isCIDR(self.podCIDR) || \
         (!cidr(self.serviceCIDR).containsIP(cidr(self.podCIDR).masked().ip()) && \
          !cidr(self.podCIDR).containsIP(cidr(self.serviceCIDR).masked().ip()))"
    ).message("spec.network.serviceCIDR and spec.network.podCIDR must not overlap"),
    validation = Rule::new(
        "!has(self.dnsServiceIP) || !isCIDR(self.serviceCIDR) || !isIP(self.dnsServiceIP) || \
         cidr(self.serviceCIDR).containsIP(self.dnsServiceIP)"
    ).message("spec.network.dnsServiceIP must lie inside spec.network.serviceCIDR"),
    validation = Rule::new(
        "!isCIDR(self.serviceCIDR) || !isCIDR(self.podCIDR) || \
         cidr(self.serviceCIDR).ip().family() == cidr(self.podCIDR).ip().family()"
    ).message("spec.network.serviceCIDR and spec.network.podCIDR must be of one IP family: both IPv4 or both IPv6"),
    validation = Rule::new(
        "!has(self.dnsServiceIP) || !isCIDR(self.serviceCIDR) || !isIP(self.dnsServiceIP) || \
         ip(self.dnsServiceIP).family() == cidr(self.serviceCIDR).ip().family()"
    ).message("spec.network.dnsServiceIP must be of the IP family of spec.network.serviceCIDR"),
    // The /31 (or /127) around the address holds the network address exactly when the address
    // is the network address or the one after it; CEL has no address arithmetic.
    validation = Rule::new(
        "!has(self.dnsServiceIP) || !isCIDR(self.serviceCIDR) || !isIP(self.dnsServiceIP) || \
         !cidr(self.dnsServiceIP + (ip(self.dnsServiceIP).family() == 4 ? '/31' : '/127')).containsIP(cidr(self.serviceCIDR).masked().ip())"
    ).message("spec.network.dnsServiceIP must not be the network address of spec.network.serviceCIDR nor its first address, which the kubernetes Service takes"),
)]
pub struct NetworkSpec {
    /// How the tenant apiserver is exposed to worker nodes and users: ClusterIP, NodePort or
    /// LoadBalancer.
    #[serde(default)]
    pub service_type: ServiceType,

    /// Port of the tenant apiserver on its Service and in the pod.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = port_free_in_pod_rule())]
    pub port: i32,

    /// Port on which konnectivity-server accepts agents from the tenant's nodes.
    #[serde(default = "default_konnectivity_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub konnectivity_port: i32,

    /// Extra names and IP addresses for the apiserver serving certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "certSANs")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    #[x_kube(
        validation = Rule::new(
            "self.all(san, isIP(san) || san.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$'))"
        ).message("each entry of spec.network.certSANs must be a DNS name (lower case, optionally starting with *.) or an IP address"),
        validation = Rule::new("self.all(san, !isIP(san) || !ip(san).isUnspecified())")
            .message("spec.network.certSANs must not contain an unspecified address (0.0.0.0 or ::): no client reaches the apiserver there"),
    )]
    pub cert_sans: Vec<CertSan>,

    /// Service CIDR of the tenant cluster. Immutable.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    #[schemars(length(max = 43))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.network.serviceCIDR must be a CIDR such as 10.96.0.0/16"),
        validation = Rule::new("self == oldSelf").message("spec.network.serviceCIDR is immutable"),
        validation = Rule::new("!isCIDR(self) || cidr(self).prefixLength() <= (cidr(self).ip().family() == 4 ? 28 : 124)")
            .message("spec.network.serviceCIDR must hold at least 16 addresses (a /28 for IPv4, a /124 for IPv6): the network address, the kubernetes Service, the DNS Service (by default the tenth address) and the tenant's own Services"),
    )]
    pub service_cidr: String,

    /// Pod CIDR of the tenant cluster. Immutable.
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    #[schemars(length(max = 43))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.network.podCIDR must be a CIDR such as 10.244.0.0/16"),
        validation = Rule::new("self == oldSelf").message("spec.network.podCIDR is immutable"),
    )]
    pub pod_cidr: String,

    /// Cluster IP of the tenant's DNS Service. Defaults to the tenth address of serviceCIDR.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "dnsServiceIP"
    )]
    #[schemars(length(max = 39))]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.network.dnsServiceIP must be an IP address"))]
    pub dns_service_ip: Option<String>,

    /// DNS domain of the tenant cluster. Immutable.
    #[serde(default = "default_cluster_domain")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
            .message("spec.network.clusterDomain must be a DNS domain such as cluster.local"),
        validation = Rule::new("self == oldSelf").message("spec.network.clusterDomain is immutable"),
    )]
    pub cluster_domain: String,
}

/// A DNS name or IP address, at most 253 characters.
pub type CertSan = String;

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            service_type: ServiceType::default(),
            port: default_api_port(),
            konnectivity_port: default_konnectivity_port(),
            cert_sans: Vec::new(),
            service_cidr: default_service_cidr(),
            pod_cidr: default_pod_cidr(),
            dns_service_ip: None,
            cluster_domain: default_cluster_domain(),
        }
    }
}

fn default_api_port() -> i32 {
    6443
}
fn default_konnectivity_port() -> i32 {
    8132
}
fn default_service_cidr() -> String {
    "10.96.0.0/16".into()
}
fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}

/// How the tenant apiserver's Service is exposed.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ServiceType {
    /// Reachable inside the management cluster only.
    #[default]
    ClusterIP,
    /// Reachable on every management node's address.
    NodePort,
    /// Reachable through a load balancer of the management cluster.
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Settings shared by the control-plane pods and per component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// kube-apiserver container.
    #[serde(default)]
    #[x_kube(
        validation = reserved_flags_rule(&API_SERVER_FLAGS),
        validation = listed_entries_rule(&API_SERVER_FLAGS),
        validation = image_rule(API_SERVER_FLAGS.path, "self.image"),
        validation = quantities_rule(API_SERVER_FLAGS.path, "self.resources"),
        validation = requests_within_limits_rule(API_SERVER_FLAGS.path, "self.resources"),
    )]
    pub api_server: ComponentSpec,
    /// kube-controller-manager container.
    #[serde(default)]
    #[x_kube(
        validation = reserved_flags_rule(&CONTROLLER_MANAGER_FLAGS),
        validation = listed_entries_rule(&CONTROLLER_MANAGER_FLAGS),
        validation = image_rule(CONTROLLER_MANAGER_FLAGS.path, "self.image"),
        validation = quantities_rule(CONTROLLER_MANAGER_FLAGS.path, "self.resources"),
        validation = requests_within_limits_rule(CONTROLLER_MANAGER_FLAGS.path, "self.resources"),
    )]
    pub controller_manager: ComponentSpec,
    /// kube-scheduler container.
    #[serde(default)]
    #[x_kube(
        validation = reserved_flags_rule(&SCHEDULER_FLAGS),
        validation = image_rule(SCHEDULER_FLAGS.path, "self.image"),
        validation = quantities_rule(SCHEDULER_FLAGS.path, "self.resources"),
        validation = requests_within_limits_rule(SCHEDULER_FLAGS.path, "self.resources"),
    )]
    pub scheduler: ComponentSpec,
    /// konnectivity-server container.
    #[serde(default)]
    #[x_kube(
        validation = reserved_flags_rule(&KONNECTIVITY_SERVER_FLAGS),
        validation = image_rule(KONNECTIVITY_SERVER_FLAGS.path, "self.image"),
        validation = quantities_rule(KONNECTIVITY_SERVER_FLAGS.path, "self.resources"),
        validation = requests_within_limits_rule(KONNECTIVITY_SERVER_FLAGS.path, "self.resources"),
    )]
    pub konnectivity_server: ComponentSpec,
    /// Where the control-plane pods may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
}

/// One container of the control-plane pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Image to run instead of the upstream image for the tenant's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Compute resources of the container. Requests may not exceed limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_resources)]
    pub resources: Option<ResourceRequirements>,
    /// Extra command-line flags, `--name=value` without the dashes as `name: value`. They override
    /// Orrery's defaults for flags such as `v`, `feature-gates` or `enable-admission-plugins`; the
    /// flags that wire the pod together (certificates, kubeconfigs, ports, the DataStore, the
    /// networks) are Orrery's and refused here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), transform = bounded_flag_values)]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z0-9][-a-z0-9]*$'))")
        .message("extraArgs keys must be flag names without leading dashes, such as v or feature-gates"))]
    pub extra_args: BTreeMap<String, String>,
}

/// Scheduling constraints of the control-plane pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over topology domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Lifetimes of the tenant's certificates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.renewBeforeHours < self.validityHours")
    .message("spec.certificates.renewBeforeHours must be less than spec.certificates.validityHours"))]
pub struct CertificatesSpec {
    /// Lifetime of leaf certificates, in hours (default one year).
    #[serde(default = "default_validity_hours")]
    #[schemars(range(min = 2, max = 87600))]
    pub validity_hours: i32,
    /// A leaf certificate is renewed this many hours before it expires (default 30 days).
    #[serde(default = "default_renew_before_hours")]
    #[schemars(range(min = 1, max = 87599))]
    pub renew_before_hours: i32,
}

impl Default for CertificatesSpec {
    fn default() -> Self {
        Self {
            validity_hours: default_validity_hours(),
            renew_before_hours: default_renew_before_hours(),
        }
    }
}

fn default_validity_hours() -> i32 {
    8760
}
fn default_renew_before_hours() -> i32 {
    720
}

/// Add-ons installed into the tenant cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddonsSpec {
    /// CoreDNS, serving the cluster domain at the DNS service IP.
    #[serde(default, rename = "coreDNS")]
    #[x_kube(validation = image_rule("spec.addons.coreDNS", "self.image"))]
    pub core_dns: AddonSpec,
    /// kube-proxy DaemonSet.
    #[serde(default)]
    #[x_kube(validation = image_rule("spec.addons.kubeProxy", "self.image"))]
    pub kube_proxy: AddonSpec,
    /// konnectivity-agent DaemonSet, the tenant side of the konnectivity tunnel.
    #[serde(default)]
    #[x_kube(validation = image_rule("spec.addons.konnectivity", "self.image"))]
    pub konnectivity: AddonSpec,
    /// The tenant's cloud controller, run by Orrery in the management cluster with the tenant's
    /// admin kubeconfig: it initialises the Nodes of NodePool VMs (addresses, instance type, zone
    /// and region; workers then start with `--cloud-provider=external`) and serves the tenant's
    /// LoadBalancer Services through Services of the management cluster.
    #[serde(default)]
    pub cloud_controller: CloudControllerSpec,
    /// The upstream Kubernetes cluster-autoscaler, run by Orrery in the management cluster with
    /// the tenant's admin kubeconfig: it scales the tenant's NodePools that have
    /// `spec.autoscaling`, through the node-group API Orrery serves it (the `externalgrpc` cloud
    /// provider).
    #[serde(default)]
    #[x_kube(validation = image_rule("spec.addons.clusterAutoscaler", "self.image"))]
    pub cluster_autoscaler: ClusterAutoscalerSpec,
    /// The CSI driver `csi.orrery.dev`: a tenant PersistentVolumeClaim gets a disk, a
    /// PersistentVolumeClaim in the tenant's management namespace that Orrery hot-plugs into the
    /// worker VM of the pod using it. Its controller side runs in Orrery, its node plugin on each
    /// worker (a DaemonSet in the tenant's kube-system, holding no credentials).
    #[serde(default)]
    #[x_kube(validation = image_rule("spec.addons.csi", "self.nodeImage"))]
    pub csi: CsiSpec,
}

/// The tenant's CSI driver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.storageClassName) || self.storageClassName.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("spec.addons.csi.storageClassName must be a StorageClass name: lower-case letters, digits, '-' and '.'"))]
pub struct CsiSpec {
    /// Whether Orrery gives this tenant the driver and a default StorageClass `orrery`. Off by
    /// default: it needs a management StorageClass that offers Block volumes (KubeVirt plugs a
    /// raw device into the VM). Switching it off removes the driver from the tenant; the disks
    /// of existing volumes stay until their claims are deleted with the driver on, or the tenant
    /// is deleted.
    #[serde(default)]
    pub enabled: bool,
    /// The management StorageClass of the disks (with `volumeMode: Block`); the management
    /// cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Image of the node plugin instead of the one this Orrery release runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub node_image: Option<String>,
}

/// The tenant's cluster-autoscaler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAutoscalerSpec {
    /// Whether Orrery runs a cluster-autoscaler for this tenant. Off by default: it is of use
    /// only with NodePools that set `spec.autoscaling`. Switching it off deletes it; the pools
    /// keep their replicas.
    #[serde(default)]
    pub enabled: bool,
    /// Image to run instead of the default, the upstream release of the tenant's minor version
    /// (`<imageRegistry>/autoscaling/cluster-autoscaler:v1.34.5` for a v1.34 tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

/// The tenant's cloud controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudControllerSpec {
    /// Whether Orrery runs the cloud controller for this tenant. Switching it off deletes the
    /// management Services it made and releases the tenant's LoadBalancer Services; workers
    /// created from then on join without `--cloud-provider=external`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Type of the management-cluster Service made for each tenant Service of type
    /// LoadBalancer. LoadBalancer: the management cluster's load balancer gives the address.
    /// ClusterIP: the address is that Service's cluster IP, reachable from inside the management
    /// cluster only (for example a test cluster without a load balancer).
    #[serde(default)]
    pub load_balancer_service_type: LoadBalancerServiceType,
}

impl Default for CloudControllerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            load_balancer_service_type: LoadBalancerServiceType::default(),
        }
    }
}

/// Type of the management Service behind a tenant LoadBalancer Service.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum LoadBalancerServiceType {
    /// The management cluster's load balancer gives the address.
    #[default]
    LoadBalancer,
    /// The management Service's cluster IP is the address.
    ClusterIP,
}

impl LoadBalancerServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::ClusterIP => "ClusterIP",
        }
    }
}

/// One add-on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddonSpec {
    /// Whether Orrery installs and keeps this add-on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image to run instead of the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

impl Default for AddonSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of a tenant control plane.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantControlPlaneStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// A one-word summary for humans: Provisioning, Ready, Upgrading, NotReady or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Kubernetes version the running control plane serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// host:port at which the tenant apiserver is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// DataStore in use (spec.dataStore or the default one at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_store: Option<String>,
    /// Secret (in this namespace) holding the tenant admin kubeconfig under key `kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretRef>,
    /// Standard conditions: CertificatesReady, DataStoreReady, ControlPlaneAvailable,
    /// TenantAPIReady, TenantBootstrapped, Ready, Degraded, and AddonsReady (every add-on
    /// switched on runs; not part of Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Reference to a Secret and a key in it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Reference to a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret's data.
    pub key: String,
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Type of the condition."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Status of the condition."},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "Generation the condition was set for."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When the status last changed."},
                "reason": {"type": "string", "description": "CamelCase reason for the last transition."},
                "message": {"type": "string", "description": "Human-readable details."}
            }
        }
    })
}

/// An etcd cluster that stores tenant control planes' state.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orrery.dev",
    version = "v1alpha1",
    kind = "DataStore",
    category = "orrery",
    status = "DataStoreStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"string","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Tenants","type":"integer","jsonPath":".status.tenantCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.managed) != has(self.external)")
        .message("exactly one of spec.managed and spec.external must be set"),
    validation = Rule::new("has(self.managed) == has(oldSelf.managed)")
        .message("a DataStore cannot switch between spec.managed and spec.external"),
)]
pub struct DataStoreSpec {
    /// An etcd cluster that Orrery runs as a StatefulSet, shared by tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedDataStore>,
    /// An etcd cluster that someone else runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDataStore>,
}

/// An etcd cluster run by Orrery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedDataStore {
    /// Namespace that holds the etcd StatefulSet, its Services and Secrets.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.managed.namespace is immutable"))]
    pub namespace: String,
    /// Number of etcd members: 1, 3 or 5.
    #[serde(default = "default_etcd_replicas")]
    #[x_kube(validation = Rule::new("self in [1, 3, 5]").message("spec.managed.replicas must be 1, 3 or 5"))]
    pub replicas: i32,
    /// etcd image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = image_rule("spec.managed", "self"))]
    pub image: Option<String>,
    /// Size of each member's data volume.
    #[serde(default = "default_storage_size")]
    pub storage_size: String,
    /// Storage class of the data volumes (the cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Compute resources of each member. Requests may not exceed limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_resources)]
    #[x_kube(
        validation = quantities_rule("spec.managed", "self"),
        validation = requests_within_limits_rule("spec.managed", "self"),
    )]
    pub resources: Option<ResourceRequirements>,
    /// Where the etcd members may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
}

fn default_etcd_replicas() -> i32 {
    3
}
fn default_storage_size() -> String {
    "8Gi".into()
}

/// An etcd cluster run by someone else.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDataStore {
    /// Client URLs of the etcd members, https only.
    #[schemars(length(min = 1, max = 16), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(e, isURL(e) && url(e).getScheme() == 'https' && url(e).getPort() != '')")
        .message("each entry of spec.external.endpoints must be an https URL with a port, such as https://etcd-0.example:2379"))]
    pub endpoints: Vec<String>,
    /// The CA that signs etcd's serving and client certificates. Its private key lets Orrery issue
    /// one client certificate per tenant, whose common name is the tenant's etcd user.
    pub certificate_authority: CertificateAuthorityRef,
    /// A client certificate of etcd's `root` user, used by Orrery to manage tenant users, roles and
    /// keys.
    pub root_client_certificate: KeyPairRef,
}

/// Where a CA's certificate and private key are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthorityRef {
    /// PEM certificate of the CA.
    pub certificate: SecretKeyRef,
    /// PEM private key of the CA.
    pub private_key: SecretKeyRef,
}

/// Where a certificate and its private key are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairRef {
    /// PEM certificate.
    pub certificate: SecretKeyRef,
    /// PEM private key.
    pub private_key: SecretKeyRef,
}

/// Observed state of a DataStore.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataStoreStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Client endpoints, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<String>,
    /// Tenant control planes using this DataStore, as namespace/name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// Number of tenants using this DataStore.
    #[serde(default)]
    pub tenant_count: i32,
    /// Standard conditions: Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

// Admission rules built from tables, so the Rust checks in `controlplane::validate` and the tests
// read the same lists as the CRD.

/// What `extraArgs` may and may not do to the flags of one control-plane container.
#[derive(Debug)]
pub struct ComponentFlags {
    /// Where the component sits in the spec, for messages.
    pub path: &'static str,
    /// Flags Orrery owns: it sets them to wire the pod together (certificates, kubeconfigs,
    /// ports, the DataStore, the networks, leader election), or they would override what it sets.
    pub reserved: &'static [&'static str],
    /// Flags Orrery sets only as a default that users may change; the others it sets are
    /// reserved (`validate`'s tests check this against the Deployment it builds).
    pub tunable: &'static [&'static str],
    /// Entries of comma-separated tunable flags that Orrery relies on.
    pub listed: &'static [ListedEntry],
}

/// An entry a comma-separated flag must keep (`kept`) or must not name (`!kept`) when set.
#[derive(Debug)]
pub struct ListedEntry {
    pub flag: &'static str,
    pub entry: &'static str,
    pub kept: bool,
}

pub const API_SERVER_FLAGS: ComponentFlags = ComponentFlags {
    path: "spec.controlPlane.apiServer",
    reserved: &[
        "advertise-address",
        // kube-proxy and the CNI of the tenant's nodes run privileged pods.
        "allow-privileged",
        // Webhook or file-based modes need files the pod does not have; Node and RBAC carry
        // kubelets and everything Orrery installs.
        "authorization-config",
        "authorization-mode",
        "bind-address",
        "client-ca-file",
        "egress-selector-config-file",
        // Nodes join with bootstrap tokens.
        "enable-bootstrap-token-auth",
        "etcd-cafile",
        "etcd-certfile",
        "etcd-compaction-interval",
        "etcd-keyfile",
        "etcd-prefix",
        "etcd-servers",
        // Would store resources outside the tenant's prefix and etcd user.
        "etcd-servers-overrides",
        "kubelet-client-certificate",
        "kubelet-client-key",
        "proxy-client-cert-file",
        "proxy-client-key-file",
        "requestheader-allowed-names",
        "requestheader-client-ca-file",
        "requestheader-extra-headers-prefix",
        "requestheader-group-headers",
        // Not set, but one of the front-proxy headers Orrery configures.
        "requestheader-uid-headers",
        "requestheader-username-headers",
        "secure-port",
        "service-account-issuer",
        "service-account-key-file",
        "service-account-signing-key-file",
        "service-cluster-ip-range",
        "tls-cert-file",
        "tls-private-key-file",
    ],
    tunable: &[
        // Users add admission plugins (NodeRestriction stays, see `listed`).
        "enable-admission-plugins",
        // Which node address the apiserver dials depends on the tenant's nodes.
        "kubelet-preferred-address-types",
    ],
    listed: &[
        ListedEntry {
            flag: "enable-admission-plugins",
            entry: "NodeRestriction",
            kept: true,
        },
        ListedEntry {
            flag: "disable-admission-plugins",
            entry: "NodeRestriction",
            kept: false,
        },
    ],
};

pub const CONTROLLER_MANAGER_FLAGS: ComponentFlags = ComponentFlags {
    path: "spec.controlPlane.controllerManager",
    reserved: &[
        "authentication-kubeconfig",
        "authorization-kubeconfig",
        "bind-address",
        "client-ca-file",
        "cluster-cidr",
        "cluster-name",
        "cluster-signing-cert-file",
        "cluster-signing-key-file",
        // Per-signer files cannot be combined with cluster-signing-cert-file/-key-file.
        "cluster-signing-kube-apiserver-client-cert-file",
        "cluster-signing-kube-apiserver-client-key-file",
        "cluster-signing-kubelet-client-cert-file",
        "cluster-signing-kubelet-client-key-file",
        "cluster-signing-kubelet-serving-cert-file",
        "cluster-signing-kubelet-serving-key-file",
        "cluster-signing-legacy-unknown-cert-file",
        "cluster-signing-legacy-unknown-key-file",
        "kubeconfig",
        // Several replicas run at once.
        "leader-elect",
        // Would point the controllers past the kubeconfig's server.
        "master",
        "requestheader-client-ca-file",
        "root-ca-file",
        "secure-port",
        "service-account-private-key-file",
        "service-cluster-ip-range",
        // The RBAC of each controller is bound to its own service account.
        "use-service-account-credentials",
    ],
    tunable: &[
        // A CNI with its own address management does without node ranges.
        "allocate-node-cidrs",
        // Users switch controllers off (bootstrapsigner and tokencleaner stay, see `listed`).
        "controllers",
    ],
    listed: &[
        ListedEntry {
            flag: "controllers",
            entry: "bootstrapsigner",
            kept: true,
        },
        ListedEntry {
            flag: "controllers",
            entry: "tokencleaner",
            kept: true,
        },
    ],
};

pub const SCHEDULER_FLAGS: ComponentFlags = ComponentFlags {
    path: "spec.controlPlane.scheduler",
    reserved: &[
        "authentication-kubeconfig",
        "authorization-kubeconfig",
        "bind-address",
        "kubeconfig",
        "leader-elect",
        "master",
        "secure-port",
    ],
    tunable: &[],
    listed: &[],
};

pub const KONNECTIVITY_SERVER_FLAGS: ComponentFlags = ComponentFlags {
    path: "spec.controlPlane.konnectivityServer",
    reserved: &[
        "admin-port",
        "agent-namespace",
        "agent-port",
        "agent-service-account",
        "authentication-audience",
        "cluster-cert",
        "cluster-key",
        "delete-existing-uds-file",
        "health-port",
        "kubeconfig",
        "mode",
        "proxy-strategies",
        "server-count",
        "server-port",
        "uds-name",
    ],
    tunable: &[],
    listed: &[],
};

/// Ports the other containers of the control-plane pod listen on (konnectivity-server's agent,
/// admin and health ports, kube-controller-manager's and kube-scheduler's secure ports).
pub const CONTROL_PLANE_POD_PORTS: &[i32] = &[8132, 8133, 8134, 10257, 10259];

/// `[registry[:port]/]path[:tag][@sha256:digest]`, path components in lower case: the reference
/// grammar of container images with sha256 digests only. `[.]` rather than `\.` keeps it free of
/// escapes inside a CEL string.
pub const IMAGE_PATTERN: &str = "^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// CEL list literal of `items`.
fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `extraArgs` may not name a reserved flag. Map lookups keep the cost to one per flag.
fn reserved_flags_rule(c: &ComponentFlags) -> Rule {
    let reserved = cel_list(c.reserved);
    Rule::new(format!(
        "!has(self.extraArgs) || {reserved}.all(f, !(f in self.extraArgs))"
    ))
    .message(Message::Expression(format!(
        "'{}.extraArgs may not set ' + {reserved}.filter(f, f in self.extraArgs)[0] + ': Orrery owns that setting'",
        c.path
    )))
    .field_path(".extraArgs")
}

/// A comma-separated flag, when set, keeps (or leaves out) the entries Orrery relies on.
fn listed_entries_rule(c: &ComponentFlags) -> Rule {
    let conditions: Vec<String> = c
        .listed
        .iter()
        .map(|l| {
            let named = format!(
                "self.extraArgs['{}'].matches('(^|,)[ ]*{}[ ]*(,|$)')",
                l.flag, l.entry
            );
            let wanted = if l.kept { named } else { format!("!{named}") };
            format!("(!('{}' in self.extraArgs) || {wanted})", l.flag)
        })
        .collect();
    let wants: Vec<String> = c
        .listed
        .iter()
        .map(|l| {
            let verb = if l.kept { "must list" } else { "must not list" };
            format!("{} {verb} {}", l.flag, l.entry)
        })
        .collect();
    Rule::new(format!(
        "!has(self.extraArgs) || ({})",
        conditions.join(" && ")
    ))
    .message(Message::Message(format!(
        "{}.extraArgs: {} (Orrery relies on these)",
        c.path,
        wants.join("; ")
    )))
    .field_path(".extraArgs")
}

/// `!has(at) || ` for a field below `self`; nothing for `self`, whose rules run only when set.
fn unless_unset(at: &str) -> String {
    if at == "self" {
        String::new()
    } else {
        format!("!has({at}) || ")
    }
}

/// Points a failed rule at the field `at` below `self`.
fn at_field(rule: Rule, at: &str) -> Rule {
    match at.strip_prefix("self") {
        Some(field) if !field.is_empty() => rule.field_path(field),
        _ => rule,
    }
}

/// The image at `at` (a string below `self`, or `self`) is a well-formed reference.
fn image_rule(path: &str, at: &str) -> Rule {
    let rule = Rule::new(format!(
        "{}{at}.matches('{IMAGE_PATTERN}')",
        unless_unset(at)
    ))
    .message(Message::Message(format!(
        "{path}.{} must be an image reference [registry[:port]/]path[:tag][@sha256:<64 hex digits>] with lower-case path components, such as registry.k8s.io/kube-apiserver:v1.34.4",
        at.strip_prefix("self.").unwrap_or("image")
    )));
    at_field(rule, at)
}

/// Every request and limit of the ResourceRequirements at `at` is a non-negative quantity.
fn quantities_rule(path: &str, at: &str) -> Rule {
    let valid = |map: &str| {
        format!(
            "(!has({at}.{map}) || {at}.{map}.all(r, isQuantity(string({at}.{map}[r])) && !quantity(string({at}.{map}[r])).isLessThan(quantity('0'))))"
        )
    };
    let rule = Rule::new(format!(
        "{}({} && {})",
        unless_unset(at),
        valid("requests"),
        valid("limits")
    ))
    .message(Message::Message(format!(
        "{path}.resources: requests and limits must be non-negative quantities such as 500m or 1Gi"
    )));
    at_field(rule, at)
}

/// No request of the ResourceRequirements at `at` exceeds the limit of the same name.
fn requests_within_limits_rule(path: &str, at: &str) -> Rule {
    let q = |map: &str| format!("string({at}.{map}[r])");
    let (req, lim) = (q("requests"), q("limits"));
    let exceeds = format!(
        "r in {at}.limits && isQuantity({req}) && isQuantity({lim}) && quantity({req}).isGreaterThan(quantity({lim}))"
    );
    let rule = Rule::new(format!(
        "{}!has({at}.requests) || !has({at}.limits) || !{at}.requests.exists(r, {exceeds})",
        unless_unset(at)
    ))
    .message(Message::Expression(format!(
        "'{path}.resources.requests.' + {at}.requests.filter(r, {exceeds})[0] + ' must not exceed {path}.resources.limits.' + {at}.requests.filter(r, {exceeds})[0]"
    )));
    at_field(rule, at)
}

/// The apiserver's port is not one another container of the pod listens on.
fn port_free_in_pod_rule() -> Rule {
    let ports: Vec<String> = CONTROL_PLANE_POD_PORTS.iter().map(i32::to_string).collect();
    Rule::new(format!("!(self in [{}])", ports.join(", "))).message(Message::Message(format!(
        "spec.network.port must not be {}: other containers of the control-plane pod listen there",
        ports.join(", ")
    )))
}

/// kube-controller-manager flags that change how it splits the pod range into node ranges.
pub const NODE_RANGE_FLAGS: &[&str] = &[
    "allocate-node-cidrs",
    "node-cidr-mask-size",
    "node-cidr-mask-size-ipv4",
    "node-cidr-mask-size-ipv6",
];

/// kube-controller-manager gives each node a /24 (IPv4) or /64 (IPv6) of the pod range and, for
/// IPv6, handles at most 2^16 of them; unless the user changes that in its extraArgs.
fn pod_range_size_rule() -> Rule {
    let flags = cel_list(NODE_RANGE_FLAGS);
    Rule::new(format!(
        "!has(self.network) || !isCIDR(self.network.podCIDR) || \
         (has(self.controlPlane) && has(self.controlPlane.controllerManager) && has(self.controlPlane.controllerManager.extraArgs) && \
          {flags}.exists(f, f in self.controlPlane.controllerManager.extraArgs)) || \
         (cidr(self.network.podCIDR).ip().family() == 4 ? cidr(self.network.podCIDR).prefixLength() <= 24 : \
          (cidr(self.network.podCIDR).prefixLength() >= 48 && cidr(self.network.podCIDR).prefixLength() <= 64))"
    ))
    .message("spec.network.podCIDR must be a /24 or larger for IPv4, a /48 to /64 for IPv6: kube-controller-manager gives each node a /24 or a /64 of it")
}

/// Bounds the requests and limits maps so that CEL rules over them fit the apiserver's cost
/// budget: 16 resource names, quantities of at most 64 characters.
fn bounded_resources(schema: &mut schemars::Schema) {
    let properties = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
        .expect("ResourceRequirements has properties");
    for map in ["limits", "requests"] {
        let map = properties
            .get_mut(map)
            .and_then(serde_json::Value::as_object_mut)
            .expect("ResourceRequirements has limits and requests");
        map.insert("maxProperties".into(), 16.into());
        map.get_mut("additionalProperties")
            .and_then(serde_json::Value::as_object_mut)
            .expect("limits and requests are maps")
            .insert("maxLength".into(), 64.into());
    }
}

/// Bounds flag values so that CEL rules reading them fit the apiserver's cost budget.
fn bounded_flag_values(schema: &mut schemars::Schema) {
    schema
        .get_mut("additionalProperties")
        .and_then(serde_json::Value::as_object_mut)
        .expect("extraArgs is a map")
        .insert("maxLength".into(), 4096.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// spec.version's schema in the generated CRD: its description and its CEL rules.
    fn version_schema() -> serde_json::Value {
        let crd = serde_json::to_value(TenantControlPlane::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["version"]
            .clone()
    }

    #[test]
    fn the_version_rule_and_its_documentation_follow_the_supported_minors() {
        let schema = version_schema();
        let description = schema["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("({})", supported_range())),
            "spec.version's documentation names another range than SUPPORTED_MINORS: {description}"
        );
        let rules = schema["x-kubernetes-validations"].as_array().unwrap();
        let range = rules
            .iter()
            .find(|r| {
                r["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("supported range")
            })
            .unwrap();
        assert_eq!(
            range["message"],
            format!(
                "spec.version is outside the supported range {}",
                supported_range()
            )
        );
        let minors: Vec<String> = SUPPORTED_MINORS.map(|m| m.to_string()).collect();
        assert!(
            range["rule"]
                .as_str()
                .unwrap()
                .contains(&format!("({})", minors.join("|"))),
            "{range}"
        );
    }

    /// Every release table keyed by minor covers the supported minors, so widening the range
    /// cannot leave a minor with another minor's component.
    #[test]
    fn every_supported_minor_has_its_releases() {
        let tables: [(&str, &[(u32, &str)]); 3] = [
            (
                "konnectivity",
                &crate::controlplane::build::KONNECTIVITY_RELEASES,
            ),
            (
                "cluster-autoscaler",
                &crate::addons::autoscaler::deploy::RELEASES,
            ),
            ("coredns", &crate::tenant::COREDNS_RELEASES),
        ];
        for (component, table) in tables {
            let minors: Vec<u32> = table.iter().map(|(m, _)| *m).collect();
            assert_eq!(
                minors,
                SUPPORTED_MINORS.collect::<Vec<_>>(),
                "the {component} releases by minor"
            );
        }
    }
}
