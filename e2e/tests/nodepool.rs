//! NodePools on real KubeVirt: Orrery (installed with its chart) creates worker VMs from the
//! worker image, they join a live tenant with kubeadm, run its pods and add-ons, scale, roll
//! and heal; the delete annotation removes exactly its machine; deleting a pool or the tenant
//! leaves nothing of it. The tenant's cloud controller initialises the workers' Nodes and serves
//! a LoadBalancer Service that real curl reaches. The operator's cluster-autoscaler API, called
//! as the tenant's autoscaler calls it, scales a pool from zero to a real joined machine and
//! deletes exactly that machine again. Checked with real kubectl against the tenant and the
//! management cluster.
//!
//! Needs the live tier with KubeVirt (`e2e/ground up --live`); fails, never skips, without it.
//! At most two worker VMs boot at once (each takes about one core under emulation).

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use orrery_e2e::autoscaler::proto::instance_status::InstanceState;
use orrery_e2e::autoscaler::proto::kubernetes::Node;
use orrery_e2e::autoscaler::proto::{
    ExternalGrpcNode, NodeGroupDeleteNodesRequest, NodeGroupIncreaseSizeRequest,
    NodeGroupNodesRequest, NodeGroupTemplateNodeInfoRequest, RefreshRequest,
};
use orrery_e2e::autoscaler::{self, CloudConfig};
use orrery_e2e::live::{
    Release, Teardown, Tenant, apply_json, check, live_ground, live_scheduling, managed_datastore,
    poll_until, restricted_namespace, wait_tenant_ready, write_admin_kubeconfig,
};
use orrery_e2e::{Ground, eventually, install_crds, unique_name};
use prost::Message;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Everything a failed wait should show: the pool, its VMs, VMIs and launcher pods, the tail of
/// each guest's console, the controller's log and the tenant's nodes.
fn report(ground: &Ground, ns: &str, release: &Release, tenant: &Tenant) -> String {
    let mut out = String::new();
    // What the node runs (every namespace, as earlier tests' leftovers share its two cores),
    // the KubeVirt objects with their conditions, and the namespace's events in order.
    for args in [
        vec!["get", "np", "workers", "-n", ns, "-o", "yaml"],
        vec!["get", "vm,vmi,pods", "-n", ns, "-o", "wide"],
        vec!["get", "vmi", "-n", ns, "-o", "yaml"],
        vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        vec!["get", "vmi,pods", "-A", "-o", "wide"],
        vec!["describe", "nodes"],
        vec![
            "logs",
            "-n",
            "kubevirt",
            "-l",
            "kubevirt.io=virt-controller",
            "--tail=60",
            "--prefix",
        ],
    ] {
        let o = ground.run("kubectl", &args);
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    let pods = ground.run(
        "kubectl",
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "kubevirt.io=virt-launcher",
            "-o",
            "name",
        ],
    );
    for pod in String::from_utf8_lossy(&pods.stdout).lines() {
        let o = ground.run(
            "kubectl",
            &[
                "logs",
                "-n",
                ns,
                pod,
                "-c",
                "guest-console-log",
                "--tail=40",
            ],
        );
        out.push_str(&format!("--- console of {pod}:\n"));
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out.push_str("--- controller:\n");
    out.push_str(&release.logs());
    let nodes = tenant.run(&["get", "nodes", "-o", "wide"]);
    out.push_str(&String::from_utf8_lossy(&nodes.stdout));
    out
}

/// Waits until `done` holds, polling every 3 s, or fails with the report.
fn wait_until(
    what: &str,
    timeout: Duration,
    report: &dyn Fn() -> String,
    done: impl FnMut() -> bool,
) -> Duration {
    let took = poll_until(what, timeout, Duration::from_secs(3), report, done);
    println!("nodepool: {what} in {:.0} s", took.as_secs_f64());
    took
}

fn pool_field(ground: &Ground, ns: &str, path: &str) -> String {
    pool_field_of(ground, ns, "workers", path)
}

fn pool_field_of(ground: &Ground, ns: &str, pool: &str, path: &str) -> String {
    let out = ground.run(
        "kubectl",
        &[
            "get",
            "np",
            pool,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={path}"),
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The VM names of the pool `workers` in the management cluster.
fn vms(ground: &Ground, ns: &str) -> Vec<String> {
    vms_of(ground, ns, "workers")
}

/// A pool's VM names in the management cluster.
fn vms_of(ground: &Ground, ns: &str, pool: &str) -> Vec<String> {
    let out = ground.run(
        "kubectl",
        &[
            "get",
            "vm",
            "-n",
            ns,
            "-l",
            &format!("orrery.dev/nodepool={pool}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    names.sort();
    names
}

fn ready_nodes(tenant: &Tenant) -> Vec<String> {
    ready_nodes_of(tenant, "workers")
}

fn ready_nodes_of(tenant: &Tenant, pool: &str) -> Vec<String> {
    let mut names: Vec<String> = tenant
        .nodes_of(pool)
        .into_iter()
        .filter(|(_, ready, _)| ready == "True")
        .map(|(n, _, _)| n)
        .collect();
    names.sort();
    names
}

fn pool_yaml(ns: &str, replicas: u32, memory: &str) -> Value {
    named_pool_yaml("workers", ns, replicas, memory)
}

fn named_pool_yaml(name: &str, ns: &str, replicas: u32, memory: &str) -> Value {
    json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "controlPlaneRef": {"name": "live"},
            "replicas": replicas,
            "template": {"cores": 1, "memory": memory, "nodeLabels": {"tier": "e2e"},
                         "placement": live_scheduling()},
            "nodeStartupTimeout": "8m",
            "unhealthyTimeout": "1m",
            "drainTimeout": "2m"
        }
    })
}

/// Images the worker image preloads (there is no registry).
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.1";

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_joins_runs_pods_scales_rolls_heals_and_goes_with_its_tenant() {
    let ground = live_ground();
    install_crds(&ground);
    let client = ground.client().await.unwrap();
    let release = Release::install(&ground, "orrery-np");
    let etcd_ns = unique_name("orrery-np-etcd");
    let datastore = unique_name("np");
    managed_datastore(&ground, &client, &datastore, &etcd_ns).await;
    // KubeVirt's launcher pods need a namespace that admits privileged pods; Orrery names the
    // label to set while the namespace refuses them.
    let ns = restricted_namespace(&ground, "np");
    // Declared after the release, so dropped before it: a failed run's VMs go while the operator
    // that removes them still runs, and the tests after this one get the node's cores back.
    let _teardown = Teardown {
        ground: &ground,
        namespaces: [ns.clone(), etcd_ns.clone()],
    };
    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "live", "namespace": ns},
            // Workers reach their apiserver at a management Service IP: the tenant's Services
            // get a range of their own, or the worker's kube-proxy would capture those IPs.
            "spec": {"version": "v1.34.4", "replicas": 1, "dataStore": datastore,
                     "network": {"serviceCIDR": "10.112.0.0/16"},
                     // No load balancer on the ground: a tenant LoadBalancer Service gets the
                     // cluster IP of its management Service, which the test host reaches.
                     "addons": {"cloudController": {"loadBalancerServiceType": "ClusterIP"},
                                // Its client certificate and cloud-config drive the operator's
                                // autoscaler API below (the upstream image cannot run here).
                                "clusterAutoscaler": {"enabled": true}},
                     "controlPlane": {"scheduling": live_scheduling()}}
        }),
    );
    wait_tenant_ready(&ground, &ns, "live");
    let dir = std::env::temp_dir().join(unique_name("orrery-np"));
    std::fs::create_dir_all(&dir).unwrap();
    let admin = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("live-admin-kubeconfig")
        .await
        .unwrap();
    let tenant = Tenant {
        ground: ground.clone(),
        kubeconfig: write_admin_kubeconfig(&admin, &dir),
    };
    let why = || report(&ground, &ns, &release, &tenant);

    // A restarted controller (an upgrade) finishes its first reconcile of a tenant already there.
    release.restart();
    wait_until(
        "the restarted controller reconciled the tenant",
        Duration::from_secs(120),
        &why,
        || {
            release
                .reconciles_finished("tenantcontrolplane")
                .unwrap_or(0)
                >= 1
        },
    );

    apply_json(&ground, &pool_yaml(&ns, 1, "1536Mi"));
    wait_until(
        "the pool refused in a restricted namespace",
        Duration::from_secs(60),
        &why,
        || {
            pool_field(
                &ground,
                &ns,
                r#"{.status.conditions[?(@.type=="Ready")].reason}"#,
            ) == "PodSecurityRefusesVMs"
        },
    );
    assert!(
        vms(&ground, &ns).is_empty(),
        "no VM in a namespace that cannot run it"
    );
    ground.kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=privileged",
        "--overwrite",
    ]);

    // A pool of one joins: its VM boots, kubeadm joins, the Node becomes Ready.
    wait_until("a pool of 1 Ready", Duration::from_secs(600), &why, || {
        pool_field(&ground, &ns, "{.status.readyReplicas}") == "1"
    });
    let first = vms(&ground, &ns);
    assert_eq!(first.len(), 1, "{first:?}");
    let nodes = tenant.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].0, first[0], "the Node is named after its VM");
    assert_eq!(nodes[0].2, format!("kubevirt://{}", first[0]));
    let labels = tenant.kubectl(&[
        "get",
        "node",
        &first[0],
        "-o",
        "jsonpath={.metadata.labels.tier}",
    ]);
    assert_eq!(labels, "e2e", "the pool's node labels");
    let version = tenant.kubectl(&[
        "get",
        "node",
        &first[0],
        "-o",
        "jsonpath={.status.nodeInfo.kubeletVersion}",
    ]);
    assert_eq!(
        version, "v1.34.4",
        "the worker's kubelet runs the tenant's version"
    );
    assert_eq!(pool_field(&ground, &ns, "{.status.version}"), "v1.34.4");
    // The bootstrap token did its job and is gone.
    let tokens = tenant.kubectl(&[
        "get",
        "secrets",
        "-n",
        "kube-system",
        "-l",
        "orrery.dev/nodepool=workers",
        "-o",
        "name",
    ]);
    assert_eq!(tokens.trim(), "", "bootstrap tokens left after the join");

    // The tenant's add-ons and a workload run on the worker; logs and exec go through the tenant
    // API to the worker's kubelet.
    wait_until(
        "CoreDNS Ready on the worker",
        Duration::from_secs(300),
        &why,
        || {
            tenant
                .run(&[
                    "-n",
                    "kube-system",
                    "rollout",
                    "status",
                    "deploy/coredns",
                    "--timeout=5s",
                ])
                .status
                .success()
        },
    );
    tenant.kubectl(&[
        "create",
        "deployment",
        "hello",
        &format!("--image={PAUSE_IMAGE}"),
    ]);
    tenant.kubectl(&["rollout", "status", "deploy/hello", "--timeout=180s"]);
    let on = tenant.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[0].spec.nodeName}",
    ]);
    assert_eq!(on, first[0], "the Deployment's pod runs on the worker");
    tenant.kubectl(&[
        "run",
        "talker",
        &format!("--image={COREDNS_IMAGE}"),
        "--restart=Never",
        "--command",
        "--",
        "/coredns",
        "-version",
    ]);
    wait_until(
        "a pod ran on the worker",
        Duration::from_secs(180),
        &why,
        || {
            tenant
                .run(&["get", "pod", "talker", "-o", "jsonpath={.status.phase}"])
                .stdout
                .starts_with(b"Succeeded")
        },
    );
    let logs = tenant.kubectl(&["logs", "talker"]);
    assert!(
        logs.contains("CoreDNS-"),
        "kubectl logs through the tenant: {logs}"
    );
    let coredns_pod = tenant.kubectl(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=kube-dns",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let exec = tenant.kubectl(&[
        "exec",
        "-n",
        "kube-system",
        &coredns_pod,
        "--",
        "/coredns",
        "-version",
    ]);
    assert!(
        exec.contains("CoreDNS-"),
        "kubectl exec through the tenant: {exec}"
    );

    // The tenant's cloud controller initialised the worker's Node from its VM, and serves a
    // LoadBalancer Service through a management Service.
    check_node_initialised(&ground, &ns, &tenant, &first[0]);
    check_load_balancer(&ground, &ns, &tenant, &why);

    // Scale to 2; the annotation the autoscaler sets removes exactly the first machine (a
    // replacement starts once it is gone, as replicas is still 2); back at 1, the machine still
    // booting goes first, so the newer of the two joined ones stays.
    check(
        ground.run(
            "kubectl",
            &["scale", "np/workers", "-n", &ns, "--replicas=2"],
        ),
        "kubectl scale np --replicas=2",
    );
    wait_until("scaled to 2 Ready", Duration::from_secs(600), &why, || {
        ready_nodes(&tenant).len() == 2
    });
    let two = vms(&ground, &ns);
    let newer: Vec<String> = two.iter().filter(|v| !first.contains(v)).cloned().collect();
    assert_eq!(newer.len(), 1, "{two:?}");
    ground.kubectl(&[
        "annotate",
        "vm",
        &first[0],
        "-n",
        &ns,
        "orrery.dev/delete-machine=true",
    ]);
    wait_until(
        "the annotated machine removed",
        Duration::from_secs(300),
        &why,
        || {
            let now = vms(&ground, &ns);
            !now.contains(&first[0])
                && now.contains(&newer[0])
                && tenant.nodes().iter().all(|(n, _, _)| n != &first[0])
        },
    );
    assert_eq!(
        ready_nodes(&tenant),
        newer,
        "only the annotated machine's node went"
    );
    check(
        ground.run(
            "kubectl",
            &["scale", "np/workers", "-n", &ns, "--replicas=1"],
        ),
        "kubectl scale np --replicas=1",
    );
    wait_until("scaled back to 1", Duration::from_secs(300), &why, || {
        vms(&ground, &ns) == newer && tenant.nodes().len() == 1
    });
    assert_eq!(ready_nodes(&tenant), newer, "the joined node stayed");
    let first = newer;
    let events = check(
        ground.run(
            "kubectl",
            &[
                "get",
                "events",
                "-n",
                &ns,
                "--field-selector",
                "involvedObject.kind=NodePool",
                "-o",
                "jsonpath={.items[*].reason}",
            ],
        ),
        "pool events",
    );
    for reason in ["MachineCreated", "MachineDraining", "MachineDeleted"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }

    // A template change rolls the pool: a new machine joins, then the old one goes.
    apply_json(&ground, &pool_yaml(&ns, 1, "1600Mi"));
    wait_until(
        "the rollout of a template change",
        Duration::from_secs(600),
        &why,
        || {
            let now = vms(&ground, &ns);
            now.len() == 1 && now != first && ready_nodes(&tenant) == now
        },
    );
    let rolled = vms(&ground, &ns);
    assert_eq!(pool_field(&ground, &ns, "{.status.updatedReplicas}"), "1");

    // A guest that dies comes back from a fresh disk that cannot rejoin: its Node stays NotReady
    // past unhealthyTimeout, and the machine is replaced.
    let vmi_pod = check(
        ground.run(
            "kubectl",
            &[
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                &format!("orrery.dev/machine={}", rolled[0]),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
        ),
        "launcher pod",
    );
    check(
        ground.run(
            "kubectl",
            &[
                "delete",
                "pod",
                "-n",
                &ns,
                &vmi_pod,
                "--grace-period=0",
                "--force",
            ],
        ),
        "kill the guest",
    );
    wait_until(
        "the dead machine replaced",
        Duration::from_secs(720),
        &why,
        || {
            let now = vms(&ground, &ns);
            now.len() == 1 && now != rolled && ready_nodes(&tenant) == now
        },
    );

    // The cluster-autoscaler's API, reached at the operator's Service with the tenant's own
    // client certificate, scales a second pool from zero: the empty group has a template Node,
    // and an increase of one makes a real machine that joins.
    let mut spare_pool = named_pool_yaml("spare", &ns, 0, "1536Mi");
    spare_pool["spec"]["autoscaling"] = json!({"minReplicas": 0, "maxReplicas": 1});
    apply_json(&ground, &spare_pool);
    let mut autoscaler = autoscaler_client(&ground, &client, &ns, &release).await;
    // The upstream autoscaler image cannot run here: the tenant's status names its Deployment.
    wait_until(
        "AddonsReady to name the autoscaler",
        Duration::from_secs(60),
        &why,
        || {
            ground
                .kubectl(&[
                    "get",
                    "tcp",
                    "live",
                    "-n",
                    &ns,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="AddonsReady")].reason}"#,
                ])
                .trim()
                == "ClusterAutoscalerUnavailable"
        },
    );
    // The autoscaler works on the tenant as its own user, and so do the cloud controller and
    // the CSI driver: each can do what it does and no more (never cluster-admin).
    assert_eq!(
        ground.kubectl(&[
            "get",
            "deployment",
            "live-cluster-autoscaler",
            "-n",
            &ns,
            "-o",
            r#"jsonpath={.spec.template.spec.volumes[?(@.name=="kubeconfig")].secret.secretName}"#,
        ]),
        "live-addon-kubeconfigs"
    );
    for (verb, resource, user, allowed) in [
        (
            "create",
            "pods/eviction",
            "orrery:cluster-autoscaler",
            "yes",
        ),
        ("update", "nodes", "orrery:cluster-autoscaler", "yes"),
        ("get", "secrets", "orrery:cluster-autoscaler", "no"),
        ("delete", "pods", "orrery:cluster-autoscaler", "no"),
        ("patch", "services/status", "orrery:cloud-controller", "yes"),
        ("update", "services/status", "orrery:cloud-controller", "no"),
        ("delete", "nodes", "orrery:cloud-controller", "yes"),
        ("get", "secrets", "orrery:cloud-controller", "no"),
        ("create", "pods", "orrery:cloud-controller", "no"),
    ] {
        assert_eq!(
            tenant.can_i(verb, resource, user),
            allowed,
            "{user} {verb} {resource}"
        );
    }
    let spare_group = format!("{ns}/spare");
    // The API serves from its watch of the pools, which sees the new one in a moment.
    let template = eventually(
        "the template Node of the empty group",
        Duration::from_secs(30),
        || {
            let mut autoscaler = autoscaler.clone();
            let id = spare_group.clone();
            async move {
                let request = NodeGroupTemplateNodeInfoRequest { id };
                autoscaler.node_group_template_node_info(request).await.ok()
            }
        },
    )
    .await
    .unwrap()
    .into_inner();
    let template = Node::decode(template.node_bytes.as_slice()).unwrap();
    let labels = template.metadata.unwrap_or_default().labels;
    assert_eq!(labels["node.kubernetes.io/instance-type"], "1c-1536Mi");
    autoscaler
        .node_group_increase_size(NodeGroupIncreaseSizeRequest {
            id: spare_group.clone(),
            delta: 1,
        })
        .await
        .expect("increase the empty group by one");
    wait_until(
        "the pool scaled from zero Ready",
        Duration::from_secs(600),
        &why,
        || ready_nodes_of(&tenant, "spare").len() == 1,
    );
    let spare = vms_of(&ground, &ns, "spare");
    // The instance's state comes from the machines of the pool's status, which the pool's next
    // reconcile (at most 10 s while it is busy) brings up to date after the Node turned Ready.
    let started = Instant::now();
    let instances = eventually("the new instance Running", Duration::from_secs(60), || {
        let mut autoscaler = autoscaler.clone();
        let id = spare_group.clone();
        async move {
            let instances = autoscaler
                .node_group_nodes(NodeGroupNodesRequest { id })
                .await
                .ok()?
                .into_inner()
                .instances;
            let running = !instances.is_empty()
                && instances.iter().all(|i| {
                    i.status.clone().unwrap_or_default().instance_state()
                        == InstanceState::InstanceRunning
                });
            running.then_some(instances)
        }
    })
    .await
    .unwrap();
    println!(
        "nodepool: the new instance Running for the autoscaler {:.0} s after its Node was Ready",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].id, format!("kubevirt://{}", spare[0]));

    // Deleting one pool removes its VMs, Secrets, Nodes and tokens, and leaves the tenant's
    // other pool alone.
    let workers = vms(&ground, &ns);
    check(
        ground.run(
            "kubectl",
            &[
                "delete",
                "np",
                "workers",
                "-n",
                &ns,
                "--wait=true",
                "--timeout=300s",
            ],
        ),
        "delete the pool workers",
    );
    assert!(
        left_of(&ground, &ns, "workers").is_empty(),
        "the deleted pool's objects remain"
    );
    assert!(
        tenant.nodes().is_empty(),
        "the deleted pool's Nodes remain in the tenant: {:?}; its VMs were {workers:?}",
        tenant.nodes()
    );
    let tokens = tenant.kubectl(&[
        "get",
        "secrets",
        "-n",
        "kube-system",
        "-l",
        "orrery.dev/nodepool=workers",
        "-o",
        "name",
    ]);
    assert_eq!(
        tokens.trim(),
        "",
        "the deleted pool's bootstrap tokens remain"
    );
    assert_eq!(vms_of(&ground, &ns, "spare"), spare, "the other pool kept");
    assert_eq!(ready_nodes_of(&tenant, "spare"), spare);

    // The autoscaler deletes exactly its node: the machine is drained and goes, the group is
    // back at zero, and no replacement is started meanwhile.
    autoscaler
        .node_group_delete_nodes(NodeGroupDeleteNodesRequest {
            id: spare_group.clone(),
            nodes: vec![ExternalGrpcNode {
                provider_id: format!("kubevirt://{}", spare[0]),
                name: spare[0].clone(),
                ..Default::default()
            }],
        })
        .await
        .expect("delete the group's node");
    assert_eq!(
        pool_field_of(&ground, &ns, "spare", "{.spec.replicas}"),
        "0"
    );
    let mut seen = std::collections::BTreeSet::new();
    wait_until(
        "the autoscaler's node gone",
        Duration::from_secs(300),
        &why,
        || {
            seen.extend(vms_of(&ground, &ns, "spare"));
            vms_of(&ground, &ns, "spare").is_empty() && tenant.nodes_of("spare").is_empty()
        },
    );
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        spare,
        "no other machine was started"
    );

    // Deleting the tenant deletes its remaining pool, its VMs and user data.
    check(
        ground.run(
            "kubectl",
            &[
                "delete",
                "tcp",
                "live",
                "-n",
                &ns,
                "--wait=true",
                "--timeout=300s",
            ],
        ),
        "delete the tenant",
    );
    wait_until(
        "the pool and its VMs gone",
        Duration::from_secs(300),
        &why,
        || {
            left_of(&ground, &ns, "spare").is_empty()
                && ground
                    .kubectl(&["get", "np", "-n", &ns, "-o", "name"])
                    .is_empty()
        },
    );
    release.uninstall();
    ground.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    ground.kubectl(&["delete", "namespace", &etcd_ns, "--wait=false"]);
}

