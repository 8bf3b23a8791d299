//! The disks of a tenant's volumes on KubeVirt: each a PersistentVolumeClaim (`volumeMode:
//! Block`) in the tenant's management namespace, owned by the TenantControlPlane, hot-plugged
//! into the worker VM named by the node id (a worker's Node, VM and hostname share one name)
//! through the VM's `addvolume` and `removevolume` subresources, on bus SCSI with the volume id
//! as serial.
//!
//! Only claims labelled as this tenant's volumes are disks, and only VMs labelled as this
//! tenant's are nodes: a tenant naming another tenant's disk or VM, or any other claim, finds
//! nothing.

use super::claims::quantity_bytes;
use super::infra::{Disk, Infra, Progress};
use crate::apply::{MANAGED_BY, TENANT_LABEL};
use crate::nodepool::kubevirt::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tonic::Status;

/// Labels a management claim as the disk of the volume with this id.
pub const VOLUME_LABEL: &str = "orrery.dev/csi-volume";
/// The CSI name the disk was made for.
const NAME_ANNOTATION: &str = "orrery.dev/csi-name";
/// The volume's size as created (the claim may get more).
const CAPACITY_ANNOTATION: &str = "orrery.dev/csi-capacity";

/// One tenant's disks in its management namespace.
pub struct KubeVirtInfra {
    pub client: kube::Client,
    pub namespace: String,
    pub tenant: String,
    /// The TenantControlPlane, owner of every disk: deleting the tenant deletes its disks.
    pub owner: OwnerReference,
    /// The management StorageClass of the disks; the default class when None.
    pub storage_class: Option<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{what}: {e}"))
}

impl KubeVirtInfra {
    /// The name of the management claim of volume `id`.
    pub fn claim_name(&self, id: &str) -> String {
        format!("{}-csi-{id}", self.tenant)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn is_ours<K: ResourceExt>(&self, obj: &K) -> bool {
        obj.labels().get(TENANT_LABEL) == Some(&self.tenant)
    }

    /// This tenant's VM `name`, if there is one. The name comes from the tenant (a Node name in
    /// a VolumeAttachment) and goes into URLs: anything but an object name is no VM.
    async fn vm(&self, name: &str) -> Result<Option<VirtualMachine>, Status> {
        if !is_object_name(name) {
            return Ok(None);
        }
        let vm = self
            .vms()
            .get_opt(name)
            .await
            .map_err(|e| unavailable("reading VMs", e))?;
        Ok(vm.filter(|v| self.is_ours(v)))
    }

    async fn vmi(&self, name: &str) -> Result<Option<VirtualMachineInstance>, Status> {
        if !is_object_name(name) {
            return Ok(None);
        }
        let vmi = self
            .vmis()
            .get_opt(name)
            .await
            .map_err(|e| unavailable("reading VMIs", e))?;
        Ok(vmi.filter(|v| self.is_ours(v)))
    }

    /// Calls the VM subresource `addvolume` or `removevolume`.
    async fn hotplug(&self, vm: &str, verb: &str, body: Value) -> Result<(), Status> {
        let url = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachines/{vm}/{verb}",
            self.namespace
        );
        let request = http::Request::put(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).map_err(|e| Status::internal(e.to_string()))?)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.client
            .request_text(request)
            .await
            .map_err(|e| unavailable(&format!("KubeVirt {verb} on VM {vm}"), e))?;
        Ok(())
    }
}

/// Whether `name` is a DNS-1123 subdomain, the form of a VM's name.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether VM `vm` has the volume `id` in its spec or asks for it to be added.
pub fn vm_holds(vm: &VirtualMachine, id: &str) -> bool {
    let in_spec = vm
        .spec
        .fields
        .get("template")
        .and_then(|t| t.pointer("/spec/volumes"))
        .and_then(Value::as_array)
        .is_some_and(|vols| vols.iter().any(|v| v["name"] == id));
    in_spec || pending_request(vm, id, "addVolumeOptions")
}

/// Whether VM `vm` has a request of `kind` (`addVolumeOptions`, `removeVolumeOptions`) for `id`
/// not yet carried out.
pub fn pending_request(vm: &VirtualMachine, id: &str, kind: &str) -> bool {
    vm.status
        .as_ref()
        .is_some_and(|s| s.volume_requests.iter().any(|r| r[kind]["name"] == id))
}

/// The phase of volume `id` in the VMI, if the VMI has it.
pub fn vmi_phase<'a>(vmi: &'a VirtualMachineInstance, id: &str) -> Option<&'a str> {
    vmi.status
        .as_ref()?
        .volume_status
        .iter()
        .find(|v| v.name == id)
        .map(|v| v.phase.as_deref().unwrap_or("Pending"))
}

/// The `addvolume` body that plugs disk `claim` in as volume `id`.
pub fn add_volume(id: &str, claim: &str) -> Value {
    json!({
        "name": id,
        "disk": {"name": id, "serial": id, "disk": {"bus": "scsi"}},
        "volumeSource": {"persistentVolumeClaim": {"claimName": claim, "hotpluggable": true}},
    })
}

