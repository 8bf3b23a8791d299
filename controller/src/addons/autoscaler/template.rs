//! The template Node of a node group (pure): what a new machine of the pool will register as,
//! so the autoscaler can tell whether pending pods would fit, also when the pool has no node.
//!
//! Resources come from the pool's template as the kubelet reports them: CPUs, the guest memory
//! (allocatable less the kubelet's default eviction threshold of 100Mi), and 110 pods unless
//! `max-pods` is set. Labels are the pool's node labels, the pool label, the OS, architecture,
//! host name and the instance type the cloud controller sets; taints are the pool's.

use super::proto::kubernetes::{
    Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, ObjectMeta, Quantity, Taint,
};
use crate::addons::cloud::instance_type;
use crate::api::{NodePool, TaintEffect};
use crate::nodepool::build::POOL_LABEL;
use kube::ResourceExt;
use std::collections::BTreeMap;
use tonic::Status;

/// The kubelet's default hard eviction threshold for memory, kept out of allocatable.
const EVICTION_MEMORY: u128 = 100 << 20;
/// The kubelet's default pod limit.
const DEFAULT_MAX_PODS: u32 = 110;

/// The architecture of the machines, in Kubernetes' (Go's) names. Worker VMs run on the
/// management nodes next to the operator, with their architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The template Node of `pool`, whose machines have architecture `arch`.
pub fn template_node(pool: &NodePool, arch: &str) -> Result<Node, Status> {
    let t = &pool.spec.template;
    let memory = instance_type::bytes(&t.memory.0).ok_or_else(|| {
        Status::failed_precondition(format!(
            "spec.template.memory {} of NodePool {} is no whole number of bytes",
            t.memory.0,
            pool.name_any()
        ))
    })?;
    let cpus = t.cores.max(1).to_string();
    let pods = t
        .kubelet_extra_args
        .get("max-pods")
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(DEFAULT_MAX_PODS)
        .to_string();
    let resources = |memory: u128| {
        BTreeMap::from([
            ("cpu".to_string(), quantity(&cpus)),
            ("memory".to_string(), quantity(&instance_type::size(memory))),
            ("pods".to_string(), quantity(&pods)),
        ])
    };
    let name = format!("{}-template", pool.name_any());
    Ok(Node {
        metadata: Some(ObjectMeta {
            labels: labels(
                pool,
                &name,
                arch,
                instance_type::instance_type(t.cores.max(1) as u64, &t.memory.0),
            ),
            name,
            annotations: BTreeMap::new(),
        }),
        spec: Some(NodeSpec {
            provider_id: String::new(),
            unschedulable: false,
            taints: t
                .taints
                .iter()
                .map(|taint| Taint {
                    key: taint.key.clone(),
                    value: taint.value.clone().unwrap_or_default(),
                    effect: effect(taint.effect).into(),
                })
                .collect(),
        }),
        status: Some(NodeStatus {
            capacity: resources(memory),
            allocatable: resources(memory.saturating_sub(EVICTION_MEMORY)),
            phase: String::new(),
            conditions: vec![NodeCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "KubeletReady".into(),
                message: "template of a new machine of the pool".into(),
                ..Default::default()
            }],
            node_info: Some(NodeSystemInfo {
                kubelet_version: pool
                    .status
                    .as_ref()
                    .and_then(|s| s.version.clone())
                    .unwrap_or_default(),
                operating_system: "linux".into(),
                architecture: arch.into(),
            }),
        }),
    })
}

fn quantity(text: &str) -> Quantity {
    Quantity {
        string: text.into(),
    }
}

/// The labels a machine's Node will carry: the kubelet's own, the pool's and the instance type.
fn labels(
    pool: &NodePool,
    name: &str,
    arch: &str,
    instance_type: Option<String>,
) -> BTreeMap<String, String> {
    let mut labels = pool.spec.template.node_labels.clone();
    let mut set = |k: &str, v: &str| labels.insert(k.into(), v.into());
    set(POOL_LABEL, &pool.name_any());
    set("kubernetes.io/os", "linux");
    set("kubernetes.io/arch", arch);
    set("beta.kubernetes.io/os", "linux");
    set("beta.kubernetes.io/arch", arch);
    set("kubernetes.io/hostname", name);
    if let Some(it) = instance_type {
        set("node.kubernetes.io/instance-type", &it);
    }
    labels
}

