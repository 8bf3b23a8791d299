//! The objects of one machine, built purely: its KubeVirt VirtualMachine, the cloud-init user
//! data that joins it to the tenant with kubeadm, and its bootstrap token inside the tenant.

use super::kubevirt::{VirtualMachine, VirtualMachineSpec};
use crate::api::{NodePool, TaintEffect};
use crate::apply::{MANAGED_BY, TENANT_LABEL};
use crate::tenant::BOOTSTRAPPERS;
use crate::{Error, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Names the pool a VM, user-data Secret, bootstrap token or Node belongs to.
pub const POOL_LABEL: &str = "orrery.dev/nodepool";
/// Names the machine (VM and Node) a bootstrap token was made for.
pub const MACHINE_LABEL: &str = "orrery.dev/machine";
/// The template hash a VM was made from.
pub const TEMPLATE_HASH_LABEL: &str = "orrery.dev/template-hash";
/// The kubelet version a VM was made with.
pub const VERSION_ANNOTATION: &str = "orrery.dev/kubelet-version";
/// Set on a VM to ask that exactly this machine be removed (drained first); the autoscaler's
/// delete-nodes call sets it.
pub const DELETE_ANNOTATION: &str = "orrery.dev/delete-machine";
/// When the drain of a machine began: set on the VM when Orrery decides to remove it.
pub const DRAIN_ANNOTATION: &str = "orrery.dev/drain-started";
/// Why a machine is being removed, for the status and Events.
pub const DRAIN_REASON_ANNOTATION: &str = "orrery.dev/drain-reason";

/// The worker image contract: a containerDisk whose disk is `/disk/worker.qcow2`, booted by
/// KubeVirt's kernelBoot from `/boot/vmlinuz` and `/boot/initrd.img` of the same image, with its
/// root filesystem labelled `orrery-root`.
pub const WORKER_DISK_PATH: &str = "/disk/worker.qcow2";
pub const WORKER_KERNEL_PATH: &str = "/boot/vmlinuz";
pub const WORKER_INITRD_PATH: &str = "/boot/initrd.img";
pub const WORKER_KERNEL_ARGS: &str = "root=LABEL=orrery-root rw console=ttyS0";

/// What a machine is built from besides the pool.
#[derive(Clone, Debug)]
pub struct MachineInputs<'a> {
    /// Kubelet version of the new machine: the version the control plane runs.
    pub version: &'a str,
    /// containerDisk image of the worker.
    pub image: &'a str,
    /// host:port of the tenant apiserver, as the workers reach it.
    pub endpoint: &'a str,
    /// `sha256:<hex>` of the tenant CA's public key, for kubeadm's token discovery.
    pub ca_cert_hash: &'a str,
    /// Whether the tenant's cloud controller runs: the kubelet then waits for it to initialise
    /// the Node (`--cloud-provider=external`, which taints the Node until that is done).
    pub external_cloud_provider: bool,
}

/// A kubeadm bootstrap token, `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

/// Characters of generated names and tokens: kubeadm's token alphabet, `[a-z0-9]`.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random characters of [`ALPHABET`], uniform: bytes of 252 and above (the largest multiple
/// of 36 below 256) are dropped.
pub fn random_string(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut bytes = [0u8; 32];
    while out.len() < n {
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        let chars = bytes
            .iter()
            .filter(|b| **b < 252)
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        out.extend(chars.take(n - out.len()));
    }
    out
}

