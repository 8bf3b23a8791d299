//! Tests of the Node service: request checks as tables, the services on real sockets, and, as
//! root, a whole volume's life on a loop device.

use super::*;
use crate::addons::csi::proto::csi::identity_client::IdentityClient;
use crate::addons::csi::proto::csi::node_client::NodeClient;
use crate::addons::csi::proto::csi::volume_capability::access_mode::Mode;
use crate::addons::csi::proto::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume,
};
use crate::addons::csi::proto::csi::{CapacityRange, GetPluginInfoRequest, VolumeCapability};
use crate::addons::csi::proto::registration::registration_client::RegistrationClient;
use crate::addons::csi::proto::registration::{InfoRequest, RegistrationStatus};
use std::os::unix::fs::MetadataExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const ID: &str = "0123456789abcdef0123";

fn mount_cap(mode: Mode, fs_type: &str) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            ..Default::default()
        })),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

fn writer() -> Option<VolumeCapability> {
    Some(mount_cap(Mode::SingleNodeWriter, ""))
}

/// Asserts `got` is OK (`want` None) or fails with `want`'s code and a message holding its text.
fn expect<T: std::fmt::Debug>(name: &str, got: Result<T, Status>, want: Option<(Code, &str)>) {
    match (got, want) {
        (Ok(_), None) => {}
        (Err(s), Some((code, text))) => {
            assert_eq!(s.code(), code, "{name}: {}", s.message());
            assert!(
                s.message().contains(text),
                "{name}: {:?} lacks {text:?}",
                s.message()
            );
        }
        (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn requests_lacking_a_field_are_invalid_whatever_their_id() {
    use Code::{InvalidArgument as Invalid, NotFound};
    let stage = |volume_id: &str, staging_target_path: &str, volume_capability| {
        check_stage(&NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging_target_path.into(),
            volume_capability,
            ..Default::default()
        })
    };
    let publish = |volume_id: &str, target_path: &str, staging: &str, volume_capability| {
        check_publish(&NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target_path.into(),
            staging_target_path: staging.into(),
            volume_capability,
            ..Default::default()
        })
    };
    let cases = [
        ("stage ok", stage(ID, "/s", writer()).err(), None),
        (
            "stage no id",
            stage("", "/s", writer()).err(),
            Some((Invalid, "volume_id is required")),
        ),
        (
            "stage no path",
            stage("fake-vol-id", "", writer()).err(),
            Some((Invalid, "staging_target_path is required")),
        ),
        (
            "stage relative path",
            stage(ID, "s", writer()).err(),
            Some((Invalid, "\"s\" is not an absolute path")),
        ),
        (
            "stage no capability, real id",
            stage(ID, "/s", None).err(),
            Some((Invalid, "volume_capability is required")),
        ),
        (
            "stage unknown id",
            stage("fake-vol-id", "/s", writer()).err(),
            Some((NotFound, "\"fake-vol-id\" does not exist")),
        ),
        (
            "stage multi-node",
            stage(ID, "/s", Some(mount_cap(Mode::MultiNodeMultiWriter, ""))).err(),
            Some((
                Invalid,
                "volume_capability.access_mode MULTI_NODE_MULTI_WRITER",
            )),
        ),
        ("publish ok", publish(ID, "/t", "/s", writer()).err(), None),
        (
            "publish no id",
            publish("", "/t", "/s", writer()).err(),
            Some((Invalid, "volume_id")),
        ),
        (
            "publish no target",
            publish("fake-vol-id", "", "/s", None).err(),
            Some((Invalid, "target_path is required")),
        ),
        (
            "publish no capability, unknown id",
            publish("fake-vol-id", "/t", "", None).err(),
            Some((Invalid, "volume_capability is required")),
        ),
        (
            "publish no staging path",
            publish(ID, "/t", "", writer()).err(),
            Some((Invalid, "staging_target_path is required")),
        ),
        (
            "publish unknown id",
            publish("fake-vol-id", "/t", "/s", writer()).err(),
            Some((NotFound, "does not exist")),
        ),
    ];
    for (name, got, want) in cases {
        expect(name, got.map_or(Ok(()), Err), want);
    }

    let unstage = |volume_id: &str, staging_target_path: &str| {
        check_unstage(&NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging_target_path.into(),
        })
        .err()
    };
    let unpublish = |volume_id: &str, target_path: &str| {
        check_unpublish(&NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target_path.into(),
        })
        .err()
    };
    let stats = |volume_id: &str, volume_path: &str| {
        check_stats(&NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: volume_path.into(),
            ..Default::default()
        })
        .err()
    };
    let expand = |volume_id: &str, volume_path: &str, volume_capability| {
        check_expand(&NodeExpandVolumeRequest {
            volume_id: volume_id.into(),
            volume_path: volume_path.into(),
            volume_capability,
            ..Default::default()
        })
        .err()
    };
    let cases = [
        // Cleanup after csi-sanity's tests unstages and unpublishes ids of any form.
        ("unstage any id", unstage("fake-vol-id", "/s"), None),
        (
            "unstage no id",
            unstage("", "/s"),
            Some((Invalid, "volume_id is required")),
        ),
        (
            "unstage no path",
            unstage(ID, ""),
            Some((Invalid, "staging_target_path is required")),
        ),
        ("unpublish any id", unpublish("fake-vol-id", "/t"), None),
        (
            "unpublish no id",
            unpublish("", "/t"),
            Some((Invalid, "volume_id is required")),
        ),
        (
            "unpublish no path",
            unpublish(ID, ""),
            Some((Invalid, "target_path is required")),
        ),
        ("stats ok", stats(ID, "/t"), None),
        // Relative paths are looked at, and found missing: NOT_FOUND, as csi-sanity expects.
        ("stats relative path", stats(ID, "some/path"), None),
        (
            "stats no id",
            stats("", "some/path"),
            Some((Invalid, "volume_id is required")),
        ),
        (
            "stats no path",
            stats("fake-vol-id", ""),
            Some((Invalid, "volume_path is required")),
        ),
        (
            "stats unknown id",
            stats("fake-vol-id", "some/path"),
            Some((NotFound, "does not exist")),
        ),
        ("expand without capability", expand(ID, "/t", None), None),
        (
            "expand no id",
            expand("", "/t", writer()),
            Some((Invalid, "volume_id is required")),
        ),
        (
            "expand no path, real id",
            expand(ID, "", writer()),
            Some((Invalid, "volume_path is required")),
        ),
        (
            "expand bad capability",
            expand(ID, "/t", Some(mount_cap(Mode::SingleNodeWriter, "btrfs"))),
            Some((Invalid, "volume_capability.mount.fs_type")),
        ),
        (
            "expand unknown id",
            expand("fake-vol-id", "some/path", None),
            Some((NotFound, "does not exist")),
        ),
    ];
    for (name, got, want) in cases {
        expect(name, got.map_or(Ok(()), Err), want);
    }
}

