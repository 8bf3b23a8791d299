//! `NodePool`: a group of KubeVirt worker VMs that join one tenant cluster.
//!
//! Like TenantControlPlane, every rule is checked by the apiserver at admission and names the
//! field it is about. Durations use Go's notation restricted to whole numbers of h, m, s and ms,
//! which both CEL's `duration()` and `parse_duration` read.

use super::{bounded_flag_values, cel_list, conditions_schema, image_rule};
use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A pool of worker nodes for one tenant cluster: one KubeVirt VirtualMachine per node, joined
/// with kubeadm, kept at `replicas`, rolled on change and replaced when broken.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orrery.dev",
    version = "v1alpha1",
    kind = "NodePool",
    namespaced,
    shortname = "np",
    category = "orrery",
    status = "NodePoolStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.updatedReplicas"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)"
    ).message("spec.replicas must lie between spec.autoscaling.minReplicas and spec.autoscaling.maxReplicas"),
)]
pub struct NodePoolSpec {
    /// The TenantControlPlane, in this namespace, whose cluster the nodes join. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.controlPlaneRef is immutable: a pool cannot move to another TenantControlPlane"))]
    pub control_plane_ref: ControlPlaneRef,

    /// Number of nodes. `kubectl scale np/<name> --replicas=N` sets it; the autoscaler too, within
    /// `autoscaling`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// The virtual machine of each node. A change rolls the pool, within `strategy`.
    #[serde(default)]
    pub template: MachineTemplate,

    /// How a change of the template or of the tenant's version replaces the nodes.
    #[serde(default)]
    pub strategy: NodePoolStrategy,

    /// Bounds within which the cluster-autoscaler may set `replicas`. Without it the autoscaler
    /// leaves the pool alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// How long a VM may take from its creation to a Ready Node before it is replaced, such as
    /// 10m or 1h30m.
    #[serde(default = "default_node_startup_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = duration_rule("spec.nodeStartupTimeout"),
        validation = positive_duration_rule("spec.nodeStartupTimeout"),
    )]
    pub node_startup_timeout: String,

    /// How long a joined Node may stay NotReady before its VM is replaced, such as 5m.
    #[serde(default = "default_unhealthy_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = duration_rule("spec.unhealthyTimeout"),
        validation = positive_duration_rule("spec.unhealthyTimeout"),
    )]
    pub unhealthy_timeout: String,

    /// How long draining a Node (evicting its pods, PodDisruptionBudgets respected) may take
    /// before its VM is removed anyway, such as 5m.
    #[serde(default = "default_drain_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = duration_rule("spec.drainTimeout"),
        validation = positive_duration_rule("spec.drainTimeout"),
    )]
    pub drain_timeout: String,
}

fn default_replicas() -> i32 {
    1
}
fn default_node_startup_timeout() -> String {
    "10m".into()
}
fn default_unhealthy_timeout() -> String {
    "5m".into()
}
fn default_drain_timeout() -> String {
    "5m".into()
}

/// Reference to a TenantControlPlane in the pool's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneRef {
    /// Name of the TenantControlPlane.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DNS_SUBDOMAIN_PATTERN}')"))
        .message("spec.controlPlaneRef.name must be the name of a TenantControlPlane: lower-case letters, digits, '-' and '.'"))]
    pub name: String,
}

