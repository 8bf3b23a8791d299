//! Shared helpers for the end-to-end tests: find the running test ground, run its real binaries,
//! and connect to its apiserver.
//!
//! The ground is located through `e2e/ground env`; a test never skips when the ground is missing,
//! it fails and says how to start it. [`live`] holds what the tests of the live tier share;
//! [`autoscaler`] connects to Orrery's cluster-autoscaler API as a tenant's autoscaler does;
//! [`prober`] keeps reading and writing a tenant's API while it upgrades.

pub mod autoscaler;
pub mod bench;
pub mod csi_loop;
pub mod live;
pub mod prober;

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The repository root (the parent of `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e has a parent")
        .to_path_buf()
}

/// A pin of `e2e/versions.env` (`KEY=value` or `KEY="value"`, as bash reads it); fails when the
/// file has no such line.
pub fn versions_env(key: &str) -> String {
    let path = repo_root().join("e2e/versions.env");
    let text = std::fs::read_to_string(&path).expect("e2e/versions.env");
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{} has no {key}=", path.display()))
}

/// A running test ground, as described by `e2e/ground env`.
#[derive(Clone, Debug)]
pub struct Ground {
    /// Every `KEY=value` that `e2e/ground env` printed.
    pub env: BTreeMap<String, String>,
}

impl Ground {
    /// The ground named by `ORRERY_GROUND` (default "default"). Fails if it is not up.
    pub fn get() -> Result<Self> {
        Self::with_env(&[])
    }

    /// A ground with extra settings, e.g. `[("ORRERY_GROUND", "second"), ("ORRERY_GROUND_PORT_BASE", "16540")]`.
    pub fn with_env(vars: &[(&str, &str)]) -> Result<Self> {
        let out = ground_command(vars)
            .arg("env")
            .output()
            .context("running e2e/ground env")?;
        if !out.status.success() {
            bail!(
                "e2e/ground env failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut env = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim_start_matches("export ");
            if let Some((k, v)) = line.split_once('=') {
                env.insert(
                    k.to_string(),
                    v.trim_matches(|c| c == '\'' || c == '"').to_string(),
                );
            }
        }
        let ground = Self { env };
        if !Path::new(&ground.kubeconfig()).exists() {
            bail!(
                "the test ground is not up (no {}): run `e2e/ground up` first",
                ground.kubeconfig()
            );
        }
        Ok(ground)
    }

    /// A value printed by `e2e/ground env`.
    pub fn var(&self, key: &str) -> String {
        self.env
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("e2e/ground env did not print {key}"))
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> String {
        self.var("KUBECONFIG")
    }

    /// Path of a binary the ground built (kubectl, helm, kubeadm, etcdctl, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        Path::new(&self.var("ORRERY_GROUND_BIN")).join(name)
    }

    /// Runs a ground binary with the ground's kubeconfig in its environment.
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        Command::new(self.bin(name))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    /// Runs kubectl and returns its stdout; panics with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.run("kubectl", args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails, showing `e2e/ground status`, unless every component of the ground runs.
    pub fn ensure_running(&self) -> Result<()> {
        let name = self.var("ORRERY_GROUND");
        let out = ground_command(&[("ORRERY_GROUND", name.as_str())])
            .arg("status")
            .output()
            .context("running e2e/ground status")?;
        if !out.status.success() {
            bail!(
                "the test ground '{name}' is not running: start it with `e2e/ground up`\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The ground's state directory (certificates, data, logs, PID files).
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.var("ORRERY_GROUND_STATE"))
    }

    /// The processes `e2e/ground up` recorded: component name and PID, sorted by name.
    pub fn recorded_pids(&self) -> Vec<(String, u32)> {
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.state_dir().join("pids")) else {
            return pids;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            let (Some(name), Ok(text)) = (path.file_stem(), std::fs::read_to_string(&path)) else {
                continue;
            };
            if let Ok(pid) = text.trim().parse() {
                pids.push((name.to_string_lossy().into_owned(), pid));
            }
        }
        pids.sort();
        pids
    }

    /// A kube client for the ground's apiserver as cluster admin.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// `e2e/ground` with extra environment.
pub fn ground_command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(repo_root().join("e2e/ground"));
    // A ground is live only when asked for explicitly; the live ground's own `env` output must
    // not turn a second ground live.
    cmd.env_remove("ORRERY_GROUND_LIVE");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace name unique to this test process and purpose.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Whether a process runs. An exited process that its parent has not reaped yet (a zombie) holds
/// nothing but its PID and does not count.
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Every process whose command line contains `needle`, as PID and command line.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Creates a namespace with a unique name that starts with `prefix`; delete it with
/// [`delete_namespace`].
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let name = unique_name(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"orrery.dev/e2e": "true"}}
    }))?;
    kube::Api::<Namespace>::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Deletes a namespace without waiting for it to be gone.
pub async fn delete_namespace(client: &kube::Client, name: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    match kube::Api::<Namespace>::all(client.clone())
        .delete(name, &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

/// Applies Orrery's CRDs from `crds/` with real kubectl and waits until they are established.
pub fn install_crds(ground: &Ground) {
    let crds = repo_root().join("crds/orrery.dev.yaml");
    ground.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().unwrap(),
    ]);
    ground.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/tenantcontrolplanes.orrery.dev",
        "crd/datastores.orrery.dev",
        "crd/nodepools.orrery.dev",
    ]);
}

/// Creates (or updates) the Secrets `etcd-ca` and `etcd-root` in `namespace` from the ground's
/// tenant etcd: its CA key pair and its `root` client certificate.
pub fn ground_etcd_secrets(ground: &Ground, namespace: &str) {
    let dir = ground.var("ORRERY_TENANT_ETCD_DIR");
    let _ = ground.run("kubectl", &["create", "namespace", namespace]);
    for (name, cert, key) in [
        ("etcd-ca", "ca.crt", "ca.key"),
        ("etcd-root", "root.crt", "root.key"),
    ] {
        let yaml = ground.kubectl(&[
            "create",
            "secret",
            "tls",
            name,
            "-n",
            namespace,
            &format!("--cert={dir}/{cert}"),
            &format!("--key={dir}/{key}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ]);
        ground.kubectl_apply(&yaml);
    }
}

/// An external DataStore on the ground's tenant etcd, using the Secrets of
/// [`ground_etcd_secrets`] in `secrets_namespace`.
pub fn ground_etcd_datastore(
    ground: &Ground,
    name: &str,
    secrets_namespace: &str,
    default: bool,
) -> serde_json::Value {
    let key = |secret: &str, key: &str| serde_json::json!({"name": secret, "namespace": secrets_namespace, "key": key});
    serde_json::json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "DataStore",
        "metadata": {"name": name, "annotations": {"orrery.dev/default-datastore": default.to_string()}},
        "spec": {"external": {
            "endpoints": [ground.var("ORRERY_TENANT_ETCD_ENDPOINT")],
            "certificateAuthority": {"certificate": key("etcd-ca", "tls.crt"), "privateKey": key("etcd-ca", "tls.key")},
            "rootClientCertificate": {"certificate": key("etcd-root", "tls.crt"), "privateKey": key("etcd-root", "tls.key")}
        }}
    })
}

impl Ground {
    /// Server-side applies a manifest (YAML or JSON) with real kubectl.
    pub fn kubectl_apply(&self, manifest: &str) {
        use std::io::Write;
        let mut child = Command::new(self.bin("kubectl"))
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=e2e",
                "-f",
                "-",
            ])
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(manifest.as_bytes())
            .expect("kubectl reads stdin");
        let out = child.wait_with_output().expect("kubectl finishes");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Marks stand-in KubeVirt CRDs, so that KubeVirt's own are never replaced or deleted.
pub const KUBEVIRT_STAND_IN_LABEL: &str = "orrery.dev/bench-stand-in";
/// The KubeVirt kinds the stand-ins stand for: (kind, plural).
const KUBEVIRT_KINDS: [(&str, &str); 2] = [
    ("VirtualMachine", "virtualmachines"),
    ("VirtualMachineInstance", "virtualmachineinstances"),
];

/// Whether the cluster has KubeVirt's own CRDs (not stand-ins).
pub fn has_real_kubevirt(ground: &Ground) -> bool {
    KUBEVIRT_KINDS.iter().any(|(_, plural)| {
        let out = ground.run(
            "kubectl",
            &[
                "get",
                "crd",
                &format!("{plural}.kubevirt.io"),
                "-o",
                &format!(
                    "jsonpath={{.metadata.labels.{}}}",
                    KUBEVIRT_STAND_IN_LABEL.replace('.', "\\.")
                ),
            ],
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != "true"
    })
}

/// Applies stand-in CRDs for KubeVirt's VirtualMachine and VirtualMachineInstance that keep any
/// field, so VMs are objects and nothing boots; for grounds without KubeVirt (check
/// [`has_real_kubevirt`] first).
pub fn install_kubevirt_stand_ins(ground: &Ground) {
    for (kind, plural) in KUBEVIRT_KINDS {
        let crd = format!("{plural}.kubevirt.io");
        let manifest = serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": crd, "labels": {KUBEVIRT_STAND_IN_LABEL: "true"}},
            "spec": {
                "group": "kubevirt.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }]
            }
        });
        ground.kubectl_apply(&manifest.to_string());
        ground.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}"),
        ]);
    }
}

/// Deletes the stand-in KubeVirt CRDs (only those carrying the stand-in label).
pub fn remove_kubevirt_stand_ins(ground: &Ground) {
    let _ = ground.run(
        "kubectl",
        &[
            "delete",
            "crd",
            "-l",
            &format!("{KUBEVIRT_STAND_IN_LABEL}=true"),
            "--wait=false",
        ],
    );
}
