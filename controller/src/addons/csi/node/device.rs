//! Finding a volume's disk on the node: the disk carries the volume id as its serial, and udev
//! names it after that serial in `/dev/disk/by-id`.

use crate::addons::csi::ids;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How long a lookup waits for a disk by default: udev links a hot-plugged disk a moment after
/// the kernel sees it, and the attacher reports the disk attached as soon as the VM has it.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting lookup looks again.
const POLL: Duration = Duration::from_millis(100);

/// A block device on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its node in `/dev`, with the by-id link resolved.
    pub path: PathBuf,
    /// Its device number (`st_rdev`), as mounts of it report it.
    pub number: u64,
}

/// The disk whose serial is `serial`, linked from `dir`, waiting up to `wait` for it to appear.
pub async fn find(dir: &Path, serial: &str, wait: Duration) -> io::Result<Option<Device>> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(device) = lookup(dir, serial)? {
            return Ok(Some(device));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The disk whose serial is `serial`, linked from `dir`, if it is there now.
pub fn lookup(dir: &Path, serial: &str) -> io::Result<Option<Device>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // udev creates the directory with the first disk that has an id.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| ids::device_matches(n, serial))
        {
            continue;
        }
        let path = match std::fs::canonicalize(entry.path()) {
            Ok(path) => path,
            // A link udev is removing as the disk leaves.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let meta = std::fs::metadata(&path)?;
        // Only a block device can be a disk: a stray file named like one is not used.
        if meta.file_type().is_block_device() {
            return Ok(Some(Device {
                path,
                number: meta.rdev(),
            }));
        }
    }
    Ok(None)
}

/// The size of a block device in bytes.
pub fn size(device: &Path) -> io::Result<u64> {
    // A block device's end is its size; this needs neither sysfs nor an ioctl.
    File::open(device)?.seek(SeekFrom::End(0))
}

/// The device `path` belongs to: the device itself for a device node (a published block
/// volume), else the device of the filesystem holding it.
pub fn backing(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    Ok(if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "0123456789abcdef0123";

    /// Some block device of this machine, for a link to point at.
    fn any_block_device() -> Option<PathBuf> {
        std::fs::read_dir("/dev")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
    }

    #[tokio::test]
    async fn only_a_block_device_linked_under_the_serial_is_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lookup(&dir.path().join("absent"), SERIAL).unwrap(), None);

        // A regular file named like the disk is not a disk.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join(format!("virtio-{SERIAL}"))).unwrap();
        // A dangling link is a disk leaving.
        std::os::unix::fs::symlink("/no/such", dir.path().join(format!("scsi-x_{SERIAL}")))
            .unwrap();
        assert_eq!(lookup(dir.path(), SERIAL).unwrap(), None);
        let started = Instant::now();
        assert_eq!(
            find(dir.path(), SERIAL, Duration::from_millis(250))
                .await
                .unwrap(),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(250));

        let Some(dev) = any_block_device() else {
            eprintln!("no block device on this machine: skipping the positive lookup");
            return;
        };
        let link = dir
            .path()
            .join(format!("scsi-0QEMU_QEMU_HARDDISK_{SERIAL}"));
        std::os::unix::fs::symlink(&dev, &link).unwrap();
        let found = find(dir.path(), SERIAL, Duration::ZERO)
            .await
            .unwrap()
            .expect("the linked block device");
        assert_eq!(found.path, std::fs::canonicalize(&dev).unwrap());
        assert_eq!(found.number, backing(&dev).unwrap());
        assert_eq!(lookup(dir.path(), "1123456789abcdef0123").unwrap(), None);
    }
}