#[test]
fn publishing_is_read_only_when_asked_either_way() {
    let read_only = |readonly, mode| {
        check_publish(&NodePublishVolumeRequest {
            volume_id: ID.into(),
            target_path: "/t".into(),
            staging_target_path: "/s".into(),
            volume_capability: Some(mount_cap(mode, "")),
            readonly,
            ..Default::default()
        })
        .unwrap()
        .read_only
    };
    assert!(!read_only(false, Mode::SingleNodeWriter));
    assert!(read_only(true, Mode::SingleNodeWriter));
    assert!(read_only(false, Mode::SingleNodeReaderOnly));
}

#[test]
fn a_taken_path_is_already_exists() {
    let device = Device {
        path: "/dev/loop0".into(),
        number: rustix::fs::makedev(7, 0),
    };
    let found = |major, fs_type: &str, options: &str| mount::MountInfo {
        major,
        minor: 0,
        root: "/".into(),
        mount_point: "/s".into(),
        options: options.into(),
        fs_type: fs_type.into(),
        source: format!("/dev/x{major}"),
    };
    let cases = [
        (
            "same",
            check_staged(&found(7, "ext4", "rw"), &device, "ext4", false),
            None,
        ),
        (
            "same, read-only",
            check_staged(&found(7, "ext4", "ro,relatime"), &device, "ext4", true),
            None,
        ),
        (
            "other device",
            check_staged(&found(8, "ext4", "rw"), &device, "ext4", false),
            Some((Code::AlreadyExists, "another device (/dev/x8)")),
        ),
        (
            "other fs",
            check_staged(&found(7, "xfs", "rw"), &device, "ext4", false),
            Some((Code::AlreadyExists, "staged as xfs, not ext4")),
        ),
        (
            "other mode",
            check_staged(&found(7, "ext4", "ro"), &device, "ext4", false),
            Some((Code::AlreadyExists, "already staged read-only")),
        ),
        (
            "published",
            check_published(Path::new("/t"), device.number, false, &device, false),
            None,
        ),
        (
            "published from another volume",
            check_published(Path::new("/t"), 1, false, &device, false),
            Some((Code::AlreadyExists, "another volume")),
        ),
        (
            "published read-write",
            check_published(Path::new("/t"), device.number, false, &device, true),
            Some((Code::AlreadyExists, "already published read-write")),
        ),
    ];
    for (name, got, want) in cases {
        expect(name, got, want);
    }
}

