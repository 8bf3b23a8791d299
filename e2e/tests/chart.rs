//! The Helm chart `charts/orrery`, checked with the real `helm` the test ground builds.
//!
//! Lint and template need only the built `helm`; the install test needs the running ground, whose
//! kwok nodes run the operator's pods. Nothing here skips: a missing binary or ground is a failure
//! that says how to provide it.

use orrery_e2e::{Ground, ground_command, repo_root, unique_name};
use serde::Deserialize as _;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The CRDs are cluster-wide and every release that installs them takes them over: the tests that
/// install the chart onto the ground run one at a time.
static CLUSTER_CRDS: Mutex<()> = Mutex::new(());

fn lock_cluster_crds() -> MutexGuard<'static, ()> {
    CLUSTER_CRDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const CRD_NAMES: [&str; 3] = [
    "tenantcontrolplanes.orrery.dev",
    "datastores.orrery.dev",
    "nodepools.orrery.dev",
];

fn chart_dir() -> String {
    repo_root()
        .join("charts/orrery")
        .to_string_lossy()
        .into_owned()
}

/// The ground's `helm`, found through `e2e/ground bin-dir` so that lint and template run without a
/// ground being up.
fn helm_bin() -> PathBuf {
    let out = ground_command(&[])
        .arg("bin-dir")
        .output()
        .expect("running e2e/ground bin-dir");
    assert!(
        out.status.success(),
        "e2e/ground bin-dir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let helm = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("helm");
    assert!(
        helm.exists(),
        "{} does not exist: run `e2e/ground build` first",
        helm.display()
    );
    helm
}

fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin())
        .args(args)
        .output()
        .expect("running helm")
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Renders the chart with extra `helm template` arguments and returns its documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "orrery",
        chart.as_str(),
        "--namespace",
        "orrery-system",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        text(&out)
    );
    let stdout = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    serde_yaml_ng::Deserializer::from_str(&stdout)
        .map(|doc| Value::deserialize(doc).expect("helm template prints valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k)
        .unwrap_or_else(|| panic!("the chart renders no {k}"))
}

/// The object of kind `k` named `name`.
fn find_named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("the chart renders no {k} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// RBAC rules flattened to (apiGroup, resource) -> verbs, with every list checked for wildcards.
fn rules(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let name = role["metadata"]["name"].as_str().unwrap_or_default();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_sequence().expect("rules is a list") {
        for field in [
            "apiGroups",
            "resources",
            "verbs",
            "resourceNames",
            "nonResourceURLs",
        ] {
            for item in strings(&rule[field]) {
                assert!(
                    !item.contains('*'),
                    "{} {name} has a wildcard in {field}: {rule:?}",
                    kind(role)
                );
            }
        }
        assert!(
            rule["nonResourceURLs"].is_null(),
            "{} {name} grants nonResourceURLs",
            kind(role)
        );
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        assert!(
            !verbs.is_empty(),
            "{} {name} has a rule without verbs",
            kind(role)
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.entry((group.clone(), resource))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    out
}

fn expected(entries: &[(&str, &[&str], &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (group, resources, verbs) in entries {
        for r in *resources {
            out.insert(
                (group.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            );
        }
    }
    out
}

#[test]
fn helm_lint_strict_passes() {
    let chart = chart_dir();
    for extra in [
        &[][..],
        &["--set", "replicaCount=1"][..],
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "logFormat=text",
        ][..],
        &[
            "--set",
            "metrics.service.enabled=false",
            "--set",
            "podDisruptionBudget.enabled=false",
        ][..],
        &["--set", "crds.install=false"][..],
        &["--set", "crds.keep=false"][..],
        &["--set", "autoscaler.enabled=false"][..],
    ] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm {} failed:\n{}",
            args.join(" "),
            text(&out)
        );
        let all = text(&out);
        assert!(
            !all.contains("[WARNING]") && !all.contains("[ERROR]"),
            "helm lint is not clean:\n{all}"
        );
    }
}

#[test]
fn schema_rejects_bad_values() {
    let chart = chart_dir();
    for bad in [
        "replicaCount=0",
        "logFormat=xml",
        "image.pullPolicy=Sometimes",
        "resyncSeconds=0",
        "noSuchValue=1",
        "image.noSuchField=1",
        "crds.install=maybe",
        "crds.noSuchField=1",
        "workerImage=https://registry/worker",
        "workerImage=orrery.dev/worker:v1.34.4",
        "autoscaler.port=0",
        "autoscaler.port=8080",
        "autoscaler.noSuchField=1",
    ] {
        let out = helm(&["template", "orrery", chart.as_str(), "--set", bad]);
        assert!(!out.status.success(), "helm template accepted --set {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("schema"),
            "--set {bad} was not rejected by values.schema.json: {err}"
        );
    }
    // Several replicas without leader election would reconcile the same objects twice.
    let out = helm(&[
        "template",
        "orrery",
        chart.as_str(),
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(
        !out.status.success(),
        "replicaCount=2 without leader election was accepted"
    );
}

#[test]
fn rbac_is_least_privilege_without_wildcards() {
    let docs = render(&[]);
    let cluster_role = find(&docs, "ClusterRole");
    let everything: [&str; 7] = [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    assert_eq!(
        rules(cluster_role),
        expected(&[
            (
                "orrery.dev",
                &["tenantcontrolplanes", "datastores", "nodepools"],
                &["get", "list", "watch", "patch", "update"]
            ),
            (
                "orrery.dev",
                &[
                    "tenantcontrolplanes/status",
                    "datastores/status",
                    "nodepools/status",
                ],
                &["get", "patch", "update"]
            ),
            ("orrery.dev", &["nodepools/scale"], &["get", "update"]),
            (
                "orrery.dev",
                &[
                    "tenantcontrolplanes/finalizers",
                    "datastores/finalizers",
                    "nodepools/finalizers",
                ],
                &["update"]
            ),
            (
                "kubevirt.io",
                &["virtualmachines"],
                &["get", "list", "watch", "create", "patch", "delete"]
            ),
            (
                "kubevirt.io",
                &["virtualmachineinstances"],
                &["get", "list", "watch"]
            ),
            (
                "",
                &["persistentvolumeclaims"],
                &["get", "list", "watch", "create", "patch", "delete"]
            ),
            (
                "subresources.kubevirt.io",
                &["virtualmachines/addvolume", "virtualmachines/removevolume"],
                &["update"]
            ),
            (
                "",
                &["secrets", "services", "configmaps", "serviceaccounts"],
                &everything
            ),
            ("apps", &["deployments", "statefulsets"], &everything),
            ("policy", &["poddisruptionbudgets"], &everything),
            ("", &["pods"], &["get", "list", "watch"]),
            ("events.k8s.io", &["events"], &["create", "patch"]),
            ("", &["namespaces"], &["get", "list", "watch"]),
            ("", &["nodes"], &["get"]),
        ]),
        "ClusterRole rules"
    );

    let role = find(&docs, "Role");
    assert_eq!(
        role["metadata"]["namespace"].as_str(),
        Some("orrery-system"),
        "the Role is in the release namespace"
    );
    assert_eq!(
        rules(role),
        expected(&[(
            "coordination.k8s.io",
            &["leases"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete"
            ]
        )]),
        "Role rules"
    );

    // Both bindings give the roles to the chart's ServiceAccount and nothing else.
    let sa = find(&docs, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("SA name")
        .to_string();
    for (binding_kind, role_kind, role) in [
        ("ClusterRoleBinding", "ClusterRole", cluster_role),
        ("RoleBinding", "Role", role),
    ] {
        let binding = find(&docs, binding_kind);
        assert_eq!(binding["roleRef"]["kind"].as_str(), Some(role_kind));
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1, "{binding_kind} has one subject");
        assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
        assert_eq!(subjects[0]["name"].as_str(), Some(sa.as_str()));
        assert_eq!(subjects[0]["namespace"].as_str(), Some("orrery-system"));
    }

    // Without leader election there is no Lease to hold.
    let docs = render(&[
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(
        !docs
            .iter()
            .any(|d| kind(d) == "Role" || kind(d) == "RoleBinding"),
        "Role rendered without leader election"
    );
}

#[test]
fn rendered_objects_follow_the_spec() {
    let docs = render(&[]);
    for doc in &docs {
        let labels = &doc["metadata"]["labels"];
        for label in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(
                labels[label].as_str().is_some(),
                "{} lacks label {label}",
                kind(doc)
            );
        }
    }

    let deploy = find(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );

    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"].as_str(),
        Some("orrery:0.1.0"),
        "image defaults to repository:appVersion"
    );
    assert_eq!(c["imagePullPolicy"].as_str(), Some("IfNotPresent"));
    let args = strings(&c["args"]);
    for arg in [
        "controller",
        "--leader-election=true",
        "--leader-election-namespace=$(POD_NAMESPACE)",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--image-registry=registry.k8s.io",
        "--worker-image=orrery.dev/worker",
        "--csi-node-image=orrery.dev/csi-node",
        "--resync-seconds=300",
    ] {
        assert!(args.iter().any(|a| a == arg), "args {args:?} lack {arg}");
    }
    assert_eq!(args[0], "controller", "the subcommand comes first");
    let env: BTreeMap<String, String> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        env.get("POD_NAMESPACE").map(String::as_str),
        Some("metadata.namespace")
    );
    assert_eq!(
        env.get("POD_NAME").map(String::as_str),
        Some("metadata.name")
    );
    assert_eq!(c["ports"][0]["name"].as_str(), Some("http-metrics"));
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(8080));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("http-metrics")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("http-metrics")
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        vec!["ALL".to_string()]
    );
    assert!(
        c["resources"]["requests"]["memory"].as_str().is_some(),
        "resources come from values"
    );
    assert!(
        c["resources"]["limits"]["memory"].as_str().is_some(),
        "resources come from values"
    );

    let pdb = find(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    let svc = find_named(&docs, "Service", "orrery-metrics");
    assert_eq!(
        svc["spec"]["ports"][0]["name"].as_str(),
        Some("http-metrics")
    );
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(8080));
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
        Some("true")
    );
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // The cluster-autoscaler API: served by every pod, behind a Service of its own.
    for arg in [
        "--autoscaler-addr=0.0.0.0:8443",
        "--autoscaler-service=orrery-autoscaler.orrery-system",
    ] {
        assert!(args.iter().any(|a| a == arg), "args {args:?} lack {arg}");
    }
    assert_eq!(c["ports"][1]["name"].as_str(), Some("grpc-autoscaler"));
    assert_eq!(c["ports"][1]["containerPort"].as_u64(), Some(8443));
    let api = find_named(&docs, "Service", "orrery-autoscaler");
    assert_eq!(api["spec"]["ports"][0]["port"].as_u64(), Some(8443));
    assert_eq!(
        api["spec"]["ports"][0]["targetPort"].as_str(),
        Some("grpc-autoscaler")
    );
    assert_eq!(
        api["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let docs = render(&["--set", "autoscaler.enabled=false"]);
    let c = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !strings(&c["args"])
            .iter()
            .any(|a| a.starts_with("--autoscaler")),
        "the API is served though switched off"
    );
    assert!(
        !docs
            .iter()
            .any(|d| kind(d) == "Service"
                && d["metadata"]["name"].as_str() == Some("orrery-autoscaler")),
        "the API's Service rendered though switched off"
    );

    // One replica: no PodDisruptionBudget, which would block every drain.
    let docs = render(&["--set", "replicaCount=1"]);
    assert!(
        !docs.iter().any(|d| kind(d) == "PodDisruptionBudget"),
        "PDB rendered for a single replica"
    );

    // Values reach the pod.
    let docs = render(&[
        "--set",
        "image.tag=v9",
        "--set",
        "logFormat=text",
        "--set",
        "imageRegistry=mirror.example/k8s",
        "--set",
        "workerImage=mirror.example:5000/orrery/worker",
        "--set",
        "extraArgs[0]=--extra=1",
        "--set",
        "metrics.service.prometheusAnnotations=false",
    ]);
    let c = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"].as_str(), Some("orrery:v9"));
    let args = strings(&c["args"]);
    for arg in [
        "--log-format=text",
        "--image-registry=mirror.example/k8s",
        "--worker-image=mirror.example:5000/orrery/worker",
        "--extra=1",
    ] {
        assert!(args.iter().any(|a| a == arg), "args {args:?} lack {arg}");
    }
    assert!(
        find_named(&docs, "Service", "orrery-metrics")["metadata"]["annotations"]
            ["prometheus.io/scrape"]
            .is_null()
    );

    // The CRDs are templates, so that `helm upgrade` upgrades them.
    let docs = render(&[]);
    let crds: BTreeSet<&str> = crds(&docs)
        .map(|d| d["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(crds, BTreeSet::from(CRD_NAMES));
}

fn crds(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter()
        .filter(|d| kind(d) == "CustomResourceDefinition")
}

/// The CRDs of `crds/orrery.dev.yaml`, the source the chart's copy must equal.
fn source_crds() -> Vec<Value> {
    let yaml = std::fs::read_to_string(repo_root().join("crds/orrery.dev.yaml"))
        .expect("reading crds/orrery.dev.yaml");
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("crds/orrery.dev.yaml is valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn crds_render_as_templates_kept_on_uninstall_unless_switched_off() {
    let docs = render(&[]);
    let rendered: Vec<&Value> = crds(&docs).collect();
    let source = source_crds();
    assert_eq!(rendered.len(), source.len(), "every CRD of crds/ renders");
    for crd in rendered {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let want = source
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the chart renders CRD {name}, which crds/ lacks"));
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "CRD {name} is kept on helm uninstall by default"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
            Some("Helm")
        );
        // Apart from the release's labels and annotations, the chart sends exactly the source:
        // templating changes nothing, CEL rules included.
        let mut bare = (*crd).clone();
        let meta = bare["metadata"].as_mapping_mut().expect("metadata");
        meta.remove("labels");
        meta.remove("annotations");
        assert_eq!(&bare, want, "CRD {name} differs from crds/orrery.dev.yaml");
    }

    let docs = render(&["--set", "crds.keep=false"]);
    assert_eq!(crds(&docs).count(), CRD_NAMES.len());
    for crd in crds(&docs) {
        assert!(
            crd["metadata"]["annotations"].is_null(),
            "crds.keep=false still annotates {:?}",
            crd["metadata"]
        );
    }

    // --include-crds would also show a crds/ directory, which Helm never upgrades.
    let docs = render(&["--include-crds", "--set", "crds.install=false"]);
    assert_eq!(crds(&docs).count(), 0, "crds.install=false renders CRDs");
    assert!(
        docs.iter().any(|d| kind(d) == "Deployment"),
        "crds.install=false still renders the operator"
    );
}

/// Uninstalls the release and deletes the namespace however the test ends.
struct Cleanup<'a> {
    ground: &'a Ground,
    release: String,
    namespace: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.ground.run(
            "helm",
            &[
                "uninstall",
                &self.release,
                "--namespace",
                &self.namespace,
                "--ignore-not-found",
            ],
        );
        let _ = self.ground.run(
            "kubectl",
            &[
                "delete",
                "namespace",
                &self.namespace,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

fn json(ground: &Ground, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ground.kubectl(&all)).expect("kubectl prints JSON")
}

/// Waits until the Deployment has `replicas` updated, ready and available pods and is Available,
/// failing early if Pod Security (or anything else) refuses its pods.
fn wait_for_deployment(ground: &Ground, namespace: &str, name: &str, replicas: u64) {
    let start = Instant::now();
    let timeout = Duration::from_secs(180);
    loop {
        let events = json(
            ground,
            &[
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                "reason=FailedCreate",
            ],
        );
        let failed: Vec<String> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{}: {}", e["involvedObject"]["name"], e["message"]))
            .collect();
        assert!(
            failed.is_empty(),
            "pods of {namespace}/{name} were refused:\n{}",
            failed.join("\n")
        );

        let d = json(ground, &["get", "deployment", name, "-n", namespace]);
        let status = &d["status"];
        let available = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Available" && c["status"] == "True");
        let count = |field: &str| status[field].as_u64().unwrap_or(0);
        if available
            && d["spec"]["replicas"].as_u64() == Some(replicas)
            && status["observedGeneration"] == d["metadata"]["generation"]
            && count("updatedReplicas") == replicas
            && count("readyReplicas") == replicas
            && count("availableReplicas") == replicas
            && count("replicas") == replicas
        {
            return;
        }
        if start.elapsed() > timeout {
            let pods = ground.run(
                "kubectl",
                &[
                    "get",
                    "pods,replicasets,events",
                    "-n",
                    namespace,
                    "-o",
                    "wide",
                ],
            );
            panic!(
                "timed out after {timeout:?} waiting for {namespace}/{name} to have {replicas} available replicas; \
                 status: {status}\n{}",
                text(&pods)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn helm_ok(ground: &Ground, args: &[&str]) -> String {
    let out = ground.run("helm", args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The release that owns a CRD, from Helm's annotation on it.
fn crd_owner(ground: &Ground, crd: &str) -> Option<String> {
    json(ground, &["get", "crd", crd])["metadata"]["annotations"]["meta.helm.sh/release-name"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn install_upgrade_uninstall_under_pod_security_restricted() {
    let ground = Ground::get().expect("the test ground must be up for the chart install test");
    let _crds = lock_cluster_crds();
    let namespace = unique_name("chart");
    let release = unique_name("orrery");
    let chart = chart_dir();

    ground.kubectl(&["create", "namespace", &namespace]);
    let cleanup = Cleanup {
        ground: &ground,
        release: release.clone(),
        namespace: namespace.clone(),
    };
    ground.kubectl(&[
        "label",
        "namespace",
        &namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "pod-security.kubernetes.io/warn=restricted",
    ]);

    // The CRDs may already exist, applied by other tests or kept from an earlier release: this
    // release takes them over.
    let out = helm_ok(
        &ground,
        &[
            "install",
            &release,
            &chart,
            "--namespace",
            &namespace,
            "--take-ownership",
            "--timeout",
            "3m",
        ],
    );
    assert!(
        out.contains("STATUS: deployed"),
        "helm install did not deploy:\n{out}"
    );
    for crd in CRD_NAMES {
        assert_eq!(crd_owner(&ground, crd), Some(release.clone()));
    }
    // The release name contains the chart name, so it is the full name of every object.
    wait_for_deployment(&ground, &namespace, &release, 2);
    ground.kubectl(&["get", "poddisruptionbudget", &release, "-n", &namespace]);
    ground.kubectl(&[
        "get",
        "service",
        &format!("{release}-metrics"),
        "-n",
        &namespace,
    ]);
    ground.kubectl(&[
        "get",
        "service",
        &format!("{release}-autoscaler"),
        "-n",
        &namespace,
    ]);
    // The pods run on kwok nodes here (nothing runs in them), so the Secrets the API's server
    // makes at start are checked where it really runs: e2e/tests/autoscaler.rs.
    ground.kubectl(&["get", "clusterrole,clusterrolebinding", &release]);
    ground.kubectl(&[
        "get",
        "role,rolebinding",
        &format!("{release}-leader-election"),
        "-n",
        &namespace,
    ]);

    // The operator's ServiceAccount may do what it needs and nothing broader.
    let sa = format!("system:serviceaccount:{namespace}:{release}");
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", sa.as_str()];
        all.extend_from_slice(args);
        let out = ground.run("kubectl", &all);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can(&[
        "watch",
        "tenantcontrolplanes.orrery.dev",
        "--all-namespaces"
    ]));
    assert!(can(&[
        "patch",
        "tenantcontrolplanes.orrery.dev",
        "--subresource=status",
        "-n",
        "default"
    ]));
    assert!(can(&["create", "deployments.apps", "-n", "default"]));
    assert!(
        can(&[
            "update",
            "nodepools.orrery.dev",
            "--subresource=scale",
            "-n",
            "default"
        ]),
        "the autoscaler API sets replicas through the scale subresource"
    );
    assert!(can(&[
        "create",
        "leases.coordination.k8s.io",
        "-n",
        &namespace
    ]));
    assert!(
        !can(&["create", "leases.coordination.k8s.io", "-n", "default"]),
        "leases are only in the release namespace"
    );
    assert!(
        !can(&["delete", "pods", "-n", "default"]),
        "pods are read-only"
    );
    assert!(!can(&[
        "create",
        "tenantcontrolplanes.orrery.dev",
        "-n",
        "default"
    ]));
    assert!(
        !can(&["update", "virtualmachines.kubevirt.io", "-n", "default"]),
        "worker VMs are created once, never rewritten"
    );
    assert!(
        !can(&[
            "delete",
            "virtualmachineinstances.kubevirt.io",
            "-n",
            "default"
        ]),
        "running VMs are only observed"
    );
    assert!(!can(&["create", "namespaces"]));
    assert!(can(&["get", "nodes"]), "a worker's zone and region");
    assert!(
        !can(&["patch", "nodes"]) && !can(&["list", "nodes"]),
        "management Nodes are only read, one by one"
    );
    assert!(!can(&["create", "clusterroles.rbac.authorization.k8s.io"]));

    let out = helm_ok(
        &ground,
        &[
            "upgrade",
            &release,
            &chart,
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "replicaCount=3",
            "--timeout",
            "3m",
        ],
    );
    assert!(
        out.contains("STATUS: deployed"),
        "helm upgrade did not deploy:\n{out}"
    );
    wait_for_deployment(&ground, &namespace, &release, 3);
    let history = helm_ok(
        &ground,
        &["history", &release, "--namespace", &namespace, "-o", "json"],
    );
    let history: serde_json::Value =
        serde_json::from_str(&history).expect("helm history prints JSON");
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(2),
        "install and upgrade are two revisions: {history}"
    );

    helm_ok(
        &ground,
        &[
            "uninstall",
            &release,
            "--namespace",
            &namespace,
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    for (what, args) in [
        (
            "Deployment",
            vec![
                "get",
                "deployment",
                release.as_str(),
                "-n",
                namespace.as_str(),
            ],
        ),
        ("ClusterRole", vec!["get", "clusterrole", release.as_str()]),
        (
            "ClusterRoleBinding",
            vec!["get", "clusterrolebinding", release.as_str()],
        ),
    ] {
        let out = ground.run("kubectl", &args);
        assert!(
            !out.status.success(),
            "{what} {release} survived helm uninstall"
        );
    }
    // crds.keep: tenants' objects outlive the operator's release.
    for crd in CRD_NAMES {
        let live = json(&ground, &["get", "crd", crd]);
        assert!(
            live["metadata"]["deletionTimestamp"].is_null(),
            "helm uninstall deletes CRD {crd}"
        );
    }

    drop(cleanup);
    ground.kubectl(&[
        "delete",
        "namespace",
        &namespace,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
    ]);
}

/// Copies a directory tree (the chart: plain files and directories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the chart copy");
    for entry in std::fs::read_dir(from).expect("reading the chart") {
        let entry = entry.expect("reading the chart");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a chart file");
        }
    }
}

/// An extra printer column, the change the next chart makes to TenantControlPlane.
const NEW_COLUMN: &str = "Requested";

/// A copy of the chart in a fresh directory whose TenantControlPlane CRD has one more printer
/// column: a later release of the chart that changed a CRD.
fn chart_with_changed_crd() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("orrery-chart"));
    copy_dir(Path::new(&chart_dir()), &dir);
    let file = dir.join("files/crds.yaml");
    let yaml = std::fs::read_to_string(&file).expect("reading the chart's CRDs");
    let columns = "  - additionalPrinterColumns:\n";
    let docs: Vec<String> = yaml
        .split("\n---\n")
        .map(|doc| {
            if doc.contains("\n  name: tenantcontrolplanes.orrery.dev\n") {
                assert!(doc.contains(columns), "TenantControlPlane has printer columns");
                doc.replacen(
                    columns,
                    &format!(
                        "{columns}    - jsonPath: .spec.version\n      name: {NEW_COLUMN}\n      type: string\n"
                    ),
                    1,
                )
            } else {
                doc.to_string()
            }
        })
        .collect();
    let changed = docs.join("\n---\n");
    assert_ne!(changed, yaml, "the chart copy's CRD did not change");
    std::fs::write(&file, changed).expect("writing the chart copy's CRDs");
    dir
}

/// Printer column names of the served version of the TenantControlPlane CRD in the cluster.
fn tcp_columns(ground: &Ground) -> Vec<String> {
    let crd = json(ground, &["get", "crd", CRD_NAMES[0]]);
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["name"].as_str().expect("column name").to_string())
        .collect()
}

/// Removes the chart copy, and if the test failed puts the real CRDs back for other tests.
struct RestoreCrds<'a> {
    ground: &'a Ground,
    changed_chart: PathBuf,
}

impl Drop for RestoreCrds<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.changed_chart);
        if std::thread::panicking() {
            let crds = repo_root().join("crds/orrery.dev.yaml");
            let _ = self.ground.run(
                "kubectl",
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    &crds.to_string_lossy(),
                ],
            );
        }
    }
}

#[test]
fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    let ground = Ground::get().expect("the test ground must be up for the chart CRD test");
    let _crds = lock_cluster_crds();
    let namespace = unique_name("chart-crds");
    let release = unique_name("orrery-crds");
    let chart = chart_dir();
    let changed = chart_with_changed_crd();
    // Declared before the release's cleanup so that it drops after the uninstall.
    let _restore = RestoreCrds {
        ground: &ground,
        changed_chart: changed.clone(),
    };
    let changed = changed.to_string_lossy().into_owned();
    ground.kubectl(&["create", "namespace", &namespace]);
    let cleanup = Cleanup {
        ground: &ground,
        release: release.clone(),
        namespace: namespace.clone(),
    };
    let helm_in_namespace = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--namespace", &namespace, "--timeout", "3m"]);
        helm_ok(&ground, &all)
    };
    let source = source_crds();
    let source_tcp = source
        .iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(CRD_NAMES[0]))
        .expect("crds/orrery.dev.yaml defines TenantControlPlane");
    let real_columns: Vec<String> = source_tcp["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_sequence()
        .expect("printer columns in crds/orrery.dev.yaml")
        .iter()
        .map(|c| c["name"].as_str().expect("column name").to_string())
        .collect();
    assert!(!real_columns.iter().any(|c| c == NEW_COLUMN));

    helm_in_namespace(&[
        "install",
        &release,
        &chart,
        "--take-ownership",
        "--set",
        "replicaCount=1",
    ]);
    for crd in CRD_NAMES {
        assert_eq!(crd_owner(&ground, crd), Some(release.clone()));
    }
    assert_eq!(tcp_columns(&ground), real_columns, "installed CRD");

    // The next chart's CRD reaches the cluster with `helm upgrade`, and so does the way back.
    helm_in_namespace(&["upgrade", &release, &changed, "--reuse-values"]);
    let mut upgraded = real_columns.clone();
    upgraded.insert(0, NEW_COLUMN.to_string());
    assert_eq!(tcp_columns(&ground), upgraded, "CRD after helm upgrade");
    helm_in_namespace(&["upgrade", &release, &chart, "--reuse-values"]);
    assert_eq!(
        tcp_columns(&ground),
        real_columns,
        "CRD after upgrading back"
    );

    // A second release, in a namespace of its own, leaves the CRDs to the first one.
    let second = Cleanup {
        ground: &ground,
        release: unique_name("orrery-second"),
        namespace: unique_name("chart-second"),
    };
    let in_second = ["--namespace", second.namespace.as_str(), "--timeout", "3m"];
    let mut install = vec![
        "install",
        second.release.as_str(),
        chart.as_str(),
        "--create-namespace",
        "--set",
        "replicaCount=1",
        "--set",
        "crds.install=false",
    ];
    install.extend_from_slice(&in_second);
    helm_ok(&ground, &install);
    let mut uninstall = vec!["uninstall", second.release.as_str(), "--wait"];
    uninstall.extend_from_slice(&in_second);
    helm_ok(&ground, &uninstall);
    drop(second);
    for crd in CRD_NAMES {
        assert_eq!(crd_owner(&ground, crd), Some(release.clone()));
    }

    helm_in_namespace(&["uninstall", &release, "--wait"]);
    for crd in CRD_NAMES {
        let live = json(&ground, &["get", "crd", crd]);
        assert!(
            live["metadata"]["deletionTimestamp"].is_null(),
            "helm uninstall deletes CRD {crd}"
        );
    }
    assert_eq!(tcp_columns(&ground), real_columns, "CRD after uninstall");
    drop(cleanup);
}