/// The virtual machine of each node of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplate {
    /// Virtual CPU cores of the VM.
    #[serde(default = "default_cores")]
    #[schemars(range(min = 1, max = 512))]
    pub cores: i32,

    /// Memory of the VM, at least 512Mi, such as 2Gi.
    #[serde(default = "default_memory")]
    #[schemars(extend("nullable" = false, "maxLength" = 64))]
    #[x_kube(validation = Rule::new(
        "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('512Mi'))"
    ).message("spec.template.memory must be a quantity of at least 512Mi, such as 2Gi"))]
    pub memory: Quantity,

    /// The disk the VM boots from.
    #[serde(default)]
    pub root_disk: RootDisk,

    /// More disks, each an empty PersistentVolumeClaim attached to the VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub extra_disks: Vec<ExtraDisk>,

    /// Labels of the Node, set when it registers. Keys under node-role.kubernetes.io/ (the
    /// kubelet may not set them) and orrery.dev/ (Orrery's own) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), transform = bounded_label_values)]
    #[x_kube(
        validation = Rule::new(format!(
            "self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY_PATTERN}'))"
        )).message("spec.template.nodeLabels keys must be label keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', such as example.com/pool"),
        validation = Rule::new(format!("self.all(k, self[k].matches('{LABEL_VALUE_PATTERN}'))"))
            .message("spec.template.nodeLabels values must be label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        validation = Rule::new(format!("!self.exists(k, {})", reserved_label_key("k")))
            .message(Message::Expression(format!(
                "'spec.template.nodeLabels may not set ' + self.filter(k, {})[0] + ': node-role.kubernetes.io/ labels cannot be set by the kubelet and orrery.dev/ labels are Orrery\\'s'",
                reserved_label_key("k")
            ))),
    )]
    pub node_labels: BTreeMap<String, String>,

    /// Taints of the Node, set when it registers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key", "effect"])
    )]
    pub taints: Vec<NodeTaint>,

    /// OpenSSH public keys allowed to log in to the VM, one per entry as in authorized_keys, such
    /// as `ssh-ed25519 AAAA… user@host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 8192)))]
    #[x_kube(validation = Rule::new(format!("self.all(k, k.matches('{SSH_KEY_PATTERN}'))"))
        .message("each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key: type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...), a space, base64 key, optional comment"))]
    pub ssh_authorized_keys: Vec<String>,

    /// Extra kubelet flags, `--name=value` without the dashes as `name: value`. The flags that make
    /// the node this pool's (kubeconfigs, node name, provider ID, labels and taints) are Orrery's
    /// and refused here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), transform = bounded_flag_values)]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[a-z0-9][-a-z0-9]*$'))")
            .message("spec.template.kubeletExtraArgs keys must be flag names without leading dashes, such as v or max-pods"),
        validation = reserved_kubelet_flags_rule(),
    )]
    pub kubelet_extra_args: BTreeMap<String, String>,

    /// Where in the management cluster the VMs run.
    #[serde(default)]
    pub placement: Placement,
}

impl Default for MachineTemplate {
    fn default() -> Self {
        Self {
            cores: default_cores(),
            memory: default_memory(),
            root_disk: RootDisk::default(),
            extra_disks: Vec::new(),
            node_labels: BTreeMap::new(),
            taints: Vec::new(),
            ssh_authorized_keys: Vec::new(),
            kubelet_extra_args: BTreeMap::new(),
            placement: Placement::default(),
        }
    }
}

fn default_cores() -> i32 {
    1
}
fn default_memory() -> Quantity {
    Quantity("2Gi".into())
}

/// The boot disk of a node's VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RootDisk {
    /// containerDisk image holding the worker's disk. When unset, Orrery uses its worker image for
    /// the tenant's Kubernetes version, so the pool follows the tenant's upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = image_rule("spec.template.rootDisk", "self"))]
    pub image: Option<String>,

    /// Copy the image into a PersistentVolumeClaim of this size and boot from it, so the disk
    /// keeps what the node writes across VM restarts. When unset the VM boots from the
    /// containerDisk directly and starts from the image on every restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentDisk>,
}

