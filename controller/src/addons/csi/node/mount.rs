//! Mounts on the node: what the mount table says is at a path (parsed from
//! `/proc/self/mountinfo`), and the mount, bind, read-only remount and unmount calls themselves.
//! Every call here blocks; the service runs the ones that touch the mount table off the async
//! threads.

use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The mount table of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The device the mounted filesystem lives on (`st_dev` of its files).
    pub major: u32,
    pub minor: u32,
    /// Which directory of that filesystem is mounted: `/` unless it is a bind of a subtree.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Options of this mount (`rw`, `ro`, `nosuid`…), not of the filesystem.
    pub options: String,
    pub fs_type: String,
    /// What was mounted, as the filesystem reports it (`/dev/sda`, `tmpfs`…).
    pub source: String,
}

impl MountInfo {
    /// The device number, comparable with `st_dev` and a block device's `st_rdev`.
    pub fn device(&self) -> u64 {
        rustix::fs::makedev(self.major, self.minor)
    }

    /// Whether this mount only reads.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Reads a mount table (the format of `/proc/<pid>/mountinfo`, see proc(5)), skipping lines it
/// cannot read rather than failing: one odd line must not hide the mounts that matter.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountInfo> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // Optional fields (`shared:1`, `master:2`…) come between the sixth field and a lone `-`.
    let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let [_id, _parent, dev, root, mount_point, options, ..] = fields[..] else {
        return None;
    };
    let [fs_type, source, ..] = fields[dash + 1..] else {
        return None;
    };
    let (major, minor) = std::str::from_utf8(dev).ok()?.split_once(':')?;
    Some(MountInfo {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: path(root),
        mount_point: path(mount_point),
        options: text(options),
        fs_type: text(fs_type),
        source: text(source),
    })
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// Undoes the kernel's escapes: space, tab, newline and backslash are written as `\ooo` octal.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits.filter(|d| field[i] == b'\\' && is_octal_byte(d)) {
            Some(d) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether three digits are an octal number that fits a byte (`\000` to `\377`).
fn is_octal_byte(d: &[u8]) -> bool {
    d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
}

/// The mount at `path` (the topmost, when several are stacked there), or None when `path` is not
/// a mount point or does not exist.
pub fn mounted_at(path: &Path) -> io::Result<Option<MountInfo>> {
    // The table names mount points by their real path.
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let table = std::fs::read(MOUNTINFO)?;
    Ok(parse_mountinfo(&table)
        .into_iter()
        .rfind(|m| m.mount_point == path))
}

/// How to mount a filesystem: the flags the kernel takes as bits, the rest as the filesystem's
/// own option string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MountFlags,
    pub data: Vec<String>,
}

impl MountOptions {
    /// Reads mount options as `mount -o` takes them (each entry may hold several, comma
    /// separated), and adds `ro` when `read_only`.
    pub fn parse<S: AsRef<str>>(options: &[S], read_only: bool) -> Self {
        let mut flags = if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        let mut data = Vec::new();
        let each = options.iter().flat_map(|o| o.as_ref().split(','));
        for option in each.map(str::trim).filter(|o| !o.is_empty()) {
            match flag(option) {
                Some(Some(f)) => flags |= f,
                Some(None) => {}
                None => data.push(option.to_owned()),
            }
        }
        Self { flags, data }
    }
}

/// The mount flag an option stands for: `Some(None)` for an option that asks for the default,
/// None for one the filesystem reads itself.
fn flag(option: &str) -> Option<Option<MountFlags>> {
    let f = match option {
        "ro" => MountFlags::RDONLY,
        "nosuid" => MountFlags::NOSUID,
        "nodev" => MountFlags::NODEV,
        "noexec" => MountFlags::NOEXEC,
        "noatime" => MountFlags::NOATIME,
        "nodiratime" => MountFlags::NODIRATIME,
        "relatime" => MountFlags::RELATIME,
        "strictatime" => MountFlags::STRICTATIME,
        "lazytime" => MountFlags::LAZYTIME,
        "sync" => MountFlags::SYNCHRONOUS,
        "dirsync" => MountFlags::DIRSYNC,
        "defaults" | "rw" | "suid" | "dev" | "exec" | "atime" | "diratime" | "async" => {
            return Some(None);
        }
        _ => return None,
    };
    Some(Some(f))
}

/// Mounts the filesystem `fs_type` on `device` at `target`.
pub fn mount(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &MountOptions,
) -> io::Result<()> {
    let data = CString::new(options.data.join(","))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a mount option holds NUL"))?;
    let data = (!options.data.is_empty()).then_some(data.as_c_str());
    Ok(rustix::mount::mount(
        device,
        target,
        fs_type,
        options.flags,
        data,
    )?)
}

/// Makes `source` (a directory or a device node) also visible at `target`.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    Ok(rustix::mount::mount_bind(source, target)?)
}

/// Makes the bind mount at `target` read-only, keeping its other flags (a bind remount sets all
/// of them at once).
pub fn remount_read_only(target: &Path) -> io::Result<()> {
    let current = mounted_at(target)?
        .ok_or_else(|| io::Error::other(format!("{} is not a mount", target.display())))?;
    let options: Vec<&str> = current.options.split(',').collect();
    let flags = MountOptions::parse(&options, true).flags;
    Ok(rustix::mount::mount_remount(
        target,
        MountFlags::BIND | flags,
        "",
    )?)
}