/// The bytes of storage in `r`, if it names them.
fn storage(r: Option<&BTreeMap<String, Quantity>>) -> Option<i64> {
    r.and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(q).ok())
}

/// The size of the disk of `claim`: what it was asked for, or less while the management
/// storage is still growing it (a bound claim's status says what it holds).
fn capacity(claim: &PersistentVolumeClaim) -> Result<i64, Status> {
    let asked: i64 = claim
        .annotations()
        .get(CAPACITY_ANNOTATION)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Status::internal(format!(
                "claim {} has no {CAPACITY_ANNOTATION}",
                claim.name_any()
            ))
        })?;
    Ok(held(claim).map_or(asked, |held| held.min(asked)))
}

/// What a bound claim holds (None: not bound yet).
fn held(claim: &PersistentVolumeClaim) -> Option<i64> {
    storage(claim.status.as_ref().and_then(|s| s.capacity.as_ref()))
}

#[tonic::async_trait]
impl Infra for KubeVirtInfra {
    async fn disk(&self, id: &str) -> Result<Option<Disk>, Status> {
        let Some(claim) = self
            .claims()
            .get_opt(&self.claim_name(id))
            .await
            .map_err(|e| unavailable("reading claims", e))?
            .filter(|c| {
                self.is_ours(c) && c.labels().get(VOLUME_LABEL).map(String::as_str) == Some(id)
            })
        else {
            return Ok(None);
        };
        let capacity = capacity(&claim)?;
        let selector = format!("{TENANT_LABEL}={}", self.tenant);
        let vms = self
            .vms()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| unavailable("listing VMs", e))?;
        let vmis = self
            .vmis()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| unavailable("listing VMIs", e))?;
        // Attached where a VM holds it or a VMI still has it (a VMI may outlive its VM).
        let nodes: BTreeSet<String> = vms
            .items
            .iter()
            .filter(|vm| vm_holds(vm, id))
            .map(ResourceExt::name_any)
            .chain(
                vmis.items
                    .iter()
                    .filter(|vmi| vmi_phase(vmi, id).is_some())
                    .map(ResourceExt::name_any),
            )
            .collect();
        Ok(Some(Disk {
            id: id.into(),
            name: claim
                .annotations()
                .get(NAME_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            capacity,
            nodes,
        }))
    }

    async fn create(&self, id: &str, name: &str, capacity: i64) -> Result<Disk, Status> {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(self.claim_name(id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                    (TENANT_LABEL.into(), self.tenant.clone()),
                    (VOLUME_LABEL.into(), id.into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (NAME_ANNOTATION.into(), name.into()),
                    (CAPACITY_ANNOTATION.into(), capacity.to_string()),
                ])),
                owner_references: Some(vec![self.owner.clone()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                volume_mode: Some("Block".into()),
                storage_class_name: self.storage_class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(capacity.to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        match self.claims().create(&PostParams::default(), &claim).await {
            Ok(_) => {}
            // Made by an earlier call that did not return: the caller compared it already.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(unavailable("creating the disk's claim", e)),
        }
        Ok(Disk {
            id: id.into(),
            name: name.into(),
            capacity,
            nodes: BTreeSet::new(),
        })
    }

    async fn delete(&self, id: &str) -> Result<(), Status> {
        match self
            .claims()
            .delete(&self.claim_name(id), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(unavailable("deleting the disk's claim", e)),
        }
    }

    async fn node_exists(&self, node: &str) -> Result<bool, Status> {
        Ok(self.vm(node).await?.is_some())
    }

    async fn attach(&self, id: &str, node: &str) -> Result<Progress, Status> {
        let Some(vm) = self.vm(node).await? else {
            return Err(Status::not_found(format!("node {node} has no VM")));
        };
        if !vm_holds(&vm, id) {
            self.hotplug(node, "addvolume", add_volume(id, &self.claim_name(id)))
                .await?;
            return Ok(Progress::Pending(
                "KubeVirt is asked to plug the disk in".into(),
            ));
        }
        if pending_request(&vm, id, "removeVolumeOptions") {
            // Being unplugged (an earlier detach): plugged in again once that is through.
            return Ok(Progress::Pending(
                "the disk is being unplugged first".into(),
            ));
        }
        let vmi = self.vmi(node).await?;
        match vmi.as_ref().and_then(|v| vmi_phase(v, id)) {
            Some("Ready") => Ok(Progress::Done),
            Some(phase) => Ok(Progress::Pending(format!(
                "the disk is being plugged in ({phase})"
            ))),
            None => Ok(Progress::Pending("the VM does not run the disk yet".into())),
        }
    }

    async fn detach(&self, id: &str, node: &str) -> Result<Progress, Status> {
        if let Some(vm) = self.vm(node).await?
            && vm_holds(&vm, id)
        {
            if !pending_request(&vm, id, "removeVolumeOptions") {
                self.hotplug(node, "removevolume", json!({"name": id}))
                    .await?;
            }
            return Ok(Progress::Pending(
                "KubeVirt is asked to unplug the disk".into(),
            ));
        }
        // Detached once the running VM has let the disk go as well.
        match self
            .vmi(node)
            .await?
            .as_ref()
            .and_then(|v| vmi_phase(v, id))
        {
            Some(phase) => Ok(Progress::Pending(format!(
                "the disk is being unplugged ({phase})"
            ))),
            None => Ok(Progress::Done),
        }
    }

    async fn expand(&self, id: &str, capacity: i64) -> Result<Progress, Status> {
        let name = self.claim_name(id);
        let claim = self
            .claims()
            .get_opt(&name)
            .await
            .map_err(|e| unavailable("reading the disk's claim", e))?
            .ok_or_else(|| Status::not_found(format!("the disk's claim {name} is gone")))?;
        // Only a bound claim grows; it binds at the disk's first attach.
        let Some(held) = held(&claim) else {
            return Err(Status::failed_precondition(format!(
                "the disk's claim {name} is not bound yet (it binds when the disk is first \
                 attached): it grows after that"
            )));
        };
        let requested = storage(
            claim
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref()),
        )
        .unwrap_or(0);
        let mut patch = json!({
            "metadata": {"annotations": {CAPACITY_ANNOTATION: capacity.to_string()}},
        });
        if requested < capacity {
            patch["spec"] = json!({"resources": {"requests": {"storage": capacity.to_string()}}});
        }
        match self
            .claims()
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            // The management cluster's admission refuses: its StorageClass does not allow
            // expansion, or a quota bounds the namespace. Asking again will not help.
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                return Err(Status::invalid_argument(format!(
                    "the management cluster refuses to grow the disk's claim {name}: {}",
                    e.message
                )));
            }
            Err(e) => return Err(unavailable("growing the disk's claim", e)),
        }
        Ok(if held >= capacity {
            Progress::Done
        } else {
            Progress::Pending(format!(
                "the management storage grows its claim {name} ({held} of {capacity} bytes)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_holds_a_volume_in_its_spec_or_its_requests() {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "metadata": {"name": "w-1"},
            "spec": {"template": {"spec": {"volumes": [{"name": "boot"}, {"name": "aaaa"}]}}},
            "status": {"volumeRequests": [
                {"addVolumeOptions": {"name": "bbbb"}},
                {"removeVolumeOptions": {"name": "aaaa"}},
            ]},
        }))
        .unwrap();
        assert!(vm_holds(&vm, "aaaa"));
        assert!(vm_holds(&vm, "bbbb"));
        assert!(!vm_holds(&vm, "cccc"));
        assert!(pending_request(&vm, "aaaa", "removeVolumeOptions"));
        assert!(!pending_request(&vm, "bbbb", "removeVolumeOptions"));
    }

    #[test]
    fn a_disk_holds_what_it_was_asked_for_once_its_claim_holds_it() {
        let claim = |held: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": "t-csi-a", "annotations": {CAPACITY_ANNOTATION: "536870912"}},
                "status": held.map(|h| json!({"capacity": {"storage": h}})),
            }))
            .unwrap()
        };
        assert_eq!(capacity(&claim(None)).unwrap(), 512 << 20, "not bound yet");
        assert_eq!(
            capacity(&claim(Some("1Gi"))).unwrap(),
            512 << 20,
            "a larger volume"
        );
        assert_eq!(
            capacity(&claim(Some("256Mi"))).unwrap(),
            256 << 20,
            "still growing"
        );
    }

    #[test]
    fn the_vmi_tells_the_phase_of_a_hot_plugged_volume() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "metadata": {"name": "w-1"},
            "spec": {},
            "status": {"volumeStatus": [
                {"name": "aaaa", "phase": "Ready"},
                {"name": "bbbb"},
            ]},
        }))
        .unwrap();
        assert_eq!(vmi_phase(&vmi, "aaaa"), Some("Ready"));
        assert_eq!(vmi_phase(&vmi, "bbbb"), Some("Pending"));
        assert_eq!(vmi_phase(&vmi, "cccc"), None);
    }

    #[test]
    fn only_object_names_name_vms() {
        assert!(is_object_name("workers-x1y2z"));
        assert!(is_object_name("a.b-c"));
        for bad in [
            "",
            "../secrets",
            "a/b",
            "Workers",
            "-a",
            "a-",
            "a..b",
            &"a".repeat(64),
        ] {
            assert!(!is_object_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_disk_goes_in_on_scsi_with_the_id_as_serial() {
        let body = add_volume("0123456789abcdef0123", "t-csi-0123456789abcdef0123");
        assert_eq!(body["disk"]["serial"], "0123456789abcdef0123");
        assert_eq!(body["disk"]["disk"]["bus"], "scsi");
        assert_eq!(
            body["volumeSource"]["persistentVolumeClaim"]["claimName"],
            "t-csi-0123456789abcdef0123"
        );
    }
}
