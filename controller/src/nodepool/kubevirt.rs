//! The KubeVirt objects a pool owns, typed only as far as Orrery reads them: the spec is the
//! JSON Orrery builds, the status is read field by field. KubeVirt's own Go types are not
//! published as a Rust crate, and a full copy of its schema would be dead weight here.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The spec of a `kubevirt.io/v1` VirtualMachine, as Orrery writes it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    namespaced,
    status = "VirtualMachineStatus",
    schema = "disabled"
)]
pub struct VirtualMachineSpec {
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// What Orrery reads of a VirtualMachine's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Stopped, Starting, Running, ErrorUnschedulable, CrashLoopBackOff, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Hot-plug requests (`addvolume`, `removevolume`) not yet carried into the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_requests: Vec<Value>,
}

/// The spec of a `kubevirt.io/v1` VirtualMachineInstance: never written by Orrery.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    schema = "disabled"
)]
pub struct VirtualMachineInstanceSpec {
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// What Orrery reads of a VirtualMachineInstance's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Pending, Scheduling, Scheduled, Running, Succeeded, Failed, Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// The management Node the VM runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The state of each volume, hot-plugged ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_status: Vec<VolumeStatus>,
}

/// A volume of a running VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    /// For a hot-plugged volume: Pending, Bound, AttachedToNode, MountedToPod, Ready, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A network interface of a running VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}