impl BootstrapToken {
    pub fn generate() -> Self {
        Self {
            id: random_string(6),
            secret: random_string(16),
        }
    }

    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// A new machine's name: the pool's name and a random suffix, as a Deployment names its pods.
/// It is also the Node's name and the guest's hostname, so it stays within 63 characters.
pub fn machine_name(pool: &str) -> String {
    let prefix: String = pool.chars().take(57).collect();
    format!("{}-{}", prefix.trim_end_matches('-'), random_string(5))
}

/// Hash of what a machine is made from: a VM with another hash is outdated and rolled.
pub fn template_hash(pool: &NodePool, version: &str, image: &str) -> Result<String> {
    let template = serde_json::to_string(&pool.spec.template)?;
    let full = crate::hash::of_strings(&[template.as_str(), version, image]);
    Ok(full[..10].to_string())
}

/// Why workers cannot use the tenant's `endpoint` (`host:port`, as in its status), if they cannot:
/// workers reach their apiserver at a management address, and inside a worker the tenant's
/// kube-proxy owns the tenant's whole Service range, so that address must lie outside it.
pub fn endpoint_clash(endpoint: &str, service_cidr: &str) -> Option<String> {
    let host = crate::controlplane::endpoint_host(endpoint)?;
    let range: ipnet::IpNet = service_cidr.parse().ok()?;
    range.contains(&host).then(|| {
        format!(
            "spec.network.serviceCIDR {service_cidr} of the tenant contains {host}, the management address its workers reach the apiserver at, so the workers' kube-proxy would capture it; give the tenant a serviceCIDR apart from the management cluster's Service range (a tenant's serviceCIDR is fixed at creation)"
        )
    })
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the CA certificate `ca_pem`, as kubeadm pins
/// a cluster's CA during discovery.
pub fn ca_cert_hash(ca_pem: &str) -> Result<String> {
    let invalid = |reason: String| Error::Invalid {
        field: "tenant CA certificate".into(),
        reason,
    };
    let der = pem::parse(ca_pem).map_err(|e| invalid(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.contents()).map_err(|e| invalid(e.to_string()))?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex::encode(digest)))
}

/// Labels of every object of a machine.
fn labels(pool: &NodePool, tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
        (POOL_LABEL.to_string(), pool.name_any()),
    ])
}

/// The label selector of a pool's VMs (also the scale subresource's selector).
pub fn selector(pool: &NodePool) -> String {
    format!(
        "{}={},{POOL_LABEL}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        pool.name_any()
    )
}

/// The name of the Secret holding a machine's cloud-init user data.
pub fn user_data_secret_name(machine: &str) -> String {
    format!("{machine}-userdata")
}

/// The bootstrap token Secret of a machine, in the tenant's kube-system, valid until `expires`.
/// It may authenticate a join and sign cluster-info for discovery, nothing else.
pub fn token_secret(
    pool: &NodePool,
    machine: &str,
    token: &BootstrapToken,
    expires: Timestamp,
) -> Secret {
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (POOL_LABEL.to_string(), pool.name_any()),
        (MACHINE_LABEL.to_string(), machine.to_string()),
        (
            "orrery.dev/pool-namespace".to_string(),
            pool.namespace().unwrap_or_default(),
        ),
    ]);
    let data = [
        ("token-id", token.id.clone()),
        ("token-secret", token.secret.clone()),
        (
            "expiration",
            expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ),
        ("usage-bootstrap-authentication", "true".into()),
        ("usage-bootstrap-signing", "true".into()),
        ("auth-extra-groups", BOOTSTRAPPERS.into()),
        ("description", format!("joins machine {machine}")),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{}", token.id)),
            namespace: Some("kube-system".into()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ..Default::default()
    }
}

/// The kubelet flags of the pool's nodes: the user's, then Orrery's (which win).
fn kubelet_args(pool: &NodePool, machine: &str, external_cloud_provider: bool) -> Vec<Value> {
    let mut args: BTreeMap<String, String> = pool.spec.template.kubelet_extra_args.clone();
    let mut node_labels: Vec<String> = pool
        .spec
        .template
        .node_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    node_labels.push(format!("{POOL_LABEL}={}", pool.name_any()));
    args.insert("node-labels".into(), node_labels.join(","));
    args.insert("provider-id".into(), format!("kubevirt://{machine}"));
    if external_cloud_provider {
        args.insert("cloud-provider".into(), "external".into());
    }
    args.into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn taint_effect(e: TaintEffect) -> &'static str {
    match e {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

/// kubeadm's JoinConfiguration for `machine`: token discovery pinned to the tenant's CA, the
/// node's name, labels, taints and provider ID.
fn join_configuration(
    pool: &NodePool,
    machine: &str,
    token: &BootstrapToken,
    m: &MachineInputs,
) -> Value {
    let taints: Vec<Value> = pool
        .spec
        .template
        .taints
        .iter()
        .map(|t| {
            let mut taint = json!({"key": t.key, "effect": taint_effect(t.effect)});
            if let Some(v) = &t.value {
                taint["value"] = json!(v);
            }
            taint
        })
        .collect();
    json!({
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": m.endpoint,
                "token": token.token(),
                "caCertHashes": [m.ca_cert_hash],
            },
        },
        "nodeRegistration": {
            "name": machine,
            "criSocket": "unix:///run/containerd/containerd.sock",
            "kubeletExtraArgs": kubelet_args(pool, machine, m.external_cloud_provider),
            "taints": taints,
        },
    })
}

