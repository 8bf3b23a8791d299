//! The CSI driver's Controller and Node services on one machine, for the conformance suite: the
//! driver's own services, with each disk a sparse file and each attach a loop device linked by
//! its serial, as udev links a hot-plugged disk in a worker VM. Only the disks differ from a
//! tenant's (KubeVirt there); the CSI rules, the formatting and the mounts are the driver's.

use anyhow::{Context as _, Result, bail};
use orrery::addons::csi::controller::{ControllerService, Limits};
use orrery::addons::csi::identity::IdentityService;
use orrery::addons::csi::infra::{Disk, Infra, Progress};
use orrery::addons::csi::proto::csi::controller_server::ControllerServer;
use orrery::addons::csi::proto::csi::identity_server::IdentityServer;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::process::Command;
use tonic::Status;

/// The node id the conformance test's loop machine answers to.
pub const NODE_ID: &str = "csi-loop-node";

struct LoopDisk {
    disk: Disk,
    /// The loop device while attached.
    device: Option<String>,
}

/// Disks as sparse files in `<dir>/disks`, attached as loop devices linked from
/// `<dir>/by-id/orrery-loop-<serial>`.
pub struct LoopInfra {
    dir: PathBuf,
    /// The one node disks attach to; any other is unknown.
    node: String,
    disks: Mutex<HashMap<String, LoopDisk>>,
}

impl LoopInfra {
    pub fn new(dir: &Path, node: &str) -> Result<Self> {
        for sub in ["disks", "by-id"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            node: node.to_owned(),
            disks: Mutex::default(),
        })
    }

    /// Where the node looks for disks by serial.
    pub fn device_dir(&self) -> PathBuf {
        self.dir.join("by-id")
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join("disks").join(format!("{id}.img"))
    }

    fn link(&self, id: &str) -> PathBuf {
        self.device_dir().join(format!("orrery-loop-{id}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LoopDisk>> {
        self.disks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Detaches every loop device still attached (a failed test leaves none behind).
    pub async fn detach_all(&self) -> Result<()> {
        let attached: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter_map(|(id, d)| Some((id.clone(), d.device.clone()?)))
            .collect();
        for (id, device) in attached {
            let _ = std::fs::remove_file(self.link(&id));
            losetup(&["--detach", &device]).await?;
            if let Some(d) = self.lock().get_mut(&id) {
                d.device = None;
                d.disk.nodes.clear();
            }
        }
        Ok(())
    }

    /// The disk files that exist.
    pub fn disk_files(&self) -> Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(self.dir.join("disks"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?)
    }

    /// The loop devices backed by this machine's disk files (none once it is cleaned up).
    pub async fn loop_devices(&self) -> Result<Vec<String>> {
        let out = losetup(&["--list", "--noheadings", "--output", "NAME,BACK-FILE"]).await?;
        let disks = self.dir.join("disks");
        Ok(out
            .lines()
            .filter(|l| l.contains(disks.to_str().unwrap_or("\u{0}")))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect())
    }
}

async fn losetup(args: &[&str]) -> Result<String> {
    let out = Command::new("losetup").args(args).output().await?;
    if !out.status.success() {
        bail!(
            "losetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{what}: {e}"))
}

#[tonic::async_trait]
impl Infra for LoopInfra {
    async fn disk(&self, id: &str) -> Result<Option<Disk>, Status> {
        Ok(self.lock().get(id).map(|d| d.disk.clone()))
    }

    async fn create(&self, id: &str, name: &str, capacity: i64) -> Result<Disk, Status> {
        let file = std::fs::File::create(self.file(id)).map_err(|e| unavailable("disk file", e))?;
        file.set_len(capacity as u64)
            .map_err(|e| unavailable("disk file", e))?;
        let disk = Disk {
            id: id.into(),
            name: name.into(),
            capacity,
            nodes: BTreeSet::new(),
        };
        self.lock().insert(
            id.into(),
            LoopDisk {
                disk: disk.clone(),
                device: None,
            },
        );
        Ok(disk)
    }

    async fn delete(&self, id: &str) -> Result<(), Status> {
        std::fs::remove_file(self.file(id)).map_err(|e| unavailable("disk file", e))?;
        self.lock().remove(id);
        Ok(())
    }

    async fn node_exists(&self, node: &str) -> Result<bool, Status> {
        Ok(node == self.node)
    }

    async fn attach(&self, id: &str, node: &str) -> Result<Progress, Status> {
        if self.lock().get(id).and_then(|d| d.device.clone()).is_some() {
            return Ok(Progress::Done);
        }
        let file = self.file(id);
        let device = losetup(&["--find", "--show", &file.to_string_lossy()])
            .await
            .map_err(|e| unavailable("losetup", e))?
            .trim()
            .to_owned();
        std::os::unix::fs::symlink(&device, self.link(id))
            .map_err(|e| unavailable("by-id link", e))?;
        if let Some(d) = self.lock().get_mut(id) {
            d.device = Some(device);
            d.disk.nodes.insert(node.into());
        }
        Ok(Progress::Done)
    }

    async fn detach(&self, id: &str, _node: &str) -> Result<Progress, Status> {
        let Some(device) = self.lock().get(id).and_then(|d| d.device.clone()) else {
            return Ok(Progress::Done);
        };
        let _ = std::fs::remove_file(self.link(id));
        losetup(&["--detach", &device])
            .await
            .map_err(|e| unavailable("losetup", e))?;
        if let Some(d) = self.lock().get_mut(id) {
            d.device = None;
            d.disk.nodes.clear();
        }
        Ok(Progress::Done)
    }

    async fn expand(&self, id: &str, capacity: i64) -> Result<Progress, Status> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.file(id))
            .map_err(|e| unavailable("disk file", e))?;
        file.set_len(capacity as u64)
            .map_err(|e| unavailable("disk file", e))?;
        if let Some(d) = self.lock().get_mut(id) {
            d.disk.capacity = capacity;
        }
        Ok(Progress::Done)
    }
}

/// Serves Identity and Controller over `infra` on the Unix socket `socket` until `stop`.
pub async fn serve_controller(
    infra: Arc<LoopInfra>,
    socket: &Path,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let incoming = orrery::addons::csi::socket::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let controller = ControllerService::new(infra, "csi-loop", Limits::default());
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService))
        .add_service(ControllerServer::new(controller))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
