//! The CSI driver against the CSI conformance suite, csi-sanity (`e2e/ground build` builds it):
//! the driver's Controller and Node services on this machine, disks as loop devices
//! ([`orrery_e2e::csi_loop`]), real filesystems and real mounts. Needs root, as a kubelet's
//! CSI node plugin does.

use anyhow::{Context as _, Result, bail};
use orrery::addons::csi::node::{self, NodeOptions};
use orrery_e2e::csi_loop::{LoopInfra, NODE_ID, serve_controller};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The suite's tests the driver skips, each for a capability it does not offer (csi-sanity
/// skips what a driver does not advertise). A capability lost by mistake adds to this list, one
/// gained removes from it: either fails the test.
const EXPECTED_SKIPS: &[&str] = &[
    // Snapshots and clones (CREATE_DELETE_SNAPSHOT, LIST_SNAPSHOTS, CLONE_VOLUME, GET_SNAPSHOT).
    "[It] Controller Service [Controller Server] CreateVolume should create volume from an existing source snapshot",
    "[It] Controller Service [Controller Server] CreateVolume should create volume from an existing source volume",
    "[It] Controller Service [Controller Server] CreateVolume should fail when the volume source snapshot is not found",
    "[It] Controller Service [Controller Server] CreateVolume should fail when the volume source volume is not found",
    "[It] CreateSnapshot [Controller Server] should fail when no name is provided",
    "[It] CreateSnapshot [Controller Server] should fail when no source volume id is provided",
    "[It] CreateSnapshot [Controller Server] should fail when requesting to create a snapshot with already existing name and different source volume ID",
    "[It] CreateSnapshot [Controller Server] should succeed when creating a snapshot with accessibility requirements",
    "[It] CreateSnapshot [Controller Server] should succeed when creating snapshot with maximum-length name",
    "[It] CreateSnapshot [Controller Server] should succeed when requesting to create a snapshot with already existing name and same source volume ID",
    "[It] DeleteSnapshot [Controller Server] should fail when no snapshot id is provided",
    "[It] DeleteSnapshot [Controller Server] should return appropriate values (no optional values added)",
    "[It] DeleteSnapshot [Controller Server] should succeed when an invalid snapshot id is used",
    "[It] GetSnapshot [Controller Server] should return an error",
    "[It] GetSnapshot [Controller Server] should return an error when the specified snapshot id does not exist",
    "[It] GetSnapshot [Controller Server] should return snapshot that match the specified snapshot id",
    "[It] GroupController Service [GroupController VolumeGroupSnapshots] CreateVolumeGroupSnapshot should fail when no name is provided",
    "[It] GroupController Service [GroupController VolumeGroupSnapshots] DeleteVolumeGroupSnapshot should fail when no volume id is provided",
    "[It] GroupController Service [GroupController VolumeGroupSnapshots] DeleteVolumeGroupSnapshot should succeed when an invalid volume id is used",
    "[It] GroupController Service [GroupController VolumeGroupSnapshots] GetVolumeGroupSnapshot should fail when an invalid volume id is used",
    "[It] GroupController Service [GroupController VolumeGroupSnapshots] GetVolumeGroupSnapshot should fail when no volume id is provided",
    "[It] ListSnapshots [Controller Server] check the presence of new snapshots in the snapshot list",
    "[It] ListSnapshots [Controller Server] should return appropriate values (no optional values added)",
    "[It] ListSnapshots [Controller Server] should return empty when the specified snapshot id does not exist",
    "[It] ListSnapshots [Controller Server] should return empty when the specified source volume id does not exist",
    "[It] ListSnapshots [Controller Server] should return next token when a limited number of entries are requested",
    "[It] ListSnapshots [Controller Server] should return snapshots that match the specified snapshot id",
    "[It] ListSnapshots [Controller Server] should return snapshots that match the specified source volume id",
    // Group snapshots (the GroupController service).
    "[It] GroupController Service [GroupController Server] GroupControllerGetCapabilities should return appropriate capabilities",
    // Volume attribute classes and ModifyVolume (MODIFY_VOLUME).
    "[It] Controller Service [Controller Server] CreateVolume should create volume with a volume attribute class",
    "[It] Controller Service [Controller Server] CreateVolume should not create volume with an invalid volume attribute class",
    "[It] ModifyVolume [Controller Server] should fail if no volume id is given",
    "[It] ModifyVolume [Controller Server] should fail if specified mutable parameters are not supported by the volume",
    "[It] ModifyVolume [Controller Server] should fail if volume does not exist",
    "[It] ModifyVolume [Controller Server] should fail to modify a volume created with a volume attribute class if new mutable parameters are not supported by volume",
    "[It] ModifyVolume [Controller Server] should modify a volume created with a volume attribute class",
    "[It] ModifyVolume [Controller Server] should modify a volume created without a volume attribute class",
    // Listing volumes and capacity (LIST_VOLUMES, GET_CAPACITY).
    "[It] Controller Service [Controller Server] GetCapacity should return capacity (no optional values added)",
    "[It] Controller Service [Controller Server] ListVolumes check the presence of new volumes and absence of deleted ones in the volume list",
    "[It] Controller Service [Controller Server] ListVolumes pagination should detect volumes added between pages and accept tokens when the last volume from a page is deleted",
    "[It] Controller Service [Controller Server] ListVolumes should fail when an invalid starting_token is passed",
    "[It] Controller Service [Controller Server] ListVolumes should return appropriate values (no optional values added)",
    // Volume and storage health (alpha: GET_VOLUME_HEALTH, LIST_VOLUME_HEALTH, GET_STORAGE_HEALTH).
    "[It] ControllerGetVolumeHealth [Controller Server] should fail when no volume id is provided",
    "[It] ControllerGetVolumeHealth [Controller Server] should return health for a valid volume",
    "[It] ControllerListVolumeHealth [Controller Server] should return appropriate response",
    "[It] Node Service NodeGetStorageHealth should return appropriate response",
    "[It] Node Service NodeGetVolumeHealth should fail when no volume id is provided",
    "[It] Node Service NodeGetVolumeHealth should return health for a valid volume",
    // Read-only publishing checks (PUBLISH_READONLY) and several writers on one node (SINGLE_NODE_MULTI_WRITER).
    "[It] Controller Service [Controller Server] ControllerPublishVolume should fail when the volume is already published but is incompatible",
    "[It] Node Service NodePublishVolume with single node multi writer capability should fail when volume with single node single writer access mode is already mounted at a different target path",
    // An attach limit: the driver reports none (max_volumes_per_node 0).
    "[It] Controller Service [Controller Server] ControllerPublishVolume should fail when publishing more volumes than the node max attach limit",
];