/// The cloud-config of `machine`: its hostname and SSH keys, the JoinConfiguration in a file
/// only root reads, and `kubeadm join`, as Cluster API bootstraps a worker.
pub fn user_data(
    pool: &NodePool,
    machine: &str,
    token: &BootstrapToken,
    m: &MachineInputs,
) -> Result<String> {
    let join = serde_json::to_string_pretty(&join_configuration(pool, machine, token, m))?;
    let config = json!({
        "hostname": machine,
        "fqdn": machine,
        "ssh_authorized_keys": pool.spec.template.ssh_authorized_keys,
        "write_files": [{
            "path": "/run/kubeadm/kubeadm-join-config.yaml",
            "owner": "root:root",
            "permissions": "0600",
            "content": join,
        }],
        "runcmd": [
            ["kubeadm", "join", "--config", "/run/kubeadm/kubeadm-join-config.yaml"],
            ["touch", "/run/orrery/bootstrap-success.complete"],
        ],
        "bootcmd": [["mkdir", "-p", "/run/orrery"]],
    });
    Ok(format!(
        "#cloud-config\n{}",
        serde_yaml_ng::to_string(&config)?
    ))
}

/// The Secret holding `machine`'s user data, owned by its VM so it goes with it.
pub fn user_data_secret(
    pool: &NodePool,
    tenant: &str,
    machine: &str,
    user_data: String,
    vm_owner: OwnerReference,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(user_data_secret_name(machine)),
            namespace: pool.namespace(),
            labels: Some(labels(pool, tenant)),
            owner_references: Some(vec![vm_owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "userdata".to_string(),
            ByteString(user_data.into_bytes()),
        )])),
        ..Default::default()
    }
}

/// The VirtualMachine of `machine`: the pool's template on the worker image, booted by kernel,
/// cloud-init from the user-data Secret, placed as the pool asks. Owned by the pool.
pub fn virtual_machine(
    pool: &NodePool,
    tenant: &str,
    machine: &str,
    hash: &str,
    m: &MachineInputs,
    owner: OwnerReference,
) -> VirtualMachine {
    let t = &pool.spec.template;
    let mut labels = labels(pool, tenant);
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut pod_labels = labels.clone();
    pod_labels.insert(MACHINE_LABEL.into(), machine.into());
    let spec = json!({
        "runStrategy": "Always",
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "domain": {
                    "cpu": {"cores": t.cores},
                    "memory": {"guest": t.memory},
                    "firmware": {"kernelBoot": {
                        "kernelArgs": WORKER_KERNEL_ARGS,
                        "container": {
                            "image": m.image,
                            "imagePullPolicy": "IfNotPresent",
                            "kernelPath": WORKER_KERNEL_PATH,
                            "initrdPath": WORKER_INITRD_PATH,
                        },
                    }},
                    "devices": {
                        "logSerialConsole": true,
                        "disks": disks(pool),
                        "interfaces": [{"name": "default", "masquerade": {}}],
                    },
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": volumes(pool, machine, m.image),
                "nodeSelector": t.placement.node_selector,
                "tolerations": t.placement.tolerations,
                "evictionStrategy": "None",
            },
        },
    });
    let Value::Object(fields) = spec else {
        unreachable!("json! of an object")
    };
    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(machine.into()),
            namespace: pool.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                VERSION_ANNOTATION.to_string(),
                m.version.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: VirtualMachineSpec { fields },
        status: None,
    }
}

