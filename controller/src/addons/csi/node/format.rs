//! Filesystems on a disk, through the usual tools: what a disk holds (`blkid`), making a
//! filesystem (`mkfs.ext4`, `mkfs.xfs`) and growing one to its disk (`dumpe2fs`, `e2fsck` and
//! `resize2fs` for ext4, `xfs_growfs`).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use tokio::process::Command;

/// What went wrong with a tool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{command} {outcome}: {stderr}")]
    Command {
        /// The command line, as a shell would show it.
        command: String,
        /// How it ended: `could not start (…)`, `exited with exit status: 1`…
        outcome: String,
        stderr: String,
    },
    #[error("no support for the filesystem {0:?}")]
    Unsupported(String),
}

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing blkid recognises: a new disk.
    Empty,
    /// A filesystem (or anything else with a type: swap, an LVM volume) of this type.
    Filesystem(String),
    /// Something without a type, such as a partition table, described.
    Other(String),
}

/// What `device` holds, read from the disk itself (`-p`: not from blkid's cache, which knows
/// nothing of a disk that arrived a moment ago).
pub async fn probe(device: &Path) -> Result<Content, Error> {
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("export"),
        device.as_os_str(),
    ];
    let output = spawn("blkid", &args).await?;
    // blkid exits 2 when it finds nothing to report.
    if output.status.code() == Some(2) {
        return Ok(Content::Empty);
    }
    check("blkid", &args, &output)?;
    Ok(parse_probe(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads `blkid -o export` (`KEY=value` lines). A disk that blkid finds something on but gives no
/// type is not empty: it may hold a partition table, which mkfs would destroy.
pub fn parse_probe(export: &str) -> Content {
    let value = |key: &str| {
        export.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        })
    };
    if let Some(fs) = value("TYPE") {
        return Content::Filesystem(fs.to_owned());
    }
    match value("PTTYPE") {
        Some(table) => Content::Other(format!("a {table} partition table")),
        None => Content::Other(format!(
            "an unrecognised signature ({})",
            export.lines().collect::<Vec<_>>().join(" ")
        )),
    }
}

/// Makes a `fs_type` filesystem on `device`, over whatever it holds (the caller probed it).
pub async fn make(device: &Path, fs_type: &str) -> Result<(), Error> {
    let (program, force) = match fs_type {
        "ext4" => ("mkfs.ext4", "-F"),
        "xfs" => ("mkfs.xfs", "-f"),
        other => return Err(Error::Unsupported(other.to_owned())),
    };
    let args = [OsStr::new(force), OsStr::new("-q"), device.as_os_str()];
    run(program, &args).await
}

/// Grows an unmounted `fs_type` filesystem on `device` to `device_size`, when it is smaller: how a
/// volume grown while detached (offline expansion) gets its space. Offline, ext4 grows without
/// the CAP_SYS_RESOURCE online growth needs. xfs only grows mounted: nothing to do here.
pub async fn grow_unmounted(fs_type: &str, device: &Path, device_size: u64) -> Result<(), Error> {
    match fs_type {
        "ext4" => {
            if !ext4_smaller(device, device_size).await? {
                return Ok(());
            }
            // resize2fs refuses a filesystem mounted since its last full check.
            let args = [OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()];
            let output = spawn("e2fsck", &args).await?;
            // 1: errors were found and corrected.
            if output.status.code() != Some(1) {
                check("e2fsck", &args, &output)?;
            }
            run("resize2fs", &[device.as_os_str()]).await
        }
        "xfs" => Ok(()),
        other => Err(Error::Unsupported(other.to_owned())),
    }
}

/// Grows the `fs_type` filesystem on `device`, mounted at `mount_point`, to `device_size`, when
/// it is smaller (online: ext4 then needs CAP_SYS_RESOURCE, which a privileged pod has).
pub async fn grow_mounted(
    fs_type: &str,
    device: &Path,
    mount_point: &Path,
    device_size: u64,
) -> Result<(), Error> {
    match fs_type {
        "ext4" => {
            if !ext4_smaller(device, device_size).await? {
                return Ok(());
            }
            run("resize2fs", &[device.as_os_str()]).await
        }
        // xfs_growfs names the filesystem by where it is mounted, and does nothing when the
        // filesystem fills its disk.
        "xfs" => run("xfs_growfs", &[mount_point.as_os_str()]).await,
        other => Err(Error::Unsupported(other.to_owned())),
    }
}

