//! `kubectl orrery` run the way kubectl runs plugins: the `kubectl-orrery` built from this
//! workspace is the only thing on a PATH of its own, and the ground's real kubectl finds it there
//! and runs it as `kubectl orrery …`.
//!
//! `errors_say_what_to_do` needs only the ground (no operator). `a_live_tenant_at_a_glance` needs
//! the live tier (`ORRERY_GROUND_LIVE=1 e2e/ground up`), installs Orrery with its chart on the
//! real node and fails, never skips, without it.

use orrery::api::{SUPPORTED_MINORS, supported_range};
use orrery::pki::LEAVES;
use orrery_e2e::live::{
    Release, apply_json, check, live_ground, live_scheduling, managed_datastore,
    restricted_namespace,
};
use orrery_e2e::{Ground, install_crds, unique_name};
use serde_json::{Value, json};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A directory holding only `kubectl-orrery`, freshly built from this workspace.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let binary = build_plugin();
        let dir = std::env::temp_dir().join(unique_name("kubectl-plugins"));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&binary, dir.join("kubectl-orrery")).unwrap();
        dir
    })
}

/// The plugin as `cargo test --workspace` builds it (for the orrery crate's own command-line
/// tests), in the profile of this test: a no-op under `e2e/test`, which has just built it, and a
/// build with the same features and dependencies otherwise. Returns the path cargo reports.
fn build_plugin() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test>
    let release = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|p| p == "release");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(orrery_e2e::repo_root()).args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    // What cargo sets for the test it runs would reach build scripts (ring's reads
    // CARGO_MANIFEST_DIR) and make the build differ from e2e/test's.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = ["CARGO_PKG_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|p| key.starts_with(p))
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = check(cmd.output().unwrap(), "cargo test --workspace --no-run");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| {
            let plain_binary =
                m["target"]["name"] == "kubectl-orrery" && m["profile"]["test"] == false;
            plain_binary
                .then(|| m["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .expect("cargo reports the kubectl-orrery executable")
}

/// `kubectl orrery args…` with the ground's kubectl and kubeconfig.
fn plugin(ground: &Ground, args: &[&str]) -> Output {
    let mut path = OsString::from(plugin_dir());
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    Command::new(ground.bin("kubectl"))
        .arg("orrery")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", ground.kubeconfig())
        .output()
        .expect("kubectl runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the command failed with `code` and said every one of `words`.
fn refused(out: &Output, code: i32, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

fn spec_version(ground: &Ground, ns: &str, name: &str) -> String {
    ground.kubectl(&[
        "get",
        "tcp",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.version}",
    ])
}

#[test]
fn errors_say_what_to_do() {
    let ground = Ground::get().expect("test ground");
    install_crds(&ground);
    let ns = unique_name("plugin-errors");
    ground.kubectl(&["create", "namespace", &ns]);
    // On a DataStore that does not exist: an operator, if one runs, waits and makes nothing.
    ground.kubectl_apply(
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "t", "namespace": ns},
            "spec": {"version": "v1.34.1", "dataStore": "no-such-datastore"}
        })
        .to_string(),
    );

    let missing = format!("no TenantControlPlane \"nope\" in namespace {ns}; it has: t");
    for verb in [&["describe"][..], &["get", "kubeconfig"], &["wait"]] {
        let mut args = verb.to_vec();
        args.extend(["nope", "-n", ns.as_str()]);
        refused(&plugin(&ground, &args), 1, &[&missing]);
    }

    // What admission refuses is refused before the apiserver is asked, and nothing changes.
    let newer = format!("v1.{}.0", SUPPORTED_MINORS.end() + 1);
    let outside = format!("outside the supported range {}", supported_range());
    let cases = [
        (
            "v1.36.0",
            1,
            "cannot upgrade t: v1.34.1 → v1.36.0 skips a minor version: upgrade one minor at a \
             time, first to v1.35.x",
        ),
        ("v1.34.0", 1, "v1.34.1 → v1.34.0 is a downgrade"),
        (newer.as_str(), 2, outside.as_str()),
        ("1.35.0", 2, "vMAJOR.MINOR.PATCH"),
    ];
    for (to, code, words) in cases {
        let out = plugin(&ground, &["upgrade", "t", "-n", &ns, "--to", to]);
        refused(&out, code, &[words]);
        assert_eq!(spec_version(&ground, &ns, "t"), "v1.34.1", "--to {to}");
    }
    // The apiserver refuses the skip as well.
    let patch = ground.run(
        "kubectl",
        &[
            "patch",
            "tcp",
            "t",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"version":"v1.36.0"}}"#,
        ],
    );
    refused(&patch, 1, &["upgrade one minor at a time"]);

    // A good version is set, by the plugin's field manager.
    let out = plugin(
        &ground,
        &["upgrade", "t", "-n", &ns, "--to", "v1.35.0", "--no-wait"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tenantcontrolplane.orrery.dev/t: spec.version v1.34.1 → v1.35.0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(spec_version(&ground, &ns, "t"), "v1.35.0");
    let managers = ground.kubectl(&[
        "get",
        "tcp",
        "t",
        "-n",
        &ns,
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(managers.contains("kubectl-orrery"), "{managers}");

    // Not Ready: the kubeconfig and wait say so, why, and what to do.
    let not_yet = format!("TenantControlPlane t in namespace {ns} has no kubeconfig yet");
    let hint = format!("kubectl orrery wait t -n {ns}");
    refused(
        &plugin(&ground, &["get", "kubeconfig", "t", "-n", &ns]),
        1,
        &[&not_yet, &hint],
    );
    refused(
        &plugin(&ground, &["wait", "t", "-n", &ns, "--timeout", "2s"]),
        1,
        &[&format!(
            "timed out after 2s waiting for TenantControlPlane t in namespace {ns}: "
        )],
    );

    // It never reached a DataStore, so there is nothing for Orrery's finalizer to clean up, and
    // the operator that set it (another test's) may be gone.
    ground.kubectl(&[
        "patch",
        "tcp",
        "t",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    ground.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The rows of a `describe` table: depth in the tree, and every column by its header.
fn rows(table: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines = table.lines();
    let header: Vec<char> = lines.next().expect("a header").chars().collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || header[i - 1] == ' '))
        .collect();
    lines
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            let cell = |c: usize| -> String {
                let end = starts.get(c + 1).copied().unwrap_or(chars.len());
                chars[starts[c].min(chars.len())..end.min(chars.len())]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_string()
            };
            let mut cells: Vec<String> = (0..starts.len()).map(cell).collect();
            let name = cells[0].trim_start_matches(['├', '└', '│', '─', ' ']);
            let depth = (cells[0].chars().count() - name.chars().count()) / 2;
            cells[0] = name.to_string();
            (depth, cells)
        })
        .collect()
}

fn names(rows: &[(usize, Vec<String>)]) -> Vec<(usize, String)> {
    rows.iter().map(|(d, c)| (*d, c[0].clone())).collect()
}

/// (depth, name) of every node of a `describe -o json` tree, depth first.
fn json_names(tree: &Value, depth: usize, out: &mut Vec<(usize, String)>) {
    out.push((depth, tree["name"].as_str().unwrap().to_string()));
    for child in tree["children"].as_array().into_iter().flatten() {
        json_names(child, depth + 1, out);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_tenant_at_a_glance() {
    let ground = live_ground();
    // Built first, so that `wait` below starts while the tenant is still coming up.
    plugin_dir();
    install_crds(&ground);
    let client = ground.client().await.unwrap();
    let release = Release::install(&ground, "orrery-plugin");
    let (etcd_ns, datastore) = (unique_name("plugin-etcd"), unique_name("plugin"));
    managed_datastore(&ground, &client, &datastore, &etcd_ns).await;
    let ns = restricted_namespace(&ground, "plugin");
    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "glance", "namespace": ns},
            "spec": {"version": "v1.34.4", "replicas": 1, "dataStore": datastore,
                     "controlPlane": {"scheduling": live_scheduling()}}
        }),
    );

    // wait: progress on stderr while the tenant comes up, the end on stdout.
    let out = plugin(&ground, &["wait", "glance", "-n", &ns, "--timeout", "300s"]);
    if !out.status.success() {
        let describe = plugin(&ground, &["describe", "glance", "-n", &ns]);
        panic!(
            "wait failed: {}\n{}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&describe.stdout),
            release.logs()
        );
    }
    let done = String::from_utf8_lossy(&out.stdout);
    assert!(
        done.starts_with("tenantcontrolplane.orrery.dev/glance: Ready, v1.34.4 at "),
        "{done}"
    );
    let progress = stderr(&out);
    assert!(
        progress.lines().next().is_some_and(|l| l.starts_with('[')),
        "progress lines: {progress}"
    );
    println!("kubectl orrery wait:\n{progress}{done}");

    describe_shows_every_part(&ground, &ns, &datastore);
    kubeconfig_reaches_the_tenant(&ground, &ns);
    secrets_need_permission(&ground, &ns);

    ground.kubectl(&["delete", "tcp", "glance", "-n", &ns, "--timeout=120s"]);
    ground.kubectl(&["delete", "datastore", &datastore, "--timeout=60s"]);
    release.uninstall();
    ground.kubectl(&["delete", "namespace", &ns, &etcd_ns, "--wait=false"]);
}