/// A PersistentVolumeClaim backing a disk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentDisk {
    /// Size of the claim, such as 20Gi.
    #[schemars(extend("maxLength" = 64))]
    #[x_kube(validation = positive_quantity_rule("spec.template.rootDisk.persistentVolume.size"))]
    pub size: Quantity,
    /// StorageClass of the claim (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// An empty disk attached to each VM of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtraDisk {
    /// Name of the disk inside the VM's definition, unique in the pool; the guest sees it with
    /// this serial number. `root` and `cloudinit` are the VM's own disks.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new(format!("self.matches('{DNS_LABEL_PATTERN}')"))
            .message("spec.template.extraDisks[].name must be a DNS label: lower-case letters, digits and '-'"),
        validation = Rule::new(format!("!(self in {})", cel_list(RESERVED_DISK_NAMES)))
            .message(Message::Message(format!("spec.template.extraDisks[].name must not be {}: the VM's own disks have those names", RESERVED_DISK_NAMES.join(" or ")))),
    )]
    pub name: String,
    /// Size of the disk, such as 10Gi.
    #[schemars(extend("maxLength" = 64))]
    #[x_kube(validation = positive_quantity_rule("spec.template.extraDisks[].size"))]
    pub size: Quantity,
    /// StorageClass of the disk's claim (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Names of the disks Orrery gives every VM of a pool.
pub const RESERVED_DISK_NAMES: &[&str] = &["root", "cloudinit"];

/// A taint of the pool's Nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeTaint {
    /// Key of the taint, a label key.
    #[schemars(length(min = 1, max = 317))]
    #[x_kube(validation = Rule::new(format!("self.matches('{LABEL_KEY_PATTERN}')"))
        .message("spec.template.taints[].key must be a label key such as example.com/dedicated"))]
    pub key: String,
    /// Value of the taint, a label value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(format!("self.matches('{LABEL_VALUE_PATTERN}')"))
        .message("spec.template.taints[].value must be a label value: letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub value: Option<String>,
    /// What the taint does to pods that do not tolerate it.
    pub effect: TaintEffect,
}

/// The effect of a taint.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    /// New pods are not scheduled onto the node.
    NoSchedule,
    /// The scheduler avoids the node for new pods.
    PreferNoSchedule,
    /// Running pods are evicted and new ones not scheduled.
    NoExecute,
}

/// Where the VMs of a pool run in the management cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a management-cluster node must have to run the VMs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints of management-cluster nodes the VMs tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// How a pool replaces its nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStrategy {
    /// The kind of replacement; RollingUpdate is the only one.
    #[serde(default, rename = "type")]
    pub type_: StrategyType,
    /// Bounds of a rolling update.
    #[serde(default)]
    pub rolling_update: RollingUpdateStrategy,
}

/// The kinds of node replacement.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum StrategyType {
    /// New nodes are created and old ones drained and removed a few at a time.
    #[default]
    RollingUpdate,
}

/// Bounds of a rolling update, as for a Deployment: a number of nodes or a percentage of
/// `replicas` (maxSurge rounds up, maxUnavailable down). Not nullable, so that a null is
/// replaced by the default rather than kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(format!(
    "!({} && {})", is_zero("self.maxSurge"), is_zero("self.maxUnavailable")
)).message("spec.strategy.rollingUpdate.maxSurge and spec.strategy.rollingUpdate.maxUnavailable must not both be 0: the rollout could not make progress"))]
pub struct RollingUpdateStrategy {
    /// How many nodes above `replicas` may exist during a rollout, such as 1 or 25%.
    #[serde(default = "default_max_surge")]
    #[schemars(extend("nullable" = false))]
    #[x_kube(validation = int_or_percent_rule("spec.strategy.rollingUpdate.maxSurge"))]
    pub max_surge: IntOrString,
    /// How many of `replicas` may be unavailable during a rollout or a replacement, such as 0 or
    /// 25%.
    #[serde(default = "default_max_unavailable")]
    #[schemars(extend("nullable" = false))]
    #[x_kube(validation = int_or_percent_rule("spec.strategy.rollingUpdate.maxUnavailable"))]
    pub max_unavailable: IntOrString,
}

