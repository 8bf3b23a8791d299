//! What the tests of the live tier share: the live ground itself, placement on its real node,
//! Orrery installed there with its Helm chart, a managed DataStore whose etcd really runs, and
//! kubectl against a tenant.

use crate::{Ground, eventually, repo_root, unique_name};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use orrery::api::DataStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// The ground named by `ORRERY_GROUND`; fails unless it runs and has the live tier (and with it
/// KubeVirt).
pub fn live_ground() -> Ground {
    let ground = Ground::get().expect("test ground");
    ground.ensure_running().expect("the test ground runs");
    assert_eq!(
        ground.env.get("ORRERY_GROUND_LIVE").map(String::as_str),
        Some("1"),
        "ground '{}' has no live tier: start it with `ORRERY_GROUND_LIVE=1 e2e/ground up`",
        ground.var("ORRERY_GROUND")
    );
    ground
}

/// Placement on the ground's real node (kwok's fake nodes run nothing).
pub fn live_scheduling() -> serde_json::Value {
    json!({
        "nodeSelector": {"orrery.dev/ground-node": "live"},
        "tolerations": [{"key": "orrery.dev/live", "operator": "Exists", "effect": "NoSchedule"}]
    })
}

/// A new namespace that enforces Pod Security `restricted`.
pub fn restricted_namespace(ground: &Ground, prefix: &str) -> String {
    let ns = unique_name(prefix);
    ground.kubectl(&["create", "namespace", &ns]);
    ground.kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    ns
}

/// Server-side applies one object with real kubectl.
pub fn apply_json(ground: &Ground, value: &serde_json::Value) {
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("live-apply")));
    std::fs::write(&file, value.to_string()).unwrap();
    ground.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        file.to_str().unwrap(),
    ]);
}

/// Waits with kubectl until TenantControlPlane `name` in `ns` is Ready (at most 300 s).
pub fn wait_tenant_ready(ground: &Ground, ns: &str, name: &str) {
    let tcp = format!("tcp/{name}");
    let args = [
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &tcp,
        "--timeout=300s",
    ];
    check(
        ground.run("kubectl", &args),
        &format!("tenant {name} Ready"),
    );
}

/// The stdout of a command that must succeed; fails with both outputs otherwise.
pub fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Orrery installed from its chart on the real node, as a Helm release of its own. Uninstalled
/// when dropped, so a failed test leaves no controller behind for the next one.
pub struct Release {
    ground: Ground,
    pub name: String,
    pub namespace: String,
    uninstalled: bool,
}

impl Release {
    /// Installs the chart as a release with a unique name (its cluster-scoped objects are named
    /// after the release, so it never meets another installation's ClusterRole), one replica,
    /// the CRDs left to [`crate::install_crds`].
    pub fn install(ground: &Ground, prefix: &str) -> Self {
        let release = Self {
            ground: ground.clone(),
            name: unique_name(prefix),
            namespace: unique_name(prefix),
            uninstalled: false,
        };
        let chart = repo_root().join("charts/orrery");
        check(
            ground.run(
                "helm",
                &[
                    "upgrade",
                    "--install",
                    &release.name,
                    chart.to_str().unwrap(),
                    "-n",
                    &release.namespace,
                    "--create-namespace",
                    // The CRDs are in place already (install_crds), applied outside Helm.
                    "--set",
                    "crds.install=false",
                    "--set",
                    "replicaCount=1",
                    "--set",
                    "image.pullPolicy=Never",
                    "--set",
                    "nodeSelector.orrery\\.dev/ground-node=live",
                    "--set",
                    "tolerations[0].key=orrery.dev/live",
                    "--set",
                    "tolerations[0].operator=Exists",
                    "--set",
                    "tolerations[0].effect=NoSchedule",
                    "--wait",
                    "--timeout=180s",
                ],
            ),
            "helm install",
        );
        release
    }

    /// The last lines of the controller's log, for a failure message.
    pub fn logs(&self) -> String {
        let out = self.ground.run(
            "kubectl",
            &[
                "logs",
                "-n",
                &self.namespace,
                &format!("deploy/{}", self.name),
                "--tail=40",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restarts the controller, as an upgrade does (a new pod), and waits for the new pod.
    pub fn restart(&self) {
        let deploy = format!("deploy/{}", self.name);
        for args in [
            vec!["rollout", "restart", &deploy, "-n", &self.namespace],
            vec![
                "rollout",
                "status",
                &deploy,
                "-n",
                &self.namespace,
                "--timeout=180s",
            ],
        ] {
            check(self.ground.run("kubectl", &args), "restart the controller");
        }
    }

    /// How many reconciles of `controller` the running controller finished, from its metrics
    /// (through the apiserver's Service proxy); None while they cannot be read.
    pub fn reconciles_finished(&self, controller: &str) -> Option<u64> {
        let path = format!(
            "/api/v1/namespaces/{}/services/{}-metrics:8080/proxy/metrics",
            self.namespace, self.name
        );
        let out = self.ground.run("kubectl", &["get", "--raw", &path]);
        let series =
            format!("orrery_reconcile_duration_seconds_count{{controller=\"{controller}\"}} ");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    }

    /// Uninstalls the release and deletes its namespace; fails if helm does.
    pub fn uninstall(mut self) {
        self.uninstalled = true;
        check(
            self.ground.run(
                "helm",
                &["uninstall", &self.name, "-n", &self.namespace, "--wait"],
            ),
            "helm uninstall",
        );
        self.ground
            .kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self.ground.run(
                "helm",
                &["uninstall", &self.name, "-n", &self.namespace, "--wait"],
            );
            let _ = self.ground.run(
                "kubectl",
                &["delete", "namespace", &self.namespace, "--wait=false"],
            );
        }
    }
}

/// Creates a managed DataStore `name` (Orrery's own etcd StatefulSet, one member, on the real
/// node, in the restricted namespace `etcd_ns`) and waits until it is Ready.
pub async fn managed_datastore(ground: &Ground, client: &kube::Client, name: &str, etcd_ns: &str) {
    let _ = ground.run("kubectl", &["create", "namespace", etcd_ns]);
    ground.kubectl(&[
        "label",
        "--overwrite",
        "namespace",
        etcd_ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    apply_json(
        ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "DataStore", "metadata": {"name": name},
            "spec": {"managed": {"namespace": etcd_ns, "replicas": 1, "scheduling": live_scheduling()}}
        }),
    );
    let datastores = Api::<DataStore>::all(client.clone());
    eventually(
        "the managed DataStore is Ready",
        Duration::from_secs(240),
        || async {
            let ds = datastores.get(name).await.ok()?;
            ds.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        let ds = ground.run("kubectl", &["get", "datastore", name, "-o", "yaml"]);
        let pods = ground.run("kubectl", &["get", "pods", "-n", etcd_ns, "-o", "wide"]);
        panic!(
            "{e}\n{}\n{}",
            String::from_utf8_lossy(&ds.stdout),
            String::from_utf8_lossy(&pods.stdout)
        )
    });
}

/// A namespace for one test, labelled `orrery.dev/e2e=true` and deleted when dropped (also when
/// the test fails).
pub struct Namespace<'a> {
    pub ground: &'a Ground,
    pub name: String,
}

impl<'a> Namespace<'a> {
    pub fn new(ground: &'a Ground, prefix: &str) -> Self {
        let name = unique_name(prefix);
        ground.kubectl(&["create", "namespace", &name]);
        ground.kubectl(&["label", "namespace", &name, "orrery.dev/e2e=true"]);
        Self { ground, name }
    }