#[tokio::test]
async fn one_call_at_a_time_per_volume() {
    let service = NodeService::new(NodeOptions::new("n"));
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let first = tokio::spawn({
        let (service, started, release) = (service.clone(), started.clone(), release.clone());
        async move {
            service
                .exclusive(ID, async move {
                    started.notify_one();
                    release.notified().await;
                    Ok(1)
                })
                .await
        }
    });
    started.notified().await;
    let busy = service.exclusive(ID, async { Ok(2) }).await;
    expect("second call", busy, Some((Code::Aborted, "in progress")));
    let other = service
        .exclusive("1123456789abcdef0123", async { Ok(3) })
        .await;
    assert_eq!(other.unwrap(), 3, "another volume is not held up");
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(service.exclusive(ID, async { Ok(4) }).await.unwrap(), 4);
}

#[tokio::test]
async fn capabilities_and_info() {
    let mut opts = NodeOptions::new("worker-1");
    opts.max_volumes = 7;
    let service = NodeService::new(opts);
    let caps = service
        .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let types: Vec<_> = caps
        .iter()
        .map(|c| match &c.r#type {
            Some(node_service_capability::Type::Rpc(r)) => r.r#type(),
            None => rpc::Type::Unknown,
        })
        .collect();
    assert_eq!(
        types,
        [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::ExpandVolume
        ]
    );
    let info = service
        .node_get_info(Request::new(NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.max_volumes_per_node),
        ("worker-1", 7)
    );
}

#[tokio::test]
async fn unknown_volumes_are_not_found_and_missing_paths_are_fine_to_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = NodeOptions::new("n");
    opts.device_dir = dir.path().join("by-id");
    opts.device_wait = Duration::ZERO;
    let service = NodeService::new(opts);
    let stage = service
        .node_stage_volume(Request::new(NodeStageVolumeRequest {
            volume_id: ID.into(),
            staging_target_path: dir.path().join("s").to_string_lossy().into(),
            volume_capability: writer(),
            ..Default::default()
        }))
        .await;
    expect(
        "stage of a disk not attached",
        stage,
        Some((Code::NotFound, "no disk with this serial")),
    );
    let stats = service
        .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
            volume_id: ID.into(),
            volume_path: dir.path().to_string_lossy().into(),
            ..Default::default()
        }))
        .await;
    expect(
        "stats of a disk not attached",
        stats,
        Some((Code::NotFound, "no disk")),
    );
    let stats = service
        .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
            volume_id: ID.into(),
            volume_path: "some/path".into(),
            ..Default::default()
        }))
        .await;
    expect(
        "stats of a relative path",
        stats,
        Some((Code::NotFound, "some/path does not exist")),
    );
    let expand = service
        .node_expand_volume(Request::new(NodeExpandVolumeRequest {
            volume_id: ID.into(),
            volume_path: "/no/such/path".into(),
            capacity_range: Some(CapacityRange::default()),
            ..Default::default()
        }))
        .await;
    expect(
        "expand of a missing path",
        expand,
        Some((Code::NotFound, "does not exist")),
    );
    let unpublish = service
        .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
            volume_id: "fake-vol-id".into(),
            target_path: dir.path().join("never/published").to_string_lossy().into(),
        }))
        .await;
    expect("unpublish of nothing", unpublish, None);
    let unstage = service
        .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
            volume_id: ID.into(),
            staging_target_path: dir.path().join("never/staged").to_string_lossy().into(),
        }))
        .await;
    expect("unstage of nothing", unstage, None);
}