/// `describe --expand` shows every part in its place; plain `describe` groups the certificates
/// and `-o json` carries the same tree.
fn describe_shows_every_part(ground: &Ground, ns: &str, datastore: &str) {
    let expanded = check(
        plugin(ground, &["describe", "glance", "-n", ns, "--expand"]),
        "describe --expand",
    );
    let expanded_rows = rows(&expanded);
    let mut want: Vec<(usize, String)> = vec![
        (0, "TenantControlPlane/glance".into()),
        (1, format!("DataStore/{datastore}")),
        (1, "Endpoint - Service/glance".into()),
        (1, "ControlPlane - Deployment/glance".into()),
        (2, "Pod/".into()),
        (1, "Certificates - Secret/glance-certs".into()),
        (2, "CA/ca".into()),
        (2, "CA/front-proxy-ca".into()),
        (2, "CA/datastore-ca".into()),
    ];
    let mut leaves = LEAVES.to_vec();
    leaves.sort();
    want.extend(leaves.iter().map(|l| (2, format!("Certificate/{l}"))));
    want.extend([
        (1, "Addons".into()),
        (2, "CoreDNS - Deployment/coredns".into()),
        (2, "kube-proxy - DaemonSet/kube-proxy".into()),
        (
            2,
            "konnectivity-agent - DaemonSet/konnectivity-agent".into(),
        ),
        (1, "Nodes".into()),
    ]);
    let mut got = names(&expanded_rows);
    // The pod's name is the Deployment's choice.
    if let Some(pod) = got.iter_mut().find(|(_, n)| n.starts_with("Pod/glance-")) {
        pod.1 = "Pod/".into();
    }
    assert_eq!(got, want, "{expanded}");

    // Columns: NAME READY SEVERITY REASON SINCE MESSAGE.
    let row = |name: &str| -> &Vec<String> {
        &expanded_rows
            .iter()
            .find(|(_, c)| c[0] == name || (name == "Pod/" && c[0].starts_with(name)))
            .unwrap_or_else(|| panic!("{name} in {expanded}"))
            .1
    };
    for name in [
        "TenantControlPlane/glance",
        "Endpoint - Service/glance",
        "ControlPlane - Deployment/glance",
        "Pod/",
        "Certificates - Secret/glance-certs",
        "CA/ca",
        "Certificate/apiserver",
        "Addons",
        "kube-proxy - DaemonSet/kube-proxy",
        "konnectivity-agent - DaemonSet/konnectivity-agent",
    ] {
        let r = row(name);
        assert_eq!(r[1], "True", "READY of {name} in {expanded}");
        assert!(!r[4].is_empty(), "SINCE of {name} in {expanded}");
    }
    let root = row("TenantControlPlane/glance");
    assert_eq!(
        root[5],
        "Ready, v1.34.4: the tenant control plane is available"
    );
    // No node has joined: CoreDNS cannot run yet, which is expected.
    let coredns = row("CoreDNS - Deployment/coredns");
    assert_eq!(
        (
            coredns[1].as_str(),
            coredns[2].as_str(),
            coredns[3].as_str()
        ),
        ("False", "Info", "NoNodes")
    );
    assert_eq!(row("Nodes")[5], "no node has joined yet");

    // Grouped: the ten leaves (the control plane's and the add-on users'), issued together,
    // are one row.
    let grouped = check(
        plugin(ground, &["describe", "glance", "-n", ns]),
        "describe",
    );
    println!("kubectl orrery describe:\n{grouped}");
    let grouped_names = names(&rows(&grouped));
    assert!(
        grouped_names.contains(&(2, "10 Certificates...".to_string())),
        "{grouped}"
    );
    let top = |n: &[(usize, String)]| -> Vec<(usize, String)> {
        n.iter().filter(|(d, _)| *d < 2).cloned().collect()
    };
    assert_eq!(top(&grouped_names), top(&got));

    let json = check(
        plugin(ground, &["describe", "glance", "-n", ns, "-o", "json"]),
        "describe -o json",
    );
    let mut from_json = Vec::new();
    json_names(&serde_json::from_str(&json).unwrap(), 0, &mut from_json);
    assert_eq!(from_json, grouped_names);
}