/// Whether the ext4 filesystem on `device` is at least one block smaller than `device_size`.
async fn ext4_smaller(device: &Path, device_size: u64) -> Result<bool, Error> {
    let args = [OsStr::new("-h"), device.as_os_str()];
    let output = spawn("dumpe2fs", &args).await?;
    check("dumpe2fs", &args, &output)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (blocks, block_size) = parse_ext4_size(&stdout).ok_or_else(|| Error::Command {
        command: command_line("dumpe2fs", &args),
        outcome: "gave no block count and size".into(),
        stderr: String::new(),
    })?;
    Ok(blocks.saturating_add(1).saturating_mul(block_size) <= device_size)
}

/// The block count and block size in the superblock summary `dumpe2fs -h` prints.
pub fn parse_ext4_size(summary: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        summary.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            if key.trim() != name {
                return None;
            }
            value.trim().parse().ok()
        })
    };
    Some((field("Block count")?, field("Block size")?))
}

/// Runs a tool to its end, and fails unless it succeeded.
async fn run(program: &str, args: &[&OsStr]) -> Result<(), Error> {
    let output = spawn(program, args).await?;
    check(program, args, &output)
}

async fn spawn(program: &str, args: &[&OsStr]) -> Result<Output, Error> {
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Command {
            command: command_line(program, args),
            outcome: format!("could not start ({e})"),
            stderr: String::new(),
        })
}

fn check(program: &str, args: &[&OsStr], output: &Output) -> Result<(), Error> {
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: command_line(program, args),
        outcome: format!("exited with {}", output.status),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn command_line(program: &str, args: &[&OsStr]) -> String {
    std::iter::once(program.into())
        .chain(args.iter().map(|a| a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_read_the_type_or_say_what_else_is_there() {
        let cases = [
            (
                "DEVNAME=/dev/sdb\nUUID=x\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n",
                Content::Filesystem("ext4".into()),
            ),
            (
                "DEVNAME=/dev/sdb\nTYPE=xfs\n",
                Content::Filesystem("xfs".into()),
            ),
            (
                "DEVNAME=/dev/sdb\nPTUUID=1\nPTTYPE=gpt\n",
                Content::Other("a gpt partition table".into()),
            ),
            (
                "DEVNAME=/dev/sdb\nTYPE=\n",
                Content::Other("an unrecognised signature (DEVNAME=/dev/sdb TYPE=)".into()),
            ),
        ];
        for (export, want) in cases {
            assert_eq!(parse_probe(export), want, "{export}");
        }
    }

    #[test]
    fn ext4_sizes_come_from_the_superblock_summary() {
        let summary = "Filesystem volume name:   <none>\nReserved block count:     3276\n\
                       Block count:              65536\nBlock size:               1024\n";
        assert_eq!(parse_ext4_size(summary), Some((65536, 1024)));
        assert_eq!(parse_ext4_size("Block count: 1\n"), None);
        assert_eq!(parse_ext4_size("Block count: x\nBlock size: 4096\n"), None);
    }

    #[tokio::test]
    async fn failures_name_the_command_and_its_stderr() {
        let e = run(
            "sh",
            &[OsStr::new("-c"), OsStr::new("echo broken >&2; exit 3")],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("sh -c echo broken >&2; exit 3 exited with"),
            "{e}"
        );
        assert!(e.ends_with(": broken"), "{e}");
        let e = run("no-such-tool-here", &[]).await.unwrap_err().to_string();
        assert!(e.starts_with("no-such-tool-here could not start"), "{e}");
        let e = make(Path::new("/dev/null"), "btrfs").await.unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)));
    }

    #[tokio::test]
    async fn an_image_is_probed_formatted_and_grown() {
        // blkid and mkfs read and write image files as they do disks.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        match probe(&image).await {
            Ok(c) => assert_eq!(c, Content::Empty),
            Err(e) => {
                eprintln!("blkid is not usable here, skipping: {e}");
                return;
            }
        }
        make(&image, "ext4").await.unwrap();
        assert_eq!(
            probe(&image).await.unwrap(),
            Content::Filesystem("ext4".into())
        );

        // Grown while unmounted, once; then it fills its disk and nothing runs.
        assert!(!ext4_smaller(&image, 16 << 20).await.unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(24 << 20)
            .unwrap();
        assert!(ext4_smaller(&image, 24 << 20).await.unwrap());
        grow_unmounted("ext4", &image, 24 << 20).await.unwrap();
        assert!(!ext4_smaller(&image, 24 << 20).await.unwrap());
        grow_unmounted("xfs", &image, 24 << 20).await.unwrap();
    }
}
