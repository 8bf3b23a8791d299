//! The live tier of the test ground: a real kubelet with containerd runs pods from locally built
//! images, Service IPs route from the host and from pods, and CoreDNS resolves Service names.
//!
//! Runs against the live ground named by `ORRERY_GROUND`, started with
//! `ORRERY_GROUND=live ORRERY_GROUND_PORT_BASE=19440 e2e/ground up --live`:
//!
//! ```sh
//! ORRERY_GROUND=live cargo test -p orrery-e2e --test live_ground
//! ```
//!
//! Every test fails, never skips, when that ground is down or has no live tier.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use orrery_e2e::live::{Namespace, live_ground};

const NODE: &str = "live-0";
const KUBERNETES_VERSION: &str = "v1.34.4";
const KUBE_IMAGE: &str = "registry.k8s.io/kube-apiserver:v1.34.4";
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.4-0";
const TIMEOUT: Duration = Duration::from_secs(120);

/// What the live node tests do in their namespace besides kubectl.
trait LiveNamespace {
    fn wait_for(&self, object: &str, jsonpath: &str, want: &str);
    fn describe(&self, object: &str) -> String;
    fn logs(&self, object: &str) -> String;
    fn run_to_completion(&self, name: &str, image: &str, command: &[&str]) -> String;
}