/// `get kubeconfig` into a file, used by kubectl against the tenant; `--server` repoints it.
fn kubeconfig_reaches_the_tenant(ground: &Ground, ns: &str) {
    let kubeconfig = check(
        plugin(ground, &["get", "kubeconfig", "glance", "-n", ns]),
        "get kubeconfig",
    );
    let file = std::env::temp_dir().join(format!("{}.kubeconfig", unique_name("glance")));
    std::fs::write(&file, &kubeconfig).unwrap();
    let readyz = check(
        Command::new(ground.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(&file)
            .args(["get", "--raw", "/readyz"])
            .output()
            .unwrap(),
        "kubectl get --raw /readyz against the tenant",
    );
    assert_eq!(readyz.trim(), "ok");
    let _ = std::fs::remove_file(&file);

    let moved = check(
        plugin(
            ground,
            &[
                "get",
                "kubeconfig",
                "glance",
                "-n",
                ns,
                "--server",
                "https://127.0.0.1:16443",
            ],
        ),
        "get kubeconfig --server",
    );
    let (before, after): (Value, Value) = (
        serde_yaml_ng::from_str(&kubeconfig).unwrap(),
        serde_yaml_ng::from_str(&moved).unwrap(),
    );
    assert_eq!(
        after["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:16443"
    );
    assert_eq!(after["users"], before["users"]);
    assert_eq!(
        after["clusters"][0]["cluster"]["certificate-authority-data"],
        before["clusters"][0]["cluster"]["certificate-authority-data"]
    );
}

/// Someone who may read tenants but not Secrets is told what to ask for.
fn secrets_need_permission(ground: &Ground, ns: &str) {
    ground.kubectl(&["create", "serviceaccount", "viewer", "-n", ns]);
    ground.kubectl(&[
        "create",
        "role",
        "viewer",
        "-n",
        ns,
        "--verb=get,list,watch",
        "--resource=tenantcontrolplanes.orrery.dev,pods,deployments,services",
    ]);
    ground.kubectl(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        ns,
        "--role=viewer",
        &format!("--serviceaccount={ns}:viewer"),
    ]);
    let token = ground.kubectl(&["create", "token", "viewer", "-n", ns]);
    let file = std::env::temp_dir().join(format!("{}.kubeconfig", unique_name("viewer")));
    std::fs::copy(ground.kubeconfig(), &file).unwrap();
    let file_arg = file.to_str().unwrap();
    let cluster = ground.kubectl(&["config", "view", "-o", "jsonpath={.clusters[0].name}"]);
    for args in [
        vec![
            "config",
            "set-credentials",
            "viewer",
            "--token",
            token.trim(),
        ],
        vec![
            "config",
            "set-context",
            "viewer",
            "--cluster",
            &cluster,
            "--user",
            "viewer",
        ],
    ] {
        let mut all = vec!["--kubeconfig", file_arg];
        all.extend(args);
        ground.kubectl(&all);
    }

    let as_viewer = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", file_arg, "--context", "viewer", "-n", ns];
        all.extend(args);
        plugin(ground, &all)
    };
    refused(
        &as_viewer(&["get", "kubeconfig", "glance"]),
        1,
        &[&format!(
            "no permission to get Secret glance-admin-kubeconfig in namespace {ns}: ask for get \
             on secrets there"
        )],
    );
    let described = check(as_viewer(&["describe", "glance"]), "describe as viewer");
    let certificates = rows(&described)
        .into_iter()
        .find(|(d, c)| *d == 2 && c[0] == "Certificates")
        .unwrap_or_else(|| panic!("a note under the certificates in {described}"));
    assert_eq!(
        certificates.1[5],
        format!("no permission to get secrets in namespace {ns}: ask for get on secrets there")
    );
    let _ = std::fs::remove_file(&file);
}