impl Default for RollingUpdateStrategy {
    fn default() -> Self {
        Self {
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_max_surge() -> IntOrString {
    IntOrString::Int(1)
}
fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(0)
}

/// Bounds for the cluster-autoscaler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// Fewest nodes the autoscaler may leave.
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most nodes the autoscaler may create.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
}

/// Observed state of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// VMs of the pool, not counting those being deleted.
    #[serde(default)]
    pub replicas: i32,
    /// Nodes that are Ready in the tenant.
    #[serde(default)]
    pub ready_replicas: i32,
    /// VMs made from the current template and version.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready nodes made from the current template and version.
    #[serde(default)]
    pub available_replicas: i32,
    /// Label selector of the pool's VMs, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Kubelet version the pool runs; during an upgrade, the oldest one still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The pool's VMs and their nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub machines: Vec<MachineStatus>,
    /// Standard conditions: Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One VM of a pool and its node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Name of the VirtualMachine.
    pub name: String,
    /// Name of its Node in the tenant, once it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where the machine is in its life.
    pub phase: MachinePhase,
    /// Kubelet version it runs or is being created with.
    pub version: String,
    /// Hash of the template and version it was made from.
    pub template_hash: String,
    /// When it entered its phase.
    pub since: Time,
    /// Why it is in its phase, when not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The life of a machine.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MachinePhase {
    /// The VM is being created or is booting.
    Provisioning,
    /// The VM runs and its node is joining the tenant.
    Joining,
    /// The node is Ready in the tenant.
    Ready,
    /// The node joined but is not Ready.
    NotReady,
    /// The node is being drained and the VM deleted.
    Deleting,
}

/// Kubelet flags Orrery sets for every node of a pool.
pub const KUBELET_RESERVED_FLAGS: &[&str] = &[
    // `kubeadm join` writes the kubelet's configuration and kubeconfigs.
    "bootstrap-kubeconfig",
    "config",
    "kubeconfig",
    // The Node's name is the VM's, and its provider ID kubevirt://<vm>: the cloud controller and
    // the autoscaler find the VM through them.
    "hostname-override",
    "provider-id",
    // Set through spec.template.nodeLabels and spec.template.taints.
    "node-labels",
    "register-with-taints",
];

/// A DNS-1123 subdomain, the form of object names.
const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS-1123 label.
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A label key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters.
/// With the name bounded, a key of at most 317 characters has a prefix of at most 253.
pub const LABEL_KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 characters starting and ending with a letter or digit.
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";
/// One authorized_keys line without options: key type, base64 blob, optional comment. `.` does
/// not match a newline, so one entry is one line of the file.
pub const SSH_KEY_PATTERN: &str = "^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh[.]com) [A-Za-z0-9+/]+=* ?.*$";
/// Go's duration notation, whole numbers of hours, minutes, seconds and milliseconds only.
pub const DURATION_PATTERN: &str = "^([0-9]{1,6}(h|ms|m|s))+$";

/// CEL: the label key `k` is under a prefix Orrery refuses.
fn reserved_label_key(k: &str) -> String {
    format!(
        "{k}.startsWith('node-role.kubernetes.io/') || {k}.startsWith('orrery.dev/') || {k}.matches('^[^/]*[.]orrery[.]dev/')"
    )
}

/// Bounds node label values so that the rules reading them fit the apiserver's cost budget.
fn bounded_label_values(schema: &mut schemars::Schema) {
    schema
        .get_mut("additionalProperties")
        .and_then(serde_json::Value::as_object_mut)
        .expect("nodeLabels is a map")
        .insert("maxLength".into(), 63.into());
}

/// `kubeletExtraArgs` may not name a flag of `KUBELET_RESERVED_FLAGS`.
fn reserved_kubelet_flags_rule() -> Rule {
    let reserved = cel_list(KUBELET_RESERVED_FLAGS);
    Rule::new(format!("{reserved}.all(f, !(f in self))")).message(Message::Expression(format!(
        "'spec.template.kubeletExtraArgs may not set ' + {reserved}.filter(f, f in self)[0] + ': Orrery sets it for every node of the pool'"
    )))
}

