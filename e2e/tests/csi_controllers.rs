//! The CSI driver's controller side (the provisioner's and attacher's work) against a real
//! control plane: the ground's kube-apiserver, scheduler and kube-controller-manager, whose
//! PersistentVolume and attach-detach controllers hand the driver its work exactly as a
//! tenant's do. The pod runs on a kwok node (no kubelet mounts anything); the disks are loop
//! devices ([`orrery_e2e::csi_loop`]). The claim is also grown, as the resizer does (offline:
//! while no pod uses it). The live test proves the same with KubeVirt disks in a real tenant.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams};
use kube::runtime::events::{Recorder, Reporter};
use orrery::addons::csi::controller::{ControllerService, Limits, SERIAL_KEY};
use orrery::addons::csi::runner::{self, Driver};
use orrery::metrics::Metrics;
use orrery_e2e::csi_loop::LoopInfra;
use orrery_e2e::{Ground, create_namespace, delete_namespace, eventually, unique_name};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_is_provisioned_attached_detached_and_deleted_through_the_clusters_own_controllers()
-> Result<()> {
    let ground = Ground::get()?;
    let client = ground.client().await?;
    let ns = create_namespace(&client, "csi").await?;
    let node = unique_name("csi-node");
    let class = unique_name("orrery-csi");
    // A kwok node whose volumes the attach-detach controller manages (a kubelet says so with
    // this annotation), tainted so that only this test's pod lands there.
    ground.kubectl_apply(&format!(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: {node}
  annotations:
    kwok.x-k8s.io/node: fake
    volumes.kubernetes.io/controller-managed-attach-detach: "true"
  labels: {{kubernetes.io/hostname: {node}, type: kwok}}
spec:
  taints: [{{key: orrery.dev/csi-test, effect: NoSchedule}}]
status:
  allocatable: {{cpu: "4", memory: 8Gi, pods: "10"}}
  capacity: {{cpu: "4", memory: 8Gi, pods: "10"}}
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {{name: csi.orrery.dev}}
spec: {{attachRequired: true, podInfoOnMount: false}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {class}}}
provisioner: csi.orrery.dev
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
"#
    ));

    let dir = tempfile::tempdir()?;
    let infra = Arc::new(LoopInfra::new(dir.path(), &node)?);
    let driver = Arc::new(Driver {
        client: client.clone(),
        controller: ControllerService::new(infra.clone(), &ns, Limits::default()),
        recorder: Recorder::new(client.clone(), Reporter::from("orrery-csi-e2e")),
        metrics: Arc::new(Metrics::default()),
        resync: Duration::from_secs(30),
        tenant: ns.clone(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner::run(driver, stop.clone()));
    let outcome = exercise(&ground, &client, &ns, &node, &class, &infra).await;
    stop.cancel();
    task.await?;
    infra.detach_all().await?;
    // Cleanup, whatever the outcome.
    let _ = Api::<Node>::all(client.clone())
        .delete(&node, &DeleteParams::default())
        .await;
    let _ = Api::<StorageClass>::all(client.clone())
        .delete(&class, &DeleteParams::default())
        .await;
    delete_namespace(&client, &ns).await?;
    outcome
}

async fn exercise(
    ground: &Ground,
    client: &kube::Client,
    ns: &str,
    node: &str,
    class: &str,
    infra: &LoopInfra,
) -> Result<()> {
    ground.kubectl_apply(&format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: {class}
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: writer, namespace: {ns}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  tolerations: [{{key: orrery.dev/csi-test, effect: NoSchedule}}]
  containers: [{{name: c, image: writer}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#
    ));
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let attachments = Api::<VolumeAttachment>::all(client.clone());

    // The scheduler picks the node, the PV controller hands the claim to the driver, the driver
    // makes the disk and the volume, and the PV controller binds them.
    let pv_name = eventually("the claim to be bound", WAIT, || async {
        let c = claims.get("data").await.ok()?;
        let bound = c.status.as_ref()?.phase.as_deref() == Some("Bound");
        bound.then(|| c.spec?.volume_name).flatten()
    })
    .await?;
    let pv = pvs.get(&pv_name).await?;
    let handle = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .context("the volume has no CSI source")?;
    let capacity = pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).unwrap()["storage"].clone();
    assert_eq!(capacity.0, (64 << 20).to_string(), "volume size");
    assert_eq!(infra.disk_files()?.len(), 1, "one disk made");

    // The attach-detach controller asks for the volume on the node; the driver attaches it.
    let attachment = eventually("the volume to be attached", WAIT, || async {
        let list = attachments.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|va| {
            va.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str())
                && va.status.as_ref().is_some_and(|s| s.attached)
        })
    })
    .await?;
    assert_eq!(attachment.spec.node_name, node);
    let metadata = attachment
        .status
        .unwrap()
        .attachment_metadata
        .unwrap_or_default();
    assert_eq!(
        metadata.get(SERIAL_KEY),
        Some(&handle),
        "the serial goes to the node"
    );
    assert_eq!(
        infra.loop_devices().await?.len(),
        1,
        "attached as a loop device"
    );

    // Grown while its pod runs: the disk grows only detached, and the claim says it waits.
    let grow = |size: &str| {
        let out = ground.run(
            "kubectl",
            &[
                "patch",
                "pvc",
                "data",
                "-n",
                ns,
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#),
            ],
        );
        assert!(
            out.status.success(),
            "growing the claim to {size}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    grow("96Mi");
    eventually(
        "the claim to say its disk grows once detached",
        WAIT,
        || async {
            let c = claims.get("data").await.ok()?;
            let said = condition_message(&c, "Resizing")?;
            said.contains("grows while detached").then_some(())
        },
    )
    .await?;
    assert_eq!(disk_sizes(infra)?, [64 << 20], "not grown while attached");

    // The pod goes: the attachment goes, and the disk is detached.
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("writer", &DeleteParams::default().grace_period(0))
        .await?;
    let va_name = attachment.metadata.name.clone().unwrap();
    eventually("the attachment to go", WAIT, || async {
        attachments
            .get_opt(&va_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert!(infra.loop_devices().await?.is_empty(), "detached");

    // Detached, the disk grows; the volume holds the new size, and the claim waits for the
    // kubelet to grow the filesystem at the next mount.
    eventually("the volume to grow", WAIT, || async {
        let pv = pvs.get(&pv_name).await.ok()?;
        let held = pv.spec?.capacity?.get("storage")?.0.clone();
        (held == (96 << 20).to_string()).then_some(())
    })
    .await?;
    let c = claims.get("data").await?;
    let status = c.status.clone().unwrap_or_default();
    assert_eq!(
        status.allocated_resource_statuses.unwrap_or_default()["storage"],
        "NodeResizePending"
    );
    assert!(condition_message(&c, "FileSystemResizePending").is_some());
    assert_eq!(disk_sizes(infra)?, [96 << 20], "the disk grew");

    // A size the driver refuses (over 1 TiB) is marked infeasible, and the disk stays.
    grow("2Ti");
    eventually("the claim to be refused its new size", WAIT, || async {
        let c = claims.get("data").await.ok()?;
        let statuses = c.status?.allocated_resource_statuses?;
        (statuses.get("storage")? == "ControllerResizeInfeasible").then_some(())
    })
    .await?;
    assert_eq!(disk_sizes(infra)?, [96 << 20], "the disk is as it was");

    // The claim goes: the volume is released, its disk deleted, then the volume object.
    claims.delete("data", &DeleteParams::default()).await?;
    eventually("the released volume to be deleted", WAIT, || async {
        pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(infra.disk_files()?.is_empty(), "the disk is deleted");
    Ok(())
}

/// The message of the claim's condition `type_`, if it has it.
fn condition_message(claim: &PersistentVolumeClaim, type_: &str) -> Option<String> {
    let conditions = claim.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == type_)?;
    Some(c.message.clone().unwrap_or_default())
}

/// The sizes of the disks' backing files.
fn disk_sizes(infra: &LoopInfra) -> Result<Vec<u64>> {
    infra
        .disk_files()?
        .iter()
        .map(|f| Ok(std::fs::metadata(f)?.len()))
        .collect()
}