fn disks(pool: &NodePool) -> Vec<Value> {
    let mut disks = vec![
        json!({"name": "root", "disk": {"bus": "virtio"}}),
        json!({"name": "cloudinit", "disk": {"bus": "virtio"}}),
    ];
    for d in &pool.spec.template.extra_disks {
        disks.push(json!({"name": d.name, "serial": d.name, "disk": {"bus": "virtio"}}));
    }
    disks
}

fn volumes(pool: &NodePool, machine: &str, image: &str) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": "root", "containerDisk": {
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "path": WORKER_DISK_PATH,
        }}),
        json!({"name": "cloudinit", "cloudInitNoCloud": {
            "secretRef": {"name": user_data_secret_name(machine)},
        }}),
    ];
    for d in &pool.spec.template.extra_disks {
        volumes.push(json!({"name": d.name, "persistentVolumeClaim": {
            "claimName": extra_disk_claim_name(machine, &d.name),
        }}));
    }
    volumes
}

/// The claim behind extra disk `disk` of `machine`.
pub fn extra_disk_claim_name(machine: &str, disk: &str) -> String {
    format!("{machine}-{disk}")
}

/// The empty claims of `machine`'s extra disks, owned by its VM so they go with it.
pub fn extra_disk_claims(
    pool: &NodePool,
    tenant: &str,
    machine: &str,
    vm_owner: &OwnerReference,
) -> Vec<PersistentVolumeClaim> {
    pool.spec
        .template
        .extra_disks
        .iter()
        .map(|d| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(extra_disk_claim_name(machine, &d.name)),
                namespace: pool.namespace(),
                labels: Some(labels(pool, tenant)),
                owner_references: Some(vec![vm_owner.clone()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: d.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), d.size.clone())])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_endpoint_inside_the_tenant_service_range_is_refused_naming_the_field() {
        for (endpoint, cidr, clash) in [
            ("10.96.4.7:6443", "10.96.0.0/16", true),
            ("10.96.4.7:6443", "10.112.0.0/16", false),
            ("10.96.4.7:443", "10.96.0.0/12", true),
            ("[fd00::5]:6443", "fd00::/108", true),
            ("[fd00::5]:6443", "fd01::/108", false),
            ("api.example.com:6443", "10.96.0.0/16", false),
        ] {
            let found = endpoint_clash(endpoint, cidr);
            assert_eq!(found.is_some(), clash, "{endpoint} in {cidr}: {found:?}");
            if let Some(message) = found {
                assert!(message.starts_with(&format!("spec.network.serviceCIDR {cidr}")));
            }
        }
    }

    use super::*;

    fn pool(yaml: &str) -> NodePool {
        let mut p = NodePool::new("workers", serde_yaml_ng::from_str(yaml).unwrap());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("pool-uid".into());
        p
    }

    const POOL: &str = r#"
controlPlaneRef: {name: demo}
replicas: 2
template:
  cores: 2
  memory: 3Gi
  nodeLabels: {tier: web}
  taints: [{key: dedicated, value: web, effect: NoSchedule}]
  sshAuthorizedKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrr user@host"]
  kubeletExtraArgs: {max-pods: "50"}
  extraDisks: [{name: data, size: 5Gi, storageClassName: fast}]
  placement:
    nodeSelector: {kind: metal}
    tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]