impl LiveNamespace for Namespace<'_> {
    /// Polls a jsonpath of an object until it equals `want`; fails with `kubectl describe`.
    fn wait_for(&self, object: &str, jsonpath: &str, want: &str) {
        let start = Instant::now();
        loop {
            let out = self.ground.run(
                "kubectl",
                &[
                    "-n",
                    &self.name,
                    "get",
                    object,
                    "-o",
                    &format!("jsonpath={jsonpath}"),
                ],
            );
            let got = String::from_utf8_lossy(&out.stdout).into_owned();
            if got == want {
                return;
            }
            if object.starts_with("pod/") && got == "Failed" && want != "Failed" {
                panic!(
                    "{object} failed:\n{}\nlogs:\n{}",
                    self.describe(object),
                    self.logs(object)
                );
            }
            if start.elapsed() > TIMEOUT {
                panic!(
                    "{object} {jsonpath} is {got:?}, not {want:?}, after {TIMEOUT:?}:\n{}",
                    self.describe(object)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn describe(&self, object: &str) -> String {
        let out = self
            .ground
            .run("kubectl", &["-n", &self.name, "describe", object]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod's log, read the real way: kubectl → apiserver → kubelet → container log file.
    fn logs(&self, object: &str) -> String {
        let out = self
            .ground
            .run("kubectl", &["-n", &self.name, "logs", object]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs a pod on the live node to completion and returns its log.
    fn run_to_completion(&self, name: &str, image: &str, command: &[&str]) -> String {
        self.apply(&pod_yaml(name, image, command, ""));
        self.wait_for(&format!("pod/{name}"), "{.status.phase}", "Succeeded");
        self.logs(&format!("pod/{name}"))
    }
}

/// A pod for the live node: it tolerates the live taint and selects the live node; it runs as
/// Orrery's pods do (uid 65532, read-only root filesystem).
fn pod_yaml(name: &str, image: &str, command: &[&str], extra_labels: &str) -> String {
    let command = serde_json::to_string(command).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}{extra_labels}}}
spec:
  restartPolicy: Never
  nodeSelector: {{orrery.dev/ground-node: live}}
  tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
  containers:
    - name: main
      image: {image}
      imagePullPolicy: Never
      command: {command}
      securityContext: {{runAsUser: 65532, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
      volumeMounts: [{{name: tmp, mountPath: /tmp}}]
  volumes: [{{name: tmp, emptyDir: {{}}}}]
"#
    )
}

#[test]
fn live_node_is_ready_and_tainted() {
    let ground = live_ground();
    let node = format!("node/{NODE}");
    let ready = ground.kubectl(&[
        "get",
        &node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True", "node {NODE} is not Ready");
    let labels = ground.kubectl(&["get", &node, "-o", "jsonpath={.metadata.labels}"]);
    assert!(
        labels.contains(r#""orrery.dev/ground-node":"live""#),
        "labels: {labels}"
    );
    let taints = ground.kubectl(&["get", &node, "-o", "jsonpath={.spec.taints}"]);
    assert!(
        taints.contains(r#""key":"orrery.dev/live""#) && taints.contains("NoSchedule"),
        "taints: {taints}"
    );
    let runtime = ground.kubectl(&[
        "get",
        &node,
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert!(runtime.starts_with("containerd://"), "runtime: {runtime}");
    // The DNS the node's pods are given runs there.
    let ready = ground.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "deployment/coredns",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready, "1", "CoreDNS is not Ready");
}

#[test]
fn pod_runs_a_container_and_its_logs_are_readable() {
    let ground = live_ground();
    let ns = Namespace::new(&ground, "live-pod");
    let start = Instant::now();
    let logs = ns.run_to_completion("kubectl", KUBE_IMAGE, &["kubectl", "version", "--client"]);
    eprintln!("pod ran to completion in {:?}", start.elapsed());
    assert!(
        logs.contains(&format!("Client Version: {KUBERNETES_VERSION}")),
        "logs: {logs}"
    );
    let node = ns.kubectl(&["get", "pod/kubectl", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(node, NODE);
    // A real container: it has an address on the pod network and exited with code 0.
    let ip = ns.kubectl(&["get", "pod/kubectl", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10.88."), "pod IP {ip}");
    let exit = ns.kubectl(&[
        "get",
        "pod/kubectl",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
    ]);
    assert_eq!(exit, "0");
}

#[test]
fn pods_reach_the_apiserver_through_the_kubernetes_service() {
    let ground = live_ground();
    let ns = Namespace::new(&ground, "live-api");
    // kubectl in a pod uses the in-cluster configuration: https://10.96.0.1:443 and the pod's
    // service account; /version is open to every authenticated user.
    let logs = ns.run_to_completion("api", KUBE_IMAGE, &["kubectl", "get", "--raw", "/version"]);
    assert!(
        logs.contains(&format!(r#""gitVersion": "{KUBERNETES_VERSION}""#)),
        "logs: {logs}"
    );
}

#[test]
fn service_is_reachable_from_the_host_and_from_pods_by_ip_and_by_name() {
    let ground = live_ground();
    let ns = Namespace::new(&ground, "live-svc");
    // A real server: etcd, plain HTTP on the pod's port 2379.
    ns.apply(&pod_yaml(
        "etcd",
        ETCD_IMAGE,
        &[
            "etcd",
            "--name=svc",
            "--data-dir=/tmp/etcd",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=svc=http://127.0.0.1:2380",
        ],
        "",
    ));
    ns.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: store}
spec:
  selector: {app: etcd}
  ports: [{name: client, port: 2379, targetPort: 2379}]
"#,
    );
    ns.wait_for(
        "pod/etcd",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    let cluster_ip = ns.kubectl(&["get", "service/store", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(cluster_ip.starts_with("10.96."), "cluster IP {cluster_ip}");

    // From the host: kube-proxy routes the Service IP for local processes too.
    let url = format!("http://{cluster_ip}:2379/health");
    let start = Instant::now();
    let body = loop {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "3", &url])
            .output()
            .expect("curl runs");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{url} not reachable from the host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(body.contains(r#""health":"true""#), "GET {url}: {body}");

    // From another pod, by the Service IP.
    let endpoint = format!("--endpoints=http://{cluster_ip}:2379");
    let logs = ns.run_to_completion(
        "by-ip",
        ETCD_IMAGE,
        &["etcdctl", &endpoint, "endpoint", "health"],
    );
    assert!(logs.contains("is healthy"), "logs: {logs}");

    // From another pod, by the Service's names: CoreDNS resolves the full name and, through the
    // pod's search path, the short one.
    let endpoints = format!(
        "--endpoints=http://store.{}.svc.cluster.local:2379,http://store:2379",
        ns.name
    );
    let logs = ns.run_to_completion(
        "by-name",
        ETCD_IMAGE,
        &["etcdctl", &endpoints, "endpoint", "health"],
    );
    assert!(
        logs.contains(&format!(
            "store.{}.svc.cluster.local:2379 is healthy",
            ns.name
        )) && logs.contains("http://store:2379 is healthy"),
        "logs: {logs}"
    );
}

#[test]
fn statefulset_claim_binds_on_the_live_node_and_its_data_survives_the_pod() {
    let ground = live_ground();
    let ns = Namespace::new(&ground, "live-pv");
    // As a managed DataStore's etcd: a claim template without a storageClassName (the cluster's
    // default class), ReadWriteOnce, 8Gi, a pod that runs as uid 65532 on a read-only root.
    ns.apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: store}}
spec:
  clusterIP: None
  selector: {{app: store}}
  ports: [{{name: client, port: 2379}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: store}}
spec:
  serviceName: store
  replicas: 1
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      nodeSelector: {{orrery.dev/ground-node: live}}
      tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
      terminationGracePeriodSeconds: 10
      containers:
        - name: etcd
          image: {ETCD_IMAGE}
          imagePullPolicy: Never
          command: [etcd, --data-dir=/data/etcd, --listen-client-urls=http://0.0.0.0:2379, --advertise-client-urls=http://127.0.0.1:2379]
          securityContext: {{runAsUser: 65532, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
          readinessProbe:
            httpGet: {{path: /readyz, port: 2379}}
            periodSeconds: 1
          volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 8Gi}}}}
"#
    ));
    let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
    ns.wait_for("pod/store-0", ready, "True");
    ns.wait_for("pvc/data-store-0", "{.status.phase}", "Bound");
    let class = ns.kubectl(&[
        "get",
        "pvc/data-store-0",
        "-o",
        "jsonpath={.spec.storageClassName}",
    ]);
    assert_eq!(class, "ground-local", "the default class was not applied");
    let pv = ns.kubectl(&[
        "get",
        "pvc/data-store-0",
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    assert!(pv.starts_with("ground-pv-"), "bound to {pv}");
    let node = ns.kubectl(&["get", "pod/store-0", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(node, NODE);
    let path = PathBuf::from(ground.kubectl(&[
        "get",
        &format!("pv/{pv}"),
        "-o",
        "jsonpath={.spec.local.path}",
    ]));
    assert!(
        path.starts_with(ground.state_dir().join("volumes")),
        "{pv} is at {}",
        path.display()
    );

    // A key written through etcd lands on the volume and is there for the next pod.
    let put = ns.kubectl(&[
        "exec",
        "store-0",
        "-c",
        "etcd",
        "--",
        "etcdctl",
        "put",
        "orrery-e2e",
        "persisted",
    ]);
    assert_eq!(put.trim(), "OK");
    assert!(
        path.join("etcd/member").is_dir(),
        "no etcd data in {}",
        path.display()
    );
    let first = ns.kubectl(&["get", "pod/store-0", "-o", "jsonpath={.metadata.uid}"]);
    ns.kubectl(&["delete", "pod/store-0", "--wait=true"]);
    ns.wait_for("pod/store-0", ready, "True");
    let second = ns.kubectl(&["get", "pod/store-0", "-o", "jsonpath={.metadata.uid}"]);
    assert_ne!(first, second, "the StatefulSet did not make a new pod");
    let got = ns.kubectl(&[
        "exec",
        "store-0",
        "-c",
        "etcd",
        "--",
        "etcdctl",
        "get",
        "orrery-e2e",
        "--print-value-only",
    ]);
    assert_eq!(got.trim(), "persisted", "the key did not survive the pod");

    // Retain keeps the volume's data once its claim is gone; `e2e/ground up` wipes it and makes
    // the volume Available again, so repeated runs never run out of volumes.
    ns.kubectl(&[
        "delete",
        "statefulset/store",
        "--cascade=foreground",
        "--wait=true",
    ]);
    ns.kubectl(&["delete", "pvc/data-store-0", "--wait=true"]);
    let pv_object = format!("pv/{pv}");
    ns.wait_for(&pv_object, "{.status.phase}", "Released");
    assert!(path.join("etcd").exists(), "Retain kept no data");
    let name = ground.var("ORRERY_GROUND");
    let out = orrery_e2e::ground_command(&[("ORRERY_GROUND", name.as_str())])
        .args(["up", "--live"])
        .output()
        .expect("e2e/ground up runs");
    assert!(
        out.status.success(),
        "e2e/ground up --live failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.wait_for(&pv_object, "{.status.phase}", "Available");
    let left: Vec<_> = std::fs::read_dir(&path)
        .expect("the volume's directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{} still holds {left:?}", path.display());
}
