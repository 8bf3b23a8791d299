//! The `orrery.dev/v1alpha1` API: `TenantControlPlane` and `DataStore`.
//!
//! Admission is done by the apiserver from the CEL rules and OpenAPI bounds declared here, so a bad
//! object never reaches the controller; every message names the field it is about.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Kubernetes minor versions a tenant may run. Keep in step with the `version` rule below.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 32..=34;

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
#[x_kube(validation = Rule::new(
    "!has(oldSelf.dataStore) || (has(self.dataStore) && self.dataStore == oldSelf.dataStore)"
).message("spec.dataStore is immutable once set: moving a tenant to another DataStore is not supported yet"))]
pub struct TenantControlPlaneSpec {
    /// Kubernetes version of the tenant control plane, as vMAJOR.MINOR.PATCH (v1.32.0 to v1.34.x).
    /// Upgrades go one minor version at a time; downgrades are refused.
    #[x_kube(
        validation = Rule::new(r"self.matches('^v[0-9]+\\.[0-9]+\\.[0-9]+$')")
            .message("spec.version must have the form vMAJOR.MINOR.PATCH, for example v1.34.4"),
        validation = Rule::new(r"!self.matches('^v[0-9]+\\.[0-9]+\\.[0-9]+$') || self.matches('^v1\\.(32|33|34)\\.[0-9]+$')")
            .message("spec.version is outside the supported range v1.32.0 to v1.34.x"),
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
)]
pub struct NetworkSpec {
    /// How the tenant apiserver is exposed to worker nodes and users: ClusterIP, NodePort or
    /// LoadBalancer.
    #[serde(default)]
    pub service_type: ServiceType,

    /// Port of the tenant apiserver on its Service and in the pod.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Port on which konnectivity-server accepts agents from the tenant's nodes.
    #[serde(default = "default_konnectivity_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub konnectivity_port: i32,

    /// Extra names and IP addresses for the apiserver serving certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "certSANs")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new(
        "self.all(san, isIP(san) || san.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$'))"
    ).message("each entry of spec.network.certSANs must be a DNS name (lower case, optionally starting with *.) or an IP address"))]
    pub cert_sans: Vec<CertSan>,

    /// Service CIDR of the tenant cluster. Immutable.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    #[schemars(length(max = 43))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.network.serviceCIDR must be a CIDR such as 10.96.0.0/16"),
        validation = Rule::new("self == oldSelf").message("spec.network.serviceCIDR is immutable"),
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
    pub api_server: ComponentSpec,
    /// kube-controller-manager container.
    #[serde(default)]
    pub controller_manager: ComponentSpec,
    /// kube-scheduler container.
    #[serde(default)]
    pub scheduler: ComponentSpec,
    /// konnectivity-server container.
    #[serde(default)]
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
    /// Compute resources of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra command-line flags, `--name=value` without the dashes as `name: value`. They override
    /// the flags Orrery sets, so use them with care.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
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
    pub core_dns: AddonSpec,
    /// kube-proxy DaemonSet.
    #[serde(default)]
    pub kube_proxy: AddonSpec,
    /// konnectivity-agent DaemonSet, the tenant side of the konnectivity tunnel.
    #[serde(default)]
    pub konnectivity: AddonSpec,
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
    /// Standard conditions: CertificatesReady, DataStoreReady, ControlPlaneAvailable, Ready.
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
    pub image: Option<String>,
    /// Size of each member's data volume.
    #[serde(default = "default_storage_size")]
    pub storage_size: String,
    /// Storage class of the data volumes (the cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Compute resources of each member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