/// The quantity at `self` parses and is above zero.
fn positive_quantity_rule(path: &str) -> Rule {
    Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))")
        .message(Message::Message(format!(
            "{path} must be a quantity above zero, such as 10Gi"
        )))
}

/// CEL: the int-or-string at `at` is zero (0 or 0%).
fn is_zero(at: &str) -> String {
    format!("(type({at}) == int ? {at} == 0 : string({at}).matches('^0+%$'))")
}

/// The int-or-string at `self` is a non-negative number or a whole percentage.
fn int_or_percent_rule(path: &str) -> Rule {
    Rule::new("type(self) == int ? int(self) >= 0 : string(self).matches('^[0-9]+%$')").message(
        Message::Message(format!(
            "{path} must be a number of nodes (0 or more) or a percentage such as 25%"
        )),
    )
}

/// The string at `self` is a duration of `DURATION_PATTERN`.
fn duration_rule(path: &str) -> Rule {
    Rule::new(format!("self.matches('{DURATION_PATTERN}')")).message(Message::Message(format!(
        "{path} must be a duration in whole h, m, s or ms, such as 10m or 1h30m"
    )))
}

/// The duration at `self`, when well formed, is longer than zero.
fn positive_duration_rule(path: &str) -> Rule {
    Rule::new(format!(
        "!self.matches('{DURATION_PATTERN}') || duration(self) > duration('0s')"
    ))
    .message(Message::Message(format!("{path} must be longer than 0s")))
}

/// Reads a duration of the form the CRD admits (`DURATION_PATTERN`), such as 10m or 1h30m.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 6 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total += unit * u32::try_from(value).ok()?;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn durations_read_as_the_crd_admits_them() {
        let s = Duration::from_secs;
        let cases: Vec<(&str, Option<Duration>)> = vec![
            ("10m", Some(s(600))),
            ("5m", Some(s(300))),
            ("1h30m", Some(s(5400))),
            ("90s", Some(s(90))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1m500ms", Some(Duration::from_millis(60_500))),
            // Go allows repeats and any order; so does DURATION_PATTERN.
            ("30s1m", Some(s(90))),
            ("0s", Some(Duration::ZERO)),
            ("999999h", Some(s(999_999 * 3600))),
            ("1000000h", None),
            ("", None),
            ("10", None),
            ("m", None),
            ("1.5h", None),
            ("-1m", None),
            ("1d", None),
            ("10 m", None),
            ("10M", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn defaults_fill_an_almost_empty_pool() {
        let spec: NodePoolSpec =
            serde_json::from_value(serde_json::json!({"controlPlaneRef": {"name": "demo"}}))
                .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.template, MachineTemplate::default());
        assert_eq!(spec.template.cores, 1);
        assert_eq!(spec.template.memory, Quantity("2Gi".into()));
        assert_eq!(spec.template.root_disk.image, None);
        assert_eq!(spec.strategy.type_, StrategyType::RollingUpdate);
        assert_eq!(spec.strategy.rolling_update.max_surge, IntOrString::Int(1));
        assert_eq!(
            spec.strategy.rolling_update.max_unavailable,
            IntOrString::Int(0)
        );
        assert_eq!(spec.autoscaling, None);
        for (text, secs) in [
            (&spec.node_startup_timeout, 600),
            (&spec.unhealthy_timeout, 300),
            (&spec.drain_timeout, 300),
        ] {
            assert_eq!(parse_duration(text), Some(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn the_crd_has_the_scale_subresource_and_columns() {
        let crd = NodePool::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["np".to_string()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["orrery".to_string()]));
        let version = &crd.spec.versions[0];
        let scale = version
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Desired", "Ready", "Updated", "Version", "Age"]);
    }
}