"#;

    fn inputs() -> MachineInputs<'static> {
        MachineInputs {
            version: "v1.34.4",
            image: "orrery.dev/worker:v1.34.4",
            endpoint: "10.96.0.20:6443",
            ca_cert_hash: "sha256:abc",
            external_cloud_provider: false,
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "orrery.dev/v1alpha1".into(),
            kind: "NodePool".into(),
            name: "workers".into(),
            uid: "pool-uid".into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_tokens_have_kubeadms_shape() {
        let t = BootstrapToken::generate();
        assert_eq!((t.id.len(), t.secret.len()), (6, 16));
        let re = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        assert!(re(&t.id) && re(&t.secret));
        assert_ne!(BootstrapToken::generate(), t, "random");
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "the secret is never logged"
        );
        let name = machine_name("workers");
        assert!(name.starts_with("workers-") && name.len() == 13, "{name}");
        let long = machine_name(&"a".repeat(80));
        assert!(long.len() <= 63, "a node name is a DNS label: {long}");
    }

    #[test]
    fn the_template_hash_follows_template_version_and_image() {
        let p = pool(POOL);
        let h = template_hash(&p, "v1.34.4", "img:1").unwrap();
        assert_eq!(h, template_hash(&p, "v1.34.4", "img:1").unwrap());
        assert_ne!(h, template_hash(&p, "v1.35.0", "img:1").unwrap());
        assert_ne!(h, template_hash(&p, "v1.34.4", "img:2").unwrap());
        let mut scaled = p.clone();
        scaled.spec.replicas = 7;
        assert_eq!(
            h,
            template_hash(&scaled, "v1.34.4", "img:1").unwrap(),
            "scaling rolls nothing"
        );
        let mut bigger = p.clone();
        bigger.spec.template.cores = 4;
        assert_ne!(h, template_hash(&bigger, "v1.34.4", "img:1").unwrap());
    }

    #[test]
    fn the_token_secret_authenticates_a_join_until_it_expires() {
        let token = BootstrapToken {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
        };
        let expires: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let s = token_secret(&pool(POOL), "workers-x1y2z", &token, expires);
        assert_eq!(s.metadata.name.as_deref(), Some("bootstrap-token-abcdef"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(s.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        let d = s.string_data.unwrap();
        assert_eq!(d["expiration"], "2026-01-01T00:10:00Z");
        assert_eq!(d["auth-extra-groups"], BOOTSTRAPPERS);
        assert_eq!(d["usage-bootstrap-authentication"], "true");
        assert_eq!(s.metadata.labels.unwrap()[MACHINE_LABEL], "workers-x1y2z");
    }

    #[test]
    fn user_data_joins_with_the_pools_settings() {
        let token = BootstrapToken {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
        };
        let text = user_data(&pool(POOL), "workers-x1y2z", &token, &inputs()).unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["hostname"], "workers-x1y2z");
        assert_eq!(
            doc["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrr user@host"
        );
        assert_eq!(doc["runcmd"][0][1], "join");
        let file = &doc["write_files"][0];
        assert_eq!(file["permissions"], "0600");
        let join: Value = serde_yaml_ng::from_str(file["content"].as_str().unwrap()).unwrap();
        assert_eq!(join["kind"], "JoinConfiguration");
        let discovery = &join["discovery"]["bootstrapToken"];
        assert_eq!(discovery["apiServerEndpoint"], "10.96.0.20:6443");
        assert_eq!(discovery["token"], "abcdef.0123456789abcdef");
        assert_eq!(discovery["caCertHashes"][0], "sha256:abc");
        let reg = &join["nodeRegistration"];
        assert_eq!(reg["name"], "workers-x1y2z");
        assert_eq!(
            reg["taints"][0],
            json!({"key": "dedicated", "value": "web", "effect": "NoSchedule"})
        );
        let args = kubelet_flags(&text);
        assert_eq!(args["provider-id"], "kubevirt://workers-x1y2z");
        assert_eq!(args["node-labels"], "tier=web,orrery.dev/nodepool=workers");
        assert_eq!(args["max-pods"], "50");
    }

    /// The kubelet flags of the JoinConfiguration in user data `text`.
    fn kubelet_flags(text: &str) -> BTreeMap<String, String> {
        let doc: Value = serde_yaml_ng::from_str(text).unwrap();
        let file = doc["write_files"][0]["content"].as_str().unwrap();
        let join: Value = serde_yaml_ng::from_str(file).unwrap();
        join["nodeRegistration"]["kubeletExtraArgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().into(),
                    a["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// With the tenant's cloud controller on, the kubelet leaves the Node to it (and the Node
    /// starts tainted uninitialised); without it, no such flag, whatever the user's flags say.
    #[test]
    fn the_kubelet_is_external_to_a_cloud_exactly_when_the_cloud_controller_runs() {
        let token = BootstrapToken::generate();
        for (enabled, user_flag, expected) in [
            (true, None, Some("external")),
            (false, None, None),
            (true, Some("none"), Some("external")),
            (false, Some("external"), Some("external")),
        ] {
            let mut p = pool(POOL);
            if let Some(v) = user_flag {
                p.spec
                    .template
                    .kubelet_extra_args
                    .insert("cloud-provider".into(), v.into());
            }
            let m = MachineInputs {
                external_cloud_provider: enabled,
                ..inputs()
            };
            let text = user_data(&p, "workers-x1y2z", &token, &m).unwrap();
            let flags = kubelet_flags(&text);
            assert_eq!(
                flags.get("cloud-provider").map(String::as_str),
                expected,
                "enabled {enabled}, user's flag {user_flag:?}"
            );
            assert_eq!(flags["provider-id"], "kubevirt://workers-x1y2z");
        }
    }

    #[test]
    fn the_vm_boots_the_worker_image_with_the_pools_shape() {
        let p = pool(POOL);
        let vm = virtual_machine(&p, "demo", "workers-x1y2z", "h1", &inputs(), owner());
        assert_eq!(
            vm.metadata.labels.as_ref().unwrap()[TEMPLATE_HASH_LABEL],
            "h1"
        );
        assert_eq!(vm.metadata.labels.as_ref().unwrap()[TENANT_LABEL], "demo");
        assert_eq!(
            vm.metadata.annotations.as_ref().unwrap()[VERSION_ANNOTATION],
            "v1.34.4"
        );
        assert_eq!(
            vm.metadata.owner_references.as_ref().unwrap()[0].uid,
            "pool-uid"
        );
        let spec = Value::Object(vm.spec.fields);
        let t = &spec["template"]["spec"];
        assert_eq!(t["domain"]["cpu"]["cores"], 2);
        assert_eq!(t["domain"]["memory"]["guest"], "3Gi");
        assert_eq!(
            t["domain"]["firmware"]["kernelBoot"]["container"]["image"],
            "orrery.dev/worker:v1.34.4"
        );
        assert_eq!(
            t["domain"]["firmware"]["kernelBoot"]["kernelArgs"],
            WORKER_KERNEL_ARGS
        );
        assert_eq!(t["nodeSelector"]["kind"], "metal");
        assert_eq!(t["tolerations"][0]["key"], "dedicated");
        assert_eq!(
            t["volumes"][1]["cloudInitNoCloud"]["secretRef"]["name"],
            "workers-x1y2z-userdata"
        );
        assert_eq!(
            t["volumes"][2]["persistentVolumeClaim"]["claimName"],
            "workers-x1y2z-data"
        );
        assert_eq!(t["domain"]["devices"]["disks"][2]["serial"], "data");
        assert_eq!(
            spec["template"]["metadata"]["labels"][MACHINE_LABEL],
            "workers-x1y2z"
        );

        let claims = extra_disk_claims(&p, "demo", "workers-x1y2z", &owner());
        assert_eq!(claims.len(), 1);
        let c = claims[0].spec.as_ref().unwrap();
        assert_eq!(c.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "5Gi"
        );
    }

    /// The hash kubeadm documents for `--discovery-token-ca-cert-hash`, computed by openssl.
    #[test]
    fn the_ca_hash_is_the_one_openssl_computes() {
        let ca = crate::pki::generate_ca("test-ca", std::time::Duration::from_secs(3600)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, &ca.cert).unwrap();
        let script = format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            path.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = String::from_utf8(out.stdout).unwrap();
        let expected = expected.split_whitespace().next().unwrap();
        assert_eq!(
            ca_cert_hash(&ca.cert).unwrap(),
            format!("sha256:{expected}")
        );
        assert!(ca_cert_hash("not a certificate").is_err());
    }
}