/// Unmounts everything mounted at `path` (a retried publish can stack two mounts); nothing when
/// it is not a mount point or does not exist.
pub fn unmount_all(path: &Path) -> io::Result<()> {
    // A bound on the loop, in case the kernel keeps answering with a mount it will not remove.
    for _ in 0..16 {
        if mounted_at(path)?.is_none() {
            return Ok(());
        }
        rustix::mount::unmount(path, UnmountFlags::empty())?;
    }
    Err(io::Error::other(format!(
        "{} is still mounted after 16 unmounts",
        path.display()
    )))
}

/// Space and inodes of the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_available: u64,
    pub inodes_used: u64,
}

/// The usage of the filesystem holding `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let s = rustix::fs::statvfs(path)?;
    Ok(Usage {
        bytes_total: s.f_blocks.saturating_mul(s.f_frsize),
        // Available to unprivileged writers: what a pod can still use.
        bytes_available: s.f_bavail.saturating_mul(s.f_frsize),
        bytes_used: s
            .f_blocks
            .saturating_sub(s.f_bfree)
            .saturating_mul(s.f_frsize),
        inodes_total: s.f_files,
        inodes_available: s.f_ffree,
        inodes_used: s.f_files.saturating_sub(s.f_ffree),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
120 29 7:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/csi.orrery.dev/abc/globalmount rw,relatime shared:70 - ext4 /dev/loop0 rw
121 29 7:0 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc-1/mount ro,nosuid,relatime shared:70 master:3 - ext4 /dev/loop0 rw
130 29 0:5 /loop1 /var/lib/kubelet/publish/pvc\\0402 rw,nosuid - devtmpfs udev rw,size=4k
131 29 7:0 / /tmp/odd\\011name\\012x\\134y rw - ext4 /dev/loop0 rw
garbage line
132 29 x:y / /bad rw - ext4 /dev/loop0 rw
133 29 7:0 / /no-separator rw ext4 /dev/loop0 rw
";

    #[test]
    fn mountinfo_lines_are_read_with_their_escapes() {
        let table = parse_mountinfo(TABLE.as_bytes());
        assert_eq!(table.len(), 6, "the three bad lines are skipped");
        let proc = &table[0];
        assert_eq!(proc.mount_point, Path::new("/proc"));
        assert_eq!(
            (proc.fs_type.as_str(), proc.source.as_str()),
            ("proc", "proc")
        );
        assert!(!proc.read_only());

        let stage = &table[2];
        assert_eq!((stage.major, stage.minor), (7, 0));
        assert_eq!(stage.device(), rustix::fs::makedev(7, 0));
        assert_eq!(stage.source, "/dev/loop0");
        assert_eq!(stage.root, Path::new("/"));

        let publish = &table[3];
        assert!(publish.read_only(), "per-mount ro, even on a rw filesystem");
        assert_eq!(publish.options, "ro,nosuid,relatime");

        let block = &table[4];
        assert_eq!(block.root, Path::new("/loop1"));
        assert_eq!(
            block.mount_point,
            Path::new("/var/lib/kubelet/publish/pvc 2")
        );
        assert_eq!(table[5].mount_point, Path::new("/tmp/odd\tname\nx\\y"));
    }

    #[test]
    fn unescape_leaves_what_is_not_an_escape() {
        for (raw, want) in [
            ("a\\040b", "a b"),
            ("\\134", "\\"),
            ("a\\", "a\\"),
            ("a\\04", "a\\04"),
            ("\\089", "\\089"),
            ("\\400", "\\400"),
            ("plain", "plain"),
        ] {
            assert_eq!(unescape(raw.as_bytes()), want.as_bytes(), "{raw}");
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let cases: &[(&[&str], bool, MountFlags, &[&str])] = &[
            (&[], false, MountFlags::empty(), &[]),
            (&[], true, MountFlags::RDONLY, &[]),
            (&["ro"], false, MountFlags::RDONLY, &[]),
            (
                &["noatime,nodev", " nosuid ", "noexec"],
                false,
                MountFlags::NOATIME | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
                &[],
            ),
            (
                &["defaults", "rw", "discard", "errors=remount-ro", ""],
                false,
                MountFlags::empty(),
                &["discard", "errors=remount-ro"],
            ),
            (
                &["sync", "dirsync", "relatime", "lazytime", "nouuid"],
                false,
                MountFlags::SYNCHRONOUS
                    | MountFlags::DIRSYNC
                    | MountFlags::RELATIME
                    | MountFlags::LAZYTIME,
                &["nouuid"],
            ),
        ];
        for (options, read_only, flags, data) in cases {
            let got = MountOptions::parse(options, *read_only);
            assert_eq!(got.flags, *flags, "{options:?}");
            assert_eq!(got.data, *data, "{options:?}");
        }
    }

    #[test]
    fn nothing_is_mounted_at_a_missing_path_and_root_is_a_mount() {
        assert_eq!(mounted_at(Path::new("/no/such/path/here")).unwrap(), None);
        let root = mounted_at(Path::new("/")).unwrap().expect("/ is a mount");
        assert_eq!(root.mount_point, Path::new("/"));
        let u = usage(Path::new("/")).unwrap();
        assert!(u.bytes_total >= u.bytes_used);
    }
}