/// A client of the operator's cluster-autoscaler API as tenant `live`'s autoscaler: its
/// cloud-config and key pair from the add-on's Secret, dialled at the API's Service IP (the test
/// host is outside the management cluster's DNS).
async fn autoscaler_client(
    ground: &Ground,
    client: &kube::Client,
    ns: &str,
    release: &Release,
) -> autoscaler::Client {
    let service = format!("{}-autoscaler", release.name);
    let ip = ground.kubectl(&[
        "get",
        "service",
        &service,
        "-n",
        &release.namespace,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let dial = format!("{}:8443", ip.trim());
    // The add-on writes the Secret, and the API answers, once the operator has started both.
    eventually(
        "the autoscaler API to answer",
        Duration::from_secs(120),
        || {
            let dial = dial.clone();
            async move {
                let config = CloudConfig::read(client, ns, "live").await.ok()?;
                let mut c = config.connect(Some(&dial)).await.ok()?;
                c.refresh(RefreshRequest {}).await.ok()?;
                Some(c)
            }
        },
    )
    .await
    .unwrap()
}

/// A pool's objects left in the management cluster: its VMs, VMIs and Secrets.
fn left_of(ground: &Ground, ns: &str, pool: &str) -> String {
    check(
        ground.run(
            "kubectl",
            &[
                "get",
                "vm,vmi,secrets",
                "-n",
                ns,
                "-l",
                &format!("orrery.dev/nodepool={pool}"),
                "-o",
                "name",
            ],
        ),
        "a pool's objects",
    )
    .trim()
    .to_string()
}

/// The cloud controller has initialised worker `node`: the uninitialised taint is gone (the pods
/// above could not have run otherwise, so this holds by now), the InternalIP is its VMI's address
/// and the instance type names its shape.
fn check_node_initialised(ground: &Ground, ns: &str, tenant: &Tenant, node: &str) {
    let field =
        |path: &str| tenant.kubectl(&["get", "node", node, "-o", &format!("jsonpath={path}")]);
    let taints = field("{.spec.taints[*].key}");
    assert!(
        !taints.contains("node.cloudprovider.kubernetes.io/uninitialized"),
        "the Node is still uninitialised: {taints}"
    );
    let vmi_ip = ground.kubectl(&[
        "get",
        "vmi",
        node,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.interfaces[0].ipAddress}",
    ]);
    assert!(!vmi_ip.is_empty(), "the VMI has no address");
    assert_eq!(
        field(r#"{.status.addresses[?(@.type=="InternalIP")].address}"#),
        vmi_ip,
        "the Node's InternalIP is its VM's address"
    );
    assert_eq!(
        field(r"{.metadata.labels.node\.kubernetes\.io/instance-type}"),
        "1c-1536Mi",
        "the instance type names the VM's cores and memory"
    );
}

/// A CoreDNS serving only its health endpoint on 8080 stands in for a web server (its image is
/// preloaded on the workers).
fn web_objects() -> [Value; 3] {
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web", "namespace": "default"},
        "data": {"Corefile": ".:1053 {\n health :8080\n whoami\n}\n"}
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "web",
                        "image": COREDNS_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/coredns", "-conf", "/etc/coredns/Corefile"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                        "securityContext": {"allowPrivilegeEscalation": false,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}]
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": "web"}}]
                }
            }
        }
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    });
    [config, deployment, service]
}