#[tokio::test(flavor = "multi_thread")]
async fn csi_sanity_passes_against_the_driver() -> Result<()> {
    let sanity = std::env::var("ORRERY_CSI_SANITY")
        .ok()
        .filter(|s| !s.is_empty())
        .context(
            "ORRERY_CSI_SANITY is not set: build csi-sanity with `e2e/ground build`, then \
             eval \"$(e2e/ground env)\"",
        )?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let infra = Arc::new(LoopInfra::new(&d.join("infra"), NODE_ID)?);
    let (ctrl_sock, node_sock) = (d.join("ctrl.sock"), d.join("node.sock"));
    let stop = CancellationToken::new();
    let controller = tokio::spawn({
        let (infra, sock, stop) = (infra.clone(), ctrl_sock.clone(), stop.clone());
        async move { serve_controller(infra, &sock, stop.cancelled_owned()).await }
    });
    let node = tokio::spawn({
        let opts = NodeOptions {
            device_dir: infra.device_dir(),
            ..NodeOptions::new(NODE_ID)
        };
        let (sock, stop) = (node_sock.clone(), stop.clone());
        async move { node::serve(&sock, None, opts, stop.cancelled_owned()).await }
    });
    for sock in [&ctrl_sock, &node_sock] {
        wait_for(sock).await?;
    }

    let report = d.join("sanity.xml");
    let arg = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
    let out = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", node_sock.display()))
        .arg(format!(
            "--csi.controllerendpoint=unix://{}",
            ctrl_sock.display()
        ))
        .arg(arg("csi.stagingdir", &d.join("staging")))
        .arg(arg("csi.mountdir", &d.join("mount")))
        .arg("--csi.testvolumesize=67108864")
        .arg("--csi.testvolumeexpandsize=134217728")
        .arg(arg("ginkgo.junit-report", &report))
        .output()
        .await
        .with_context(|| format!("running {sanity}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);

    // The suite cleans up after itself: no loop device nor mount may be left by the driver.
    let leftover_loops = infra.loop_devices().await?;
    let leftover_mounts = mounts_under(d)?;
    stop.cancel();
    controller.await??;
    node.await??;
    infra.detach_all().await?;

    let xml = std::fs::read_to_string(&report)
        .with_context(|| format!("csi-sanity wrote no report; it said:\n{stdout}"))?;
    let summary = Summary::of(&xml)?;
    println!(
        "csi-sanity: {} passed, {} failed, {} skipped",
        summary.passed,
        summary.failed.len(),
        summary.skipped.len()
    );
    if !summary.failed.is_empty() || !out.status.success() {
        bail!(
            "csi-sanity failed ({}): {:#?}\n{stdout}",
            out.status,
            summary.failed
        );
    }
    let expected: BTreeSet<String> = EXPECTED_SKIPS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        summary.skipped, expected,
        "the tests csi-sanity skipped are not those of the capabilities the driver leaves out"
    );
    assert!(
        summary.passed >= 50,
        "too few tests ran: {}",
        summary.passed
    );
    assert!(
        leftover_loops.is_empty(),
        "loop devices left: {leftover_loops:?}"
    );
    assert!(
        leftover_mounts.is_empty(),
        "mounts left: {leftover_mounts:?}"
    );
    Ok(())
}

async fn wait_for(sock: &Path) -> Result<()> {
    for _ in 0..100 {
        if sock.exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} did not appear", sock.display())
}

/// Mount points under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.as_ref()))
        .map(str::to_owned)
        .collect())
}

/// What a JUnit report says, by test name.
struct Summary {
    passed: usize,
    failed: Vec<String>,
    skipped: BTreeSet<String>,
}

impl Summary {
    fn of(xml: &str) -> Result<Self> {
        let doc = roxmltree::Document::parse(xml)?;
        let mut summary = Summary {
            passed: 0,
            failed: vec![],
            skipped: BTreeSet::new(),
        };
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let name = case.attribute("name").unwrap_or_default().to_owned();
            let has = |tag: &str| case.children().any(|c| c.has_tag_name(tag));
            if has("failure") || has("error") {
                summary.failed.push(name);
            } else if has("skipped") {
                summary.skipped.insert(name);
            } else {
                summary.passed += 1;
            }
        }
        Ok(summary)
    }
}