    /// Applies YAML with real kubectl.
    pub fn apply(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("ns-apply")));
        std::fs::write(&path, yaml).expect("a temporary file");
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    /// kubectl in this namespace that must succeed: its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.ground.kubectl(&all)
    }

    /// kubectl in this namespace that may fail: its stdout, or None.
    pub fn try_kubectl(&self, args: &[&str]) -> Option<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        let out = self.ground.run("kubectl", &all);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A jsonpath of an object, empty when it cannot be read.
    pub fn jsonpath(&self, object: &str, path: &str) -> String {
        self.try_kubectl(&["get", object, "-o", &format!("jsonpath={path}")])
            .unwrap_or_default()
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self.ground.run(
            "kubectl",
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

/// kubectl against the tenant.
pub struct Tenant {
    pub ground: Ground,
    pub kubeconfig: PathBuf,
}

impl Tenant {
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        self.ground.run("kubectl", &all)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        check(
            self.run(args),
            &format!("tenant kubectl {}", args.join(" ")),
        )
    }

    /// Whether the tenant lets `user` `verb` `resource` in namespace default: "yes" or "no".
    pub fn can_i(&self, verb: &str, resource: &str, user: &str) -> String {
        // A subresource is named with --subresource: "pods/eviction" as one word would name a
        // pod called "eviction".
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let out = self.run(&[
            "auth",
            "can-i",
            verb,
            resource,
            &format!("--subresource={subresource}"),
            &format!("--as={user}"),
            "-n",
            "default",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Server-side applies one object in the tenant.
    pub fn apply(&self, value: &Value) {
        let file = std::env::temp_dir().join(format!("{}.json", unique_name("tenant-apply")));
        std::fs::write(&file, value.to_string()).unwrap();
        self.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    }

    /// The Nodes of the pool `workers`: name → (Ready status, providerID).
    pub fn nodes(&self) -> Vec<(String, String, String)> {
        self.nodes_of("workers")
    }

    /// The Nodes of a pool: name → (Ready status, providerID).
    pub fn nodes_of(&self, pool: &str) -> Vec<(String, String, String)> {
        let out = self.kubectl(&[
            "get",
            "nodes",
            "-l",
            &format!("orrery.dev/nodepool={pool}"),
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.spec.providerID}{"\n"}{end}"#,
        ]);
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next().unwrap_or("").to_string(),
                    f.next().unwrap_or("").to_string(),
                ))
            })
            .collect()
    }
}

/// Writes the tenant admin kubeconfig of a `<tenant>-admin-kubeconfig` Secret into `dir`.
pub fn write_admin_kubeconfig(secret: &Secret, dir: &Path) -> PathBuf {
    let text = String::from_utf8(secret.data.as_ref().unwrap()["kubeconfig"].0.clone()).unwrap();
    let path = dir.join("admin.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// On a failed run, deletes the tenant and its pools (waiting until their VMs are gone) and the
/// test's namespaces.
pub struct Teardown<'a> {
    pub ground: &'a Ground,
    pub namespaces: [String; 2],
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let [ns, etcd_ns] = &self.namespaces;
        let deleted = self.ground.run(
            "kubectl",
            &[
                "delete",
                "np,tcp",
                "--all",
                "-n",
                ns,
                "--wait=true",
                "--timeout=300s",
            ],
        );
        eprintln!(
            "teardown: {}{}",
            String::from_utf8_lossy(&deleted.stdout),
            String::from_utf8_lossy(&deleted.stderr)
        );
        for ns in [ns, etcd_ns] {
            let _ = self
                .ground
                .run("kubectl", &["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

/// Polls `done` every `every` until it holds and returns how long that took; fails with
/// `report()` after `timeout`.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    report: &dyn Fn() -> String,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what} not within {timeout:?}:\n{}",
            report()
        );
        std::thread::sleep(every);
    }
    start.elapsed()
}
