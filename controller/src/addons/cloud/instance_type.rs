//! The instance type of a worker VM, as the label `node.kubernetes.io/instance-type` shows it.
//!
//! Clouds name their machine types; a KubeVirt VM has only its shape, so the shape is the name:
//! `<vCPUs>c-<memory>`, where vCPUs are the VM's sockets × cores × threads and memory is its guest
//! memory in the largest unit that holds it whole (Ei, E, Pi, P, Ti, T, Gi, G, Mi, M, Ki, k, or
//! plain bytes). For example `1c-1536Mi`, `2c-4Gi`, `4c-2G`.

use crate::nodepool::kubevirt::VirtualMachineInstance;
use serde_json::Value;

/// Units from the largest down, so the first that divides a size exactly names it.
const UNITS: [(&str, u128); 12] = [
    ("Ei", 1 << 60),
    ("E", 1_000_000_000_000_000_000),
    ("Pi", 1 << 50),
    ("P", 1_000_000_000_000_000),
    ("Ti", 1 << 40),
    ("T", 1_000_000_000_000),
    ("Gi", 1 << 30),
    ("G", 1_000_000_000),
    ("Mi", 1 << 20),
    ("M", 1_000_000),
    ("Ki", 1 << 10),
    ("k", 1_000),
];

/// The instance type of a VM with `cpus` vCPUs and guest memory `memory` (a Kubernetes
/// quantity); `None` when the memory is no whole number of bytes.
pub fn instance_type(cpus: u64, memory: &str) -> Option<String> {
    Some(format!("{cpus}c-{}", size(bytes(memory)?)))
}

/// The instance type of a running VM, from its domain (the VM template's, as KubeVirt copied it).
pub fn of_vmi(vmi: &VirtualMachineInstance) -> Option<String> {
    let domain = vmi.spec.fields.get("domain")?;
    let cpu = &domain["cpu"];
    let count = |field: &str| cpu[field].as_u64().unwrap_or(1).max(1);
    let cpus = count("sockets") * count("cores") * count("threads");
    let memory = match &domain["memory"]["guest"] {
        Value::String(m) => m.as_str(),
        _ => domain["resources"]["requests"]["memory"].as_str()?,
    };
    instance_type(cpus, memory)
}

/// Bytes in quantity `q` (`1536Mi`, `1.5Gi`, `2G`, `1073741824`).
pub fn bytes(q: &str) -> Option<u128> {
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier = match suffix {
        "" => 1,
        _ => UNITS.iter().find(|(u, _)| *u == suffix)?.1,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let total = digits.checked_mul(multiplier)?;
    total.is_multiple_of(scale).then_some(total / scale)
}

/// `bytes` as a quantity in the largest unit that holds it whole, such as `1536Mi`.
pub fn size(bytes: u128) -> String {
    UNITS
        .iter()
        .find(|(_, n)| bytes >= *n && bytes.is_multiple_of(*n))
        .map_or(bytes.to_string(), |(u, n)| format!("{}{u}", bytes / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_names_cpus_and_memory_in_the_largest_whole_unit() {
        for (cpus, memory, expected) in [
            (1, "1536Mi", Some("1c-1536Mi")),
            (2, "3Gi", Some("2c-3Gi")),
            (2, "3072Mi", Some("2c-3Gi")),
            (1, "1.5Gi", Some("1c-1536Mi")),
            (4, "2G", Some("4c-2G")),
            (4, "2000M", Some("4c-2G")),
            (1, "1073741824", Some("1c-1Gi")),
            (1, "1000", Some("1c-1k")),
            (1, "1001", Some("1c-1001")),
            (8, "1Ti", Some("8c-1Ti")),
            (1, "0.5", None),
            (1, "1.5.5Gi", None),
            (1, "12Xi", None),
            (1, "", None),
            (1, "Gi", None),
        ] {
            assert_eq!(
                instance_type(cpus, memory).as_deref(),
                expected,
                "{cpus} {memory}"
            );
        }
    }

    #[test]
    fn a_vms_shape_is_read_from_its_domain() {
        let vmi = |domain: Value| {
            let mut v = VirtualMachineInstance::new("w", Default::default());
            v.spec.fields.insert("domain".into(), domain);
            v
        };
        for (domain, expected) in [
            (
                serde_json::json!({"cpu": {"cores": 1}, "memory": {"guest": "1536Mi"}}),
                Some("1c-1536Mi"),
            ),
            (
                serde_json::json!({"cpu": {"cores": 2, "sockets": 2, "threads": 1}, "memory": {"guest": "4Gi"}}),
                Some("4c-4Gi"),
            ),
            (
                serde_json::json!({"resources": {"requests": {"memory": "2Gi"}}}),
                Some("1c-2Gi"),
            ),
            (serde_json::json!({"cpu": {"cores": 2}}), None),
        ] {
            assert_eq!(
                of_vmi(&vmi(domain.clone())).as_deref(),
                expected,
                "{domain}"
            );
        }
        let bare = VirtualMachineInstance::new("w", Default::default());
        assert_eq!(of_vmi(&bare), None);
    }
}