#[test]
fn removing_a_target_takes_files_and_empty_directories_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    remove(&file).unwrap();
    assert!(!file.exists());
    remove(&file).unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("data"), b"keep").unwrap();
    assert!(
        remove(&full).is_err(),
        "a directory with files is never removed"
    );
    std::fs::remove_file(full.join("data")).unwrap();
    remove(&full).unwrap();
    assert!(!full.exists());
}

// ---- the services on sockets

async fn connect(socket: &Path) -> Channel {
    let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap();
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {}", socket.display());
}

fn start(
    dir: &Path,
) -> (
    PathBuf,
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let csi = dir.join("plugins/csi.orrery.dev/csi.sock");
    let reg = dir.join("plugins_registry/csi.orrery.dev-reg.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let registration = RegistrationOptions {
        socket: reg.clone(),
        endpoint: "/var/lib/kubelet/plugins/csi.orrery.dev/csi.sock".into(),
    };
    let server = tokio::spawn({
        let csi = csi.clone();
        async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            serve(
                &csi,
                Some(registration),
                NodeOptions::new("worker-1"),
                shutdown,
            )
            .await
        }
    });
    (csi, reg, stop, server)
}

async fn ended(server: tokio::task::JoinHandle<io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
}

#[tokio::test]
async fn serves_both_sockets_and_removes_them_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (csi, reg, stop, server) = start(dir.path());
    let channel = connect(&csi).await;
    let info = IdentityClient::new(channel.clone())
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.orrery.dev");
    let node = NodeClient::new(channel)
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, "worker-1");
    let mut kubelet = RegistrationClient::new(connect(&reg).await);
    let plugin = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        plugin.endpoint,
        "/var/lib/kubelet/plugins/csi.orrery.dev/csi.sock"
    );
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();

    stop.send(()).unwrap();
    ended(server).await.unwrap();
    assert!(!csi.exists() && !reg.exists(), "both sockets are removed");
}

#[tokio::test]
async fn a_refused_registration_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (csi, reg, _stop, server) = start(dir.path());
    RegistrationClient::new(connect(&reg).await)
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "version 9 unsupported".into(),
        })
        .await
        .unwrap();
    let e = ended(server).await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(!csi.exists() && !reg.exists(), "both sockets are removed");
}

// ---- a volume's life on a loop device (root only)

/// A loop device over a sparse image, linked as `<dir>/by-id/orrery-loop-<ID>` the way udev
/// links a disk by serial. Dropping it unmounts whatever is still mounted under its directory
/// (a failed test leaves mounts) and detaches the loop device.
struct LoopDisk {
    dir: tempfile::TempDir,
    image: PathBuf,
    device: PathBuf,
}

