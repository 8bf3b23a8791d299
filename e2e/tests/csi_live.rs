//! The CSI driver in a real tenant on the live tier: a tenant with `spec.addons.csi` and one
//! worker VM gets the driver (CSIDriver, the default StorageClass `orrery`, the node plugin on
//! the worker, registered with its kubelet). A claim of the default class binds once a pod
//! needs it: Orrery makes its disk (a Block claim in the tenant's management namespace, here on
//! a local volume over a loop device of the ground's node) and hot-plugs it into the worker VM;
//! the node plugin finds it by serial, formats and mounts it. A pod writes a file; after it is
//! gone (and the disk unplugged), the claim is grown and a new pod reads the file back (its
//! kubelet finishing the resize). Deleting the claim deletes the disk; switching the add-on off
//! removes the driver from the tenant.
//!
//! Needs the live tier with KubeVirt (`e2e/ground up --live`); fails, never skips, without it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use orrery_e2e::live::{
    Release, Teardown, Tenant, apply_json, check, live_ground, live_scheduling, managed_datastore,
    poll_until, restricted_namespace, wait_tenant_ready, write_admin_kubeconfig,
};
use orrery_e2e::{Ground, install_crds, unique_name};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The version of the tenant and its worker (one the ground has a worker image of).
const VERSION: &str = "v1.34.4";
/// Size of each local disk of the management cluster.
const DISK_BYTES: u64 = 1 << 30;

/// Local Block volumes of the management cluster over loop devices of the ground's node, and
/// their StorageClass; removed when dropped.
struct LocalDisks<'a> {
    ground: &'a Ground,
    class: String,
    volumes: Vec<(String, String, PathBuf)>,
}

impl<'a> LocalDisks<'a> {
    fn new(ground: &'a Ground, count: usize) -> Self {
        let class = unique_name("orrery-csi-local");
        let node = ground.var("ORRERY_GROUND_NODE");
        let dir = std::env::temp_dir().join(&class);
        std::fs::create_dir_all(&dir).unwrap();
        let mut disks = Self {
            ground,
            class: class.clone(),
            volumes: vec![],
        };
        apply_json(
            ground,
            &json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": class},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain",
                // A local volume cannot grow, but a claim grows within it (see the test).
                "allowVolumeExpansion": true
            }),
        );
        for i in 0..count {
            let file = dir.join(format!("disk-{i}.img"));
            std::fs::File::create(&file)
                .unwrap()
                .set_len(DISK_BYTES)
                .unwrap();
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file)
                .output()
                .unwrap();
            let device = check(out, "losetup").trim().to_string();
            let pv = format!("{class}-{i}");
            disks.volumes.push((pv.clone(), device.clone(), file));
            apply_json(
                ground,
                &json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv},
                    "spec": {
                        "capacity": {"storage": DISK_BYTES.to_string()},
                        "volumeMode": "Block", "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": class,
                        "local": {"path": device},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                        ]}]}}
                    }
                }),
            );
        }
        disks
    }
}

impl Drop for LocalDisks<'_> {
    fn drop(&mut self) {
        for (pv, device, file) in &self.volumes {
            let _ = self
                .ground
                .run("kubectl", &["delete", "pv", pv, "--wait=false"]);
            let _ = Command::new("losetup").args(["--detach", device]).status();
            let _ = std::fs::remove_file(file);
        }
        let _ = self
            .ground
            .run("kubectl", &["delete", "storageclass", &self.class]);
    }
}

/// A jsonpath of a management object: "" when it does not exist, None when kubectl fails.
fn field(ground: &Ground, ns: &str, object: &str, path: &str) -> Option<String> {
    let jsonpath = format!("jsonpath={path}");
    let args = [
        "get",
        object,
        "-n",
        ns,
        "--ignore-not-found",
        "-o",
        &jsonpath,
    ];
    stdout(ground.run("kubectl", &args))
}

/// What `kubectl get` in the tenant prints: "" when nothing exists, None when kubectl fails.
fn tenant_field(tenant: &Tenant, args: &[&str]) -> Option<String> {
    let mut all = args.to_vec();
    all.push("--ignore-not-found");
    stdout(tenant.run(&all))
}

