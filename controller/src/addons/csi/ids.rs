//! Names of volumes, pure: a volume's id is also the serial its disk carries into the VM, so the
//! node finds the disk from the id alone.

use sha2::{Digest, Sha256};

/// Hex characters in a volume id. Twenty, because virtio truncates a disk's serial to 20
/// characters and newer QEMU refuses SCSI serials past 36: twenty survive both buses.
pub const ID_LEN: usize = 20;

/// The volume id for the CSI volume `name` in `scope` (a tenant's uid): a hash, so names of any
/// length (the external provisioner's `pvc-<uid>`, a 128-character test name) map to one short
/// id, and the same name in two tenants maps to two ids.
pub fn volume_id(scope: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{scope}/{name}").as_bytes());
    hex::encode(digest)[..ID_LEN].to_owned()
}

/// Whether `id` has the form of a volume id. Anything else cannot be one of ours: NOT_FOUND.
pub fn is_volume_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `file_name`, an entry of `/dev/disk/by-id`, is the disk with `serial`. udev names a
/// SCSI disk `scsi-0QEMU_QEMU_HARDDISK_<serial>` and a virtio disk `virtio-<serial>`; partitions
/// (`…-part1`) are not the disk.
pub fn device_matches(file_name: &str, serial: &str) -> bool {
    match file_name.strip_suffix(serial) {
        Some(head) => head.ends_with('_') || head.ends_with('-'),
        None => false,
    }
}

/// One MiB: volumes are sized in whole MiB.
pub const MIB: i64 = 1 << 20;

/// `bytes` rounded up to a whole MiB (None past i64).
pub fn round_up_mib(bytes: i64) -> Option<i64> {
    bytes.checked_add(MIB - 1).map(|b| b / MIB * MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_hex_and_scoped() {
        let a = volume_id("uid-1", &"x".repeat(128));
        assert_eq!(a.len(), ID_LEN);
        assert!(is_volume_id(&a));
        assert_eq!(a, volume_id("uid-1", &"x".repeat(128)));
        assert_ne!(a, volume_id("uid-2", &"x".repeat(128)));
        assert_ne!(a, volume_id("uid-1", "y"));
    }

    #[test]
    fn only_ids_of_the_form_are_volume_ids() {
        assert!(!is_volume_id("fake-vol-id"));
        assert!(!is_volume_id(""));
        assert!(!is_volume_id("0123456789ABCDEF0123"));
        assert!(!is_volume_id("0123456789abcdef012"));
        assert!(is_volume_id("0123456789abcdef0123"));
    }

    #[test]
    fn devices_match_by_serial_on_either_bus() {
        let serial = "0123456789abcdef0123";
        assert!(device_matches(
            "scsi-0QEMU_QEMU_HARDDISK_0123456789abcdef0123",
            serial
        ));
        assert!(device_matches("virtio-0123456789abcdef0123", serial));
        assert!(!device_matches("virtio-0123456789abcdef0123-part1", serial));
        assert!(!device_matches(
            "virtio-f0123456789abcdef0123",
            "123456789abcdef0123"
        ));
        assert!(!device_matches("0123456789abcdef0123", serial));
    }

    #[test]
    fn sizes_round_up_to_whole_mib() {
        assert_eq!(round_up_mib(0), Some(0));
        assert_eq!(round_up_mib(1), Some(MIB));
        assert_eq!(round_up_mib(MIB), Some(MIB));
        assert_eq!(round_up_mib(MIB + 1), Some(2 * MIB));
        assert_eq!(round_up_mib(i64::MAX), None);
    }
}