/// The management Service serving the tenant Service default/web: its cluster IP, or "".
fn management_service_ip(ground: &Ground, ns: &str) -> String {
    let out = ground.run(
        "kubectl",
        &[
            "get",
            "svc",
            "-n",
            ns,
            "-l",
            "orrery.dev/service-namespace=default,orrery.dev/service-name=web",
            "-o",
            "jsonpath={.items[*].spec.clusterIP}",
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The reasons of the Events about the tenant Service default/web.
fn web_events(tenant: &Tenant) -> String {
    let out = tenant.run(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.kind=Service,involvedObject.name=web",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tenant LoadBalancer Service gets the cluster IP of its management Service as its address,
/// real curl from the test host reaches the pod behind it there, and deleting the Service
/// deletes the management Service.
fn check_load_balancer(ground: &Ground, ns: &str, tenant: &Tenant, why: &dyn Fn() -> String) {
    let report = || {
        let mut out = why();
        for args in [
            vec![
                "get",
                "svc",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/component=load-balancer",
                "-o",
                "yaml",
            ],
            vec![
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                "kubevirt.io=virt-launcher",
                "-o",
                "wide",
            ],
        ] {
            let o = ground.run("kubectl", &args);
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        for args in [
            vec![
                "get",
                "svc,endpointslices,pods",
                "-n",
                "default",
                "-o",
                "wide",
            ],
            vec!["describe", "svc", "web", "-n", "default"],
        ] {
            let o = tenant.run(&args);
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        out
    };
    let [config, deployment, service] = web_objects();
    tenant.apply(&config);
    tenant.apply(&deployment);
    tenant.kubectl(&["rollout", "status", "deploy/web", "--timeout=180s"]);

    let created = Instant::now();
    tenant.apply(&service);
    let mut address = String::new();
    wait_until(
        "the LoadBalancer Service's address",
        Duration::from_secs(120),
        &report,
        || {
            let out = tenant.run(&[
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ]);
            address = String::from_utf8_lossy(&out.stdout).trim().to_string();
            !address.is_empty()
        },
    );
    assert_eq!(
        address,
        management_service_ip(ground, ns),
        "the tenant Service's address is its management Service's cluster IP"
    );
    let url = format!("http://{address}:80/health");
    // The last answer, for the report of a failed wait.
    let answer = std::cell::RefCell::new(String::new());
    wait_until(
        "traffic through the LoadBalancer",
        Duration::from_secs(120),
        &|| format!("curl {url}: {:?}\n{}", answer.borrow(), report()),
        || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", &url])
                .output()
                .expect("curl on the test host");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let ok = out.status.success() && said.trim() == "OK";
            *answer.borrow_mut() = said;
            ok
        },
    );
    println!(
        "nodepool: LoadBalancer Service created → traffic flows in {:.0} s",
        created.elapsed().as_secs_f64()
    );
    let events = web_events(tenant);
    for reason in ["EnsuringLoadBalancer", "EnsuredLoadBalancer"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }

    tenant.kubectl(&["delete", "svc", "web", "--wait=true", "--timeout=120s"]);
    wait_until(
        "the management Service gone with the tenant Service",
        Duration::from_secs(60),
        &report,
        || {
            management_service_ip(ground, ns).is_empty()
                && web_events(tenant).contains("DeletedLoadBalancer")
        },
    );
}
