//! Which volume capabilities the driver offers, pure: one disk, on one node at a time, as a
//! filesystem (ext4 or xfs) or as a raw block device.

use super::proto::csi::VolumeCapability;
use super::proto::csi::volume_capability::access_mode::Mode;
use super::proto::csi::volume_capability::{AccessType, MountVolume};
use tonic::Status;

/// The filesystem a volume gets when its capability names none.
pub const DEFAULT_FS: &str = "ext4";

/// How a volume is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A filesystem of this type, mounted with these extra flags.
    Mount { fs_type: String, flags: Vec<String> },
    /// The raw device.
    Block,
}

/// A capability the driver can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub access: Access,
    /// Only read: the mode is SINGLE_NODE_READER_ONLY.
    pub read_only: bool,
}

/// Reads `cap` (from the request field `field`): INVALID_ARGUMENT when it is incomplete or asks
/// what the driver cannot do, naming the field and the reason.
pub fn parse(field: &str, cap: Option<&VolumeCapability>) -> Result<Capability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument(format!("{field}.access_mode is required")))?
        .mode();
    let read_only = match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter => false,
        Mode::SingleNodeReaderOnly => true,
        other => {
            return Err(Status::invalid_argument(format!(
                "{field}.access_mode {} is not offered: a volume is one disk, attached to one node \
                 at a time (SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)",
                other.as_str_name()
            )));
        }
    };
    let access = match &cap.access_type {
        None => {
            return Err(Status::invalid_argument(format!(
                "{field}: one of block or mount is required"
            )));
        }
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(MountVolume {
            fs_type,
            mount_flags,
            ..
        })) => {
            let fs_type = match fs_type.as_str() {
                "" => DEFAULT_FS,
                "ext4" | "xfs" => fs_type,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "{field}.mount.fs_type {other:?} is not offered: ext4 or xfs"
                    )));
                }
            };
            Access::Mount {
                fs_type: fs_type.to_owned(),
                flags: mount_flags.clone(),
            }
        }
    };
    Ok(Capability { access, read_only })
}

/// Reads every capability of a request that must carry at least one.
pub fn parse_all(field: &str, caps: &[VolumeCapability]) -> Result<Vec<Capability>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    caps.iter()
        .enumerate()
        .map(|(i, cap)| parse(&format!("{field}[{i}]"), Some(cap)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addons::csi::proto::csi::volume_capability::{AccessMode, BlockVolume};

    fn cap(mode: Mode, access: Option<AccessType>) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: access,
        }
    }

    fn mount(fs: &str) -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn single_node_mounts_and_blocks_are_offered() {
        let c = parse("c", Some(&cap(Mode::SingleNodeWriter, mount("")))).unwrap();
        assert_eq!(
            c.access,
            Access::Mount {
                fs_type: "ext4".into(),
                flags: vec![]
            }
        );
        assert!(!c.read_only);
        let c = parse("c", Some(&cap(Mode::SingleNodeReaderOnly, mount("xfs")))).unwrap();
        assert!(c.read_only);
        let c = parse(
            "c",
            Some(&cap(
                Mode::SingleNodeWriter,
                Some(AccessType::Block(BlockVolume {})),
            )),
        )
        .unwrap();
        assert_eq!(c.access, Access::Block);
    }

    #[test]
    fn the_rest_is_refused_naming_the_field() {
        let cases = [
            (None, "c is required"),
            (
                Some(cap(Mode::MultiNodeMultiWriter, mount(""))),
                "c.access_mode MULTI_NODE_MULTI_WRITER",
            ),
            (
                Some(cap(Mode::SingleNodeWriter, None)),
                "one of block or mount",
            ),
            (
                Some(cap(Mode::SingleNodeWriter, mount("btrfs"))),
                "c.mount.fs_type \"btrfs\"",
            ),
            (
                Some(VolumeCapability {
                    access_mode: None,
                    access_type: mount(""),
                }),
                "c.access_mode is required",
            ),
        ];
        for (c, want) in cases {
            let e = parse("c", c.as_ref()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{} lacks {want}", e.message());
        }
        assert!(parse_all("caps", &[]).is_err());
    }
}