fn effect(e: TaintEffect) -> &'static str {
    match e {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addons::autoscaler::fixtures::pool;

    fn resources(map: &BTreeMap<String, Quantity>) -> Vec<(&str, &str)> {
        map.iter()
            .map(|(k, v)| (k.as_str(), v.string.as_str()))
            .collect()
    }

    #[test]
    fn the_template_has_the_pools_shape_labels_and_taints() {
        let p = pool(
            "ns",
            "gpu",
            "t1",
            r#"
replicas: 0
autoscaling: {minReplicas: 0, maxReplicas: 3}
template:
  cores: 2
  memory: 4Gi
  nodeLabels: {example.com/class: big}
  taints: [{key: example.com/dedicated, value: batch, effect: NoSchedule}, {key: x, effect: NoExecute}]
"#,
        );
        let node = template_node(&p, "amd64").unwrap();
        let meta = node.metadata.unwrap();
        assert_eq!(meta.name, "gpu-template");
        let labels: Vec<(&str, &str)> = meta
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("beta.kubernetes.io/arch", "amd64"),
                ("beta.kubernetes.io/os", "linux"),
                ("example.com/class", "big"),
                ("kubernetes.io/arch", "amd64"),
                ("kubernetes.io/hostname", "gpu-template"),
                ("kubernetes.io/os", "linux"),
                ("node.kubernetes.io/instance-type", "2c-4Gi"),
                ("orrery.dev/nodepool", "gpu"),
            ]
        );
        let taints: Vec<(String, String, String)> = node
            .spec
            .unwrap()
            .taints
            .into_iter()
            .map(|t| (t.key, t.value, t.effect))
            .collect();
        assert_eq!(
            taints,
            [
                (
                    "example.com/dedicated".into(),
                    "batch".into(),
                    "NoSchedule".into()
                ),
                ("x".into(), String::new(), "NoExecute".into()),
            ]
        );
        let status = node.status.unwrap();
        assert_eq!(
            resources(&status.capacity),
            [("cpu", "2"), ("memory", "4Gi"), ("pods", "110")]
        );
        assert_eq!(
            resources(&status.allocatable),
            [("cpu", "2"), ("memory", "3996Mi"), ("pods", "110")]
        );
        assert_eq!(status.conditions[0].r#type, "Ready");
        assert_eq!(status.conditions[0].status, "True");
        let info = status.node_info.unwrap();
        assert_eq!(
            (info.operating_system.as_str(), info.architecture.as_str()),
            ("linux", "amd64")
        );
    }

    #[test]
    fn resources_follow_the_defaults_and_max_pods() {
        for (template, capacity, allocatable) in [
            (
                "{}",
                [("cpu", "1"), ("memory", "2Gi"), ("pods", "110")],
                [("cpu", "1"), ("memory", "1948Mi"), ("pods", "110")],
            ),
            (
                "{memory: 1.5Gi, kubeletExtraArgs: {max-pods: '30'}}",
                [("cpu", "1"), ("memory", "1536Mi"), ("pods", "30")],
                [("cpu", "1"), ("memory", "1436Mi"), ("pods", "30")],
            ),
            (
                "{memory: 1G}",
                [("cpu", "1"), ("memory", "1G"), ("pods", "110")],
                [("cpu", "1"), ("memory", "895142400"), ("pods", "110")],
            ),
        ] {
            let p = pool("ns", "p", "t", &format!("template: {template}"));
            let status = template_node(&p, "arm64").unwrap().status.unwrap();
            assert_eq!(resources(&status.capacity), capacity, "{template}");
            assert_eq!(resources(&status.allocatable), allocatable, "{template}");
        }
    }
}