fn stdout(out: std::process::Output) -> Option<String> {
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What a failed wait shows: the management side (claims, VMs, hot-plug pods, events), the
/// tenant side (claims, volumes, attachments, pods, events) and the operator's log.
fn report(ground: &Ground, ns: &str, release: &Release, tenant: &Tenant) -> String {
    let mut out = String::new();
    for args in [
        vec!["get", "pvc,pods,vm,vmi", "-n", ns, "-o", "wide"],
        vec![
            "get",
            "vmi",
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].status.volumeStatus}",
        ],
        vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        vec!["get", "pv"],
    ] {
        let o = ground.run("kubectl", &args);
        out += &format!(
            "$ kubectl {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for args in [
        vec!["get", "pvc,pods", "-A", "-o", "wide"],
        vec!["get", "pv,volumeattachments,csinodes", "-o", "wide"],
        vec!["get", "events", "-A", "--sort-by=.lastTimestamp"],
        vec![
            "logs",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=orrery-csi-node",
            "--tail=40",
        ],
    ] {
        let o = tenant.run(&args);
        out += &format!(
            "$ tenant kubectl {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let logs = release.logs();
    let tail: Vec<&str> = logs.lines().rev().take(80).collect();
    out + &tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn wait_until(
    what: &str,
    timeout: Duration,
    report: &dyn Fn() -> String,
    done: impl FnMut() -> bool,
) -> Duration {
    let took = poll_until(what, timeout, Duration::from_secs(2), report, done);
    println!("csi: {what} in {:.1} s", took.as_secs_f64());
    took
}

/// Whether the tenant lets the cloud controller's user (which the CSI driver's controllers use)
/// `verb` `resource`: "yes" or "no".
fn can(tenant: &Tenant, verb: &str, resource: &str) -> String {
    tenant.can_i(verb, resource, "orrery:cloud-controller")
}

/// A pod on the worker running kubectl (the worker has the kube-proxy image, whose kube binary
/// is also kubectl) with the claim `data` at /data; `kubectl config` writes and reads a file.
fn kubectl_pod(name: &str, args: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": format!("registry.k8s.io/kube-proxy:{VERSION}"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["kubectl"], "args": args,
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_in_a_tenant_gets_a_hot_plugged_disk_that_keeps_its_data() {
    let ground = live_ground();
    install_crds(&ground);
    let client = ground.client().await.unwrap();
    let release = Release::install(&ground, "orrery-csi");
    let etcd_ns = unique_name("orrery-csi-etcd");
    let datastore = unique_name("csi");
    managed_datastore(&ground, &client, &datastore, &etcd_ns).await;
    let ns = restricted_namespace(&ground, "csi");
    // Worker VMs and their hot-plug pods need a privileged namespace.
    ground.kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=privileged",
        "--overwrite",
    ]);
    let _teardown = Teardown {
        ground: &ground,
        namespaces: [ns.clone(), etcd_ns.clone()],
    };
    let disks = LocalDisks::new(&ground, 2);

    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "store", "namespace": ns},
            "spec": {"version": VERSION, "dataStore": datastore,
                     "network": {"serviceCIDR": "10.112.0.0/16"},
                     "controlPlane": {"scheduling": live_scheduling()},
                     "addons": {"csi": {"enabled": true, "storageClassName": disks.class}}}
        }),
    );
    wait_tenant_ready(&ground, &ns, "store");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("store-admin-kubeconfig")
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique_name("orrery-csi"));
    std::fs::create_dir_all(&dir).unwrap();
    let tenant = Tenant {
        ground: ground.clone(),
        kubeconfig: write_admin_kubeconfig(&secret, &dir),
    };
    let why = || report(&ground, &ns, &release, &tenant);
    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
            "metadata": {"name": "workers", "namespace": ns},
            "spec": {"controlPlaneRef": {"name": "store"}, "replicas": 1,
                     "template": {"cores": 1, "memory": "1536Mi", "placement": live_scheduling()},
                     "nodeStartupTimeout": "8m", "drainTimeout": "2m"}
        }),
    );
    wait_until("the worker Ready", Duration::from_secs(600), &why, || {
        field(&ground, &ns, "np/workers", "{.status.readyReplicas}").as_deref() == Some("1")
    });
    let worker = tenant.nodes()[0].0.clone();
    // The node plugin registered itself with the worker's kubelet.
    wait_until(
        "the node plugin registered",
        Duration::from_secs(180),
        &why,
        || {
            tenant_field(
                &tenant,
                &[
                    "get",
                    "csinode",
                    &worker,
                    "-o",
                    "jsonpath={.spec.drivers[*].name}",
                ],
            )
            .as_deref()
                == Some("csi.orrery.dev")
        },
    );
    assert_eq!(
        tenant_field(
            &tenant,
            &[
                "get",
                "storageclass",
                "orrery",
                "-o",
                r#"jsonpath={.metadata.annotations.storageclass\.kubernetes\.io/is-default-class}"#
            ]
        )
        .as_deref(),
        Some("true"),
        "orrery is the tenant's default StorageClass"
    );

    // The driver's controllers work on the tenant as the cloud controller's user, which may do
    // their work and no more.
    assert_eq!(can(&tenant, "create", "persistentvolumes"), "yes");
    assert_eq!(can(&tenant, "patch", "volumeattachments/status"), "yes");
    assert_eq!(
        can(&tenant, "update", "persistentvolumeclaims/status"),
        "no"
    );
    assert_eq!(can(&tenant, "get", "secrets"), "no");

    // A claim of the default class, and a pod that writes a file on it.
    tenant.apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "256Mi"}}}
    }));
    let proof = format!("https://{}", unique_name("written"));
    let start = Instant::now();
    tenant.apply(&kubectl_pod(
        "writer",
        &[
            "config",
            "set-cluster",
            "proof",
            &format!("--server={proof}"),
            "--kubeconfig=/data/proof",
        ],
    ));
    wait_until(
        "the writer ran with its new volume",
        Duration::from_secs(600),
        &why,
        || {
            tenant_field(
                &tenant,
                &["get", "pod", "writer", "-o", "jsonpath={.status.phase}"],
            )
            .as_deref()
                == Some("Succeeded")
        },
    );
    println!(
        "csi: claim created → writer pod done with the volume: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let pv = tenant.kubectl(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    let handle = tenant.kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.csi.volumeHandle}"]);
    assert_eq!(handle.len(), 20, "volume id {handle:?}");
    // Its disk: a Block claim in the tenant's namespace, bound to one of the local volumes.
    let disk = format!("store-csi-{handle}");
    let bound_to = ground.kubectl(&[
        "get",
        "pvc",
        &disk,
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    assert!(
        bound_to.starts_with(&disks.class),
        "disk {disk} is bound to {bound_to:?}"
    );

    // The writer goes: the disk is unplugged from the VM.
    tenant.kubectl(&["delete", "pod", "writer", "--wait=true", "--timeout=120s"]);
    wait_until("the disk unplugged", Duration::from_secs(300), &why, || {
        tenant_field(&tenant, &["get", "volumeattachments", "-o", "name"]).as_deref() == Some("")
            && field(
                &ground,
                &ns,
                "vmi",
                "{.items[*].status.volumeStatus[*].name}",
            )
            .is_some_and(|names| !names.contains(&handle))
    });

    // Grown while no pod uses it: the disk's management claim asks for more, the tenant's
    // volume holds more, and the claim waits for a node to grow the filesystem. (The local
    // volumes cannot grow, but each is larger than the claim, so the claim grows within it.)
    let grow_start = Instant::now();
    tenant.kubectl(&[
        "patch",
        "pvc",
        "data",
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}"#,
    ]);
    let grown = (512u64 << 20).to_string();
    wait_until("the volume grown", Duration::from_secs(120), &why, || {
        tenant_field(
            &tenant,
            &["get", "pv", &pv, "-o", "jsonpath={.spec.capacity.storage}"],
        )
        .as_deref()
            == Some(grown.as_str())
            && tenant_field(
                &tenant,
                &[
                    "get",
                    "pvc",
                    "data",
                    "-o",
                    "jsonpath={.status.allocatedResourceStatuses.storage}",
                ],
            )
            .as_deref()
                == Some("NodeResizePending")
    });
    assert_eq!(
        field(
            &ground,
            &ns,
            &format!("pvc/{disk}"),
            "{.spec.resources.requests.storage}"
        )
        .as_deref(),
        Some(grown.as_str()),
        "the disk's management claim asks for the new size"
    );

    // A new pod reads the file back from the same volume, plugged in again; its kubelet has
    // the node plugin grow the filesystem, and the claim holds the new size.
    let start = Instant::now();
    tenant.apply(&kubectl_pod(
        "reader",
        &[
            "config",
            "view",
            "--kubeconfig=/data/proof",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    ));
    wait_until("the reader ran", Duration::from_secs(600), &why, || {
        tenant_field(
            &tenant,
            &["get", "pod", "reader", "-o", "jsonpath={.status.phase}"],
        )
        .as_deref()
            == Some("Succeeded")
    });
    println!(
        "csi: reader pod done (attach again, mount) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        tenant.kubectl(&["logs", "reader"]).trim(),
        proof,
        "the reader reads what the writer wrote"
    );
    wait_until(
        "the claim holding its new size",
        Duration::from_secs(60),
        &why,
        || {
            tenant_field(
                &tenant,
                &[
                    "get",
                    "pvc",
                    "data",
                    "-o",
                    "jsonpath={.status.capacity.storage}",
                ],
            )
            // The kubelet copies the volume's size, which the API server may print as 512Mi.
            .is_some_and(|held| held == grown || held == "512Mi")
        },
    );
    println!(
        "csi: claim grown → filesystem grown at the next mount: {:.1} s",
        grow_start.elapsed().as_secs_f64()
    );

    // What the node plugin costs on its worker, after it staged, published and grew a volume
    // (the kubelet's own figures).
    let summary: serde_json::Value = serde_json::from_str(&tenant.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{worker}/proxy/stats/summary"),
    ]))
    .unwrap();
    let plugin = summary["pods"]
        .as_array()
        .and_then(|pods| {
            pods.iter().find(|p| {
                p["podRef"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("orrery-csi-node-"))
            })
        })
        .expect("the node plugin's pod in the kubelet's summary");
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    println!(
        "csi: the node plugin on its worker: {:.1} MiB working set, {:.1} MiB RSS, {:.2} CPU-seconds in all",
        mib(&plugin["memory"]["workingSetBytes"]),
        mib(&plugin["memory"]["rssBytes"]),
        plugin["cpu"]["usageCoreNanoSeconds"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    );

    // Deleting the claim deletes the volume and its disk.
    tenant.kubectl(&["delete", "pod", "reader", "--wait=true", "--timeout=120s"]);
    tenant.kubectl(&["delete", "pvc", "data", "--wait=true", "--timeout=120s"]);
    wait_until(
        "the volume and its disk deleted",
        Duration::from_secs(300),
        &why,
        || {
            tenant_field(&tenant, &["get", "pv", "-o", "name"]).as_deref() == Some("")
                && field(&ground, &ns, &format!("pvc/{disk}"), "{.metadata.name}").as_deref()
                    == Some("")
                // KubeVirt's hot-plug pods go with the disk.
                && field(&ground, &ns, "pods", "{.items[*].metadata.name}")
                    .is_some_and(|pods| !pods.contains("hp-volume-"))
        },
    );

    // Switched off: the driver leaves the tenant (CSIDriver, StorageClass, node plugin).
    ground.kubectl(&[
        "patch",
        "tcp",
        "store",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"addons":{"csi":{"enabled":false}}}}"#,
    ]);
    wait_until(
        "the driver removed from the tenant",
        Duration::from_secs(120),
        &why,
        || {
            tenant_field(&tenant, &["get", "csidriver,storageclass", "-o", "name"]).as_deref()
                == Some("")
                && tenant_field(
                    &tenant,
                    &[
                        "get",
                        "daemonset",
                        "orrery-csi-node",
                        "-n",
                        "kube-system",
                        "-o",
                        "name",
                    ],
                )
                .as_deref()
                    == Some("")
        },
    );
    assert_eq!(
        can(&tenant, "create", "persistentvolumes"),
        "no",
        "the driver's access goes with it"
    );

    ground.kubectl(&[
        "delete",
        "np,tcp",
        "--all",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=300s",
    ]);
    for n in [&ns, &etcd_ns] {
        ground.kubectl(&["delete", "namespace", n, "--wait=false"]);
    }
    drop(disks);
}