impl LoopDisk {
    fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output();
        let device = match out {
            Ok(out) if out.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
            other => {
                panic!("no loop device (the node plugin's tests need root and losetup): {other:?}")
            }
        };
        let by_id = dir.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        let disk = Self { dir, image, device };
        std::os::unix::fs::symlink(&disk.device, by_id.join(format!("orrery-loop-{ID}"))).unwrap();
        disk
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Grows the disk, as a PVC expansion does while it is detached.
    fn grow(&self, size: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let ok = std::process::Command::new("losetup")
            .arg("--set-capacity")
            .arg(&self.device)
            .status()
            .unwrap()
            .success();
        assert!(ok, "losetup --set-capacity");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::canonicalize(self.dir.path()) {
            let table = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
            for m in mount::parse_mountinfo(&table).iter().rev() {
                if m.mount_point.starts_with(&dir) {
                    let _ = mount::unmount_all(&m.mount_point);
                }
            }
        }
        let _ = std::process::Command::new("losetup")
            .arg("--detach")
            .arg(&self.device)
            .status();
    }
}

/// Calls the service as the kubelet does, by path.
struct Kubelet(NodeService);

impl Kubelet {
    async fn stage(&self, staging: &Path, cap: VolumeCapability) -> Result<(), Status> {
        self.0
            .node_stage_volume(Request::new(NodeStageVolumeRequest {
                volume_id: ID.into(),
                staging_target_path: staging.to_string_lossy().into(),
                volume_capability: Some(cap),
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn unstage(&self, staging: &Path) -> Result<(), Status> {
        self.0
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: ID.into(),
                staging_target_path: staging.to_string_lossy().into(),
            }))
            .await
            .map(drop)
    }

    async fn publish(
        &self,
        staging: &Path,
        target: &Path,
        cap: VolumeCapability,
        readonly: bool,
    ) -> Result<(), Status> {
        self.0
            .node_publish_volume(Request::new(NodePublishVolumeRequest {
                volume_id: ID.into(),
                staging_target_path: staging.to_string_lossy().into(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn unpublish(&self, target: &Path) -> Result<(), Status> {
        self.0
            .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
                volume_id: ID.into(),
                target_path: target.to_string_lossy().into(),
            }))
            .await
            .map(drop)
    }

    async fn stats(&self, path: &Path) -> Result<Vec<VolumeUsage>, Status> {
        self.0
            .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
                volume_id: ID.into(),
                volume_path: path.to_string_lossy().into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().usage)
    }

    async fn expand(&self, path: &Path, cap: Option<VolumeCapability>) -> Result<i64, Status> {
        self.0
            .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                volume_id: ID.into(),
                volume_path: path.to_string_lossy().into(),
                volume_capability: cap,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().capacity_bytes)
    }
}

const MIB: u64 = 1 << 20;

/// Stage, publish, write, unpublish, unstage; grow the disk; stage and publish again and read
/// the file back; then the same disk as a raw block device.
async fn volume_life(fs_type: &str, size: u64) {
    let disk = LoopDisk::new(size);
    let mut opts = NodeOptions::new("worker-1");
    opts.device_dir = disk.path("by-id");
    opts.device_wait = Duration::ZERO;
    let kubelet = Kubelet(NodeService::new(opts));
    let cap = mount_cap(Mode::SingleNodeWriter, fs_type);
    let staging = disk.path("staging");
    let target = disk.path("pods/p1/volumes/data");

    for _ in 0..2 {
        kubelet.stage(&staging, cap.clone()).await.unwrap();
    }
    let staged = mount::mounted_at(&staging).unwrap().expect("staged");
    assert_eq!(staged.fs_type, fs_type);
    assert_eq!(std::fs::canonicalize(&staged.source).unwrap(), disk.device);
    for _ in 0..2 {
        kubelet
            .publish(&staging, &target, cap.clone(), false)
            .await
            .unwrap();
    }
    std::fs::write(target.join("proof"), b"orrery").unwrap();
    let usage = kubelet.stats(&target).await.unwrap();
    assert_eq!(usage.len(), 2);
    let total = usage[0].total;
    assert!(
        total > 0 && usage[0].used > 0 && usage[1].total > 0,
        "{usage:?}"
    );

    // Read-only, whether asked by the request or the mode.
    let ro = disk.path("pods/p2/volumes/data");
    kubelet
        .publish(&staging, &ro, cap.clone(), true)
        .await
        .unwrap();
    assert_eq!(std::fs::read(ro.join("proof")).unwrap(), b"orrery");
    let e = std::fs::write(ro.join("other"), b"x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    let again = kubelet.publish(&staging, &ro, cap.clone(), false).await;
    expect(
        "republish read-write",
        again,
        Some((Code::AlreadyExists, "read-only")),
    );
    kubelet.unpublish(&ro).await.unwrap();

    // A staging path that holds another filesystem is taken.
    let busy = disk.path("busy");
    std::fs::create_dir(&busy).unwrap();
    let no_options = MountOptions::parse::<&str>(&[], false);
    mount::mount(Path::new("tmpfs"), &busy, "tmpfs", &no_options).unwrap();
    let taken = kubelet.stage(&busy, cap.clone()).await;
    expect(
        "stage on a tmpfs",
        taken,
        Some((Code::AlreadyExists, "another device (tmpfs)")),
    );
    mount::unmount_all(&busy).unwrap();

    for _ in 0..2 {
        kubelet.unpublish(&target).await.unwrap();
    }
    assert!(!target.exists(), "unpublish removes the target");
    for _ in 0..2 {
        kubelet.unstage(&staging).await.unwrap();
    }
    assert_eq!(mount::mounted_at(&staging).unwrap(), None);

    let other = if fs_type == "xfs" { "ext4" } else { "xfs" };
    let wrong = kubelet
        .stage(&staging, mount_cap(Mode::SingleNodeWriter, other))
        .await;
    expect(
        "stage as another fs",
        wrong,
        Some((Code::FailedPrecondition, "filesystem, not")),
    );

    // Offline expansion: the disk grows while unstaged, staging grows the filesystem.
    let grown = size + 32 * MIB;
    disk.grow(grown);
    kubelet.stage(&staging, cap.clone()).await.unwrap();
    let target = disk.path("pods/p3/volumes/data");
    kubelet
        .publish(&staging, &target, cap.clone(), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(target.join("proof")).unwrap(), b"orrery");
    let bigger = kubelet.stats(&target).await.unwrap()[0].total;
    assert!(bigger > total, "{bigger} > {total}");
    assert_eq!(kubelet.expand(&target, None).await.unwrap(), grown as i64);
    kubelet.unpublish(&target).await.unwrap();
    kubelet.unstage(&staging).await.unwrap();

    // The same disk as a raw device, on a file the driver creates.
    let device = disk.path("pods/p4/volumeDevices/dev");
    kubelet.stage(&staging, block_cap()).await.unwrap();
    assert_eq!(
        mount::mounted_at(&staging).unwrap(),
        None,
        "nothing to mount"
    );
    for _ in 0..2 {
        kubelet
            .publish(&staging, &device, block_cap(), false)
            .await
            .unwrap();
    }
    let meta = std::fs::metadata(&device).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), std::fs::metadata(&disk.device).unwrap().rdev());
    let usage = kubelet.stats(&device).await.unwrap();
    assert_eq!((usage.len(), usage[0].total), (1, grown as i64));
    assert_eq!(
        kubelet.expand(&device, Some(block_cap())).await.unwrap(),
        grown as i64
    );
    // Stats of the volume at a path that is not it.
    let elsewhere = kubelet.stats(disk.dir.path()).await;
    expect(
        "stats elsewhere",
        elsewhere,
        Some((Code::NotFound, "is not at")),
    );
    kubelet.unpublish(&device).await.unwrap();
    assert!(!device.exists(), "unpublish removes the device file");
    kubelet.unstage(&staging).await.unwrap();
}

#[tokio::test]
async fn an_ext4_volume_lives_on_a_loop_device() {
    volume_life("ext4", 64 * MIB).await;
}

#[tokio::test]
async fn an_xfs_volume_lives_on_a_loop_device() {
    let has_xfs = std::process::Command::new("mkfs.xfs")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_xfs,
        "mkfs.xfs is not installed: e2e/install-deps installs xfsprogs"
    );
    // mkfs.xfs refuses filesystems under 300 MiB.
    volume_life("xfs", 320 * MIB).await;
}
