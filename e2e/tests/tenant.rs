//! TenantControlPlane end to end on the test ground: the real apiserver, controller-manager
//! (garbage collection), scheduler, kwok nodes (pods become Ready) and a real etcd with
//! authentication as the external DataStore.
//!
//! One controller runs in this test process for all tests (two controllers would race on new
//! tenants' certificates); each test uses its own namespace.

use etcd_client::{
    Certificate, Client as EtcdClient, ConnectOptions, GetOptions, Identity, TlsOptions,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use orrery::api::{DataStore, TenantControlPlane};
use orrery::context::{Context, Settings};
use orrery::metrics::Metrics;
use orrery_e2e::{
    Ground, eventually, ground_etcd_datastore, ground_etcd_secrets, install_crds, repo_root,
    unique_name,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const DATASTORE: &str = "ground-etcd";
const SECRETS_NS: &str = "orrery-test-datastore";
const WAIT: Duration = Duration::from_secs(60);

/// The controller running in this process, shared by all tests.
struct Harness {
    ground: Ground,
    metrics: Arc<Metrics>,
    reconcile_all: tokio::sync::mpsc::UnboundedSender<()>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // The in-process controller's log, when asked for: ORRERY_TEST_LOG=orrery=debug.
        if let Ok(filter) = std::env::var("ORRERY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let ground = Ground::get().expect("test ground");
        install_crds(&ground);
        setup_datastore(&ground);
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let m = metrics.clone();
        let g = ground.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let client = g.client().await.unwrap();
                let reporter = Reporter {
                    controller: "orrery".into(),
                    instance: Some("e2e".into()),
                };
                // On kwok nodes no container runs, so the tenant API never answers: this tier
                // checks everything up to the control-plane Deployment.
                let settings = Settings {
                    tenant_access: false,
                    ..Settings::default()
                };
                let ctx = Arc::new(Context::new(client, m, reporter, settings));
                ready_tx.send(()).unwrap();
                let trigger = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|()| ((), rx))
                });
                let never = tokio_util::sync::CancellationToken::new();
                tokio::join!(
                    orrery::controlplane::run_with_trigger(ctx.clone(), never.clone(), trigger),
                    orrery::datastore::run(ctx, never),
                );
            });
        });
        ready_rx.recv().unwrap();
        Harness {
            ground,
            metrics,
            reconcile_all: tx,
        }
    })
}

/// Secrets of the ground's tenant etcd and the default DataStore that points at it.
fn setup_datastore(ground: &Ground) {
    ground_etcd_secrets(ground, SECRETS_NS);
    ground.kubectl_apply(&ground_etcd_datastore(ground, DATASTORE, SECRETS_NS, true).to_string());
}

/// A namespace that enforces Pod Security `restricted`, deleted when the test ends.
struct TestNamespace {
    name: String,
    ground: Ground,
}

impl TestNamespace {
    fn new(prefix: &str) -> Self {
        let h = harness();
        let name = unique_name(prefix);
        h.ground.kubectl(&["create", "namespace", &name]);
        h.ground.kubectl(&[
            "label",
            "namespace",
            &name,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
        Self {
            name,
            ground: h.ground.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self.ground.run(
            "kubectl",
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

async fn client() -> Client {
    harness().ground.client().await.unwrap()
}

fn tenant(name: &str, spec: serde_json::Value) -> TenantControlPlane {
    serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

async fn create(
    api: &Api<TenantControlPlane>,
    name: &str,
    spec: serde_json::Value,
) -> TenantControlPlane {
    api.create(&PostParams::default(), &tenant(name, spec))
        .await
        .unwrap()
}

/// Waits with the real `kubectl wait` for the Ready condition.
fn kubectl_wait_ready(ns: &str, name: &str) {
    let out = harness().ground.run(
        "kubectl",
        &[
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("tcp/{name}"),
            "--timeout=90s",
        ],
    );
    if !out.status.success() {
        let describe = harness()
            .ground
            .run("kubectl", &["get", "-n", ns, "tcp", name, "-o", "yaml"]);
        panic!(
            "tcp/{name} did not become Ready: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&describe.stdout)
        );
    }
}

/// A tenant in a namespace of its own, waited on until Ready.
async fn ready_tenant(
    prefix: &str,
    name: &str,
    spec: serde_json::Value,
) -> (TestNamespace, Client, Api<TenantControlPlane>) {
    let ns = TestNamespace::new(prefix);
    let client = client().await;
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), &ns.name);
    create(&api, name, spec).await;
    kubectl_wait_ready(&ns.name, name);
    (ns, client, api)
}

fn condition(tcp: &TenantControlPlane, type_: &str) -> Option<(String, String)> {
    tcp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_condition(
    api: &Api<TenantControlPlane>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) {
    eventually(
        &format!("{name} {type_}={status} ({reason})"),
        WAIT,
        || async {
            let tcp = api.get(name).await.ok()?;
            (condition(&tcp, type_) == Some((status.into(), reason.into()))).then_some(())
        },
    )
    .await
    .unwrap();
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed")
}

async fn etcd_as(cert: &str, key: &str) -> EtcdClient {
    let ground = &harness().ground;
    let dir = ground.var("ORRERY_TENANT_ETCD_DIR");
    let ca = std::fs::read_to_string(Path::new(&dir).join("ca.crt")).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    EtcdClient::connect(
        [ground.var("ORRERY_TENANT_ETCD_ENDPOINT")],
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap()
}

async fn etcd_root() -> EtcdClient {
    let dir = harness().ground.var("ORRERY_TENANT_ETCD_DIR");
    let read = |f: &str| std::fs::read_to_string(Path::new(&dir).join(f)).unwrap();
    etcd_as(&read("root.crt"), &read("root.key")).await
}

/// The reasons of the Warning Events in `ns`, as the real kubectl lists them.
fn warning_reasons(ns: &str) -> String {
    harness().ground.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "type=Warning",
        "-o",
        "jsonpath={.items[*].reason}",
    ])
}

/// Writes `key`. Other tests add and remove etcd users meanwhile; etcd then refuses a request
/// checked against the older auth store and asks to try again, as its own client (the
/// apiserver's) does.
async fn put(etcd: &mut EtcdClient, key: String) -> Result<(), etcd_client::Error> {
    let mut tries = 0;
    loop {
        match etcd.put(key.clone(), "v", None).await {
            Err(e) if tries < 5 && e.to_string().contains("revision of auth store is old") => {
                tries += 1
            }
            result => return result.map(|_| ()),
        }
    }
}

/// resourceVersion of the tenant and every child, by kind/name.
async fn resource_versions(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let sel = ListParams::default().labels(&format!("orrery.dev/tenant={name}"));
    let mut rvs = BTreeMap::new();
    let tcp = Api::<TenantControlPlane>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    rvs.insert(
        format!("TenantControlPlane/{name}"),
        tcp.resource_version().unwrap(),
    );
    macro_rules! collect {
        ($($k:ty),*) => {$(
            for o in Api::<$k>::namespaced(client.clone(), ns).list(&sel).await.unwrap() {
                rvs.insert(format!("{}/{}", stringify!($k), o.name_any()), o.resource_version().unwrap());
            }
        )*};
    }
    collect!(Deployment, Service, Secret, ConfigMap, PodDisruptionBudget);
    rvs
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_becomes_ready_with_every_child_and_status() {
    let (ns, client, api) = ready_tenant("ready", "t1", json!({"version": "v1.34.4", "network": {"certSANs": ["api.t1.example.com", "192.0.2.10"]}})).await;

    let tcp = api.get("t1").await.unwrap();
    let status = tcp.status.clone().unwrap();
    assert_eq!(status.observed_generation, tcp.metadata.generation);
    assert_eq!(status.phase.as_deref(), Some("Ready"));
    assert_eq!(status.version.as_deref(), Some("v1.34.4"));
    assert_eq!(status.data_store.as_deref(), Some(DATASTORE));
    for c in [
        "CertificatesReady",
        "DataStoreReady",
        "ControlPlaneAvailable",
        "Ready",
    ] {
        assert_eq!(condition(&tcp, c).map(|c| c.0), Some("True".into()), "{c}");
    }
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("t1")
        .await
        .unwrap();
    let cluster_ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert_eq!(status.endpoint, Some(format!("{cluster_ip}:6443")));
    assert_eq!(
        status.kubeconfig_secret_ref.as_ref().unwrap().name,
        "t1-admin-kubeconfig"
    );

    // The children, labelled and owned.
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("t1")
        .await
        .unwrap();
    let pod = deploy
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.containers.len(), 4);
    assert_eq!(deploy.status.as_ref().unwrap().available_replicas, Some(2));
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .get("t1")
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get("t1-config")
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    for s in [
        "t1-ca",
        "t1-front-proxy-ca",
        "t1-sa",
        "t1-certs",
        "t1-admin-kubeconfig",
        "t1-kubeconfigs",
        "t1-addon-kubeconfigs",
    ] {
        let secret = secrets.get(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(secret.owner_references()[0].uid, tcp.uid().unwrap(), "{s}");
        assert_eq!(secret.labels()["orrery.dev/tenant"], "t1");
    }

    // The certificates, checked by real openssl.
    let dir = tempfile_dir("t1");
    let certs = secrets.get("t1-certs").await.unwrap();
    for key in [
        "ca.crt",
        "apiserver.crt",
        "datastore-client.crt",
        "datastore-ca.crt",
        "front-proxy-ca.crt",
        "front-proxy-client.crt",
    ] {
        std::fs::write(dir.join(key), secret_text(&certs, key)).unwrap();
    }
    let verify = |ca: &str, cert: &str| {
        let out = openssl(&[
            "verify",
            "-CAfile",
            dir.join(ca).to_str().unwrap(),
            dir.join(cert).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "openssl verify {cert}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verify("ca.crt", "apiserver.crt");
    verify("front-proxy-ca.crt", "front-proxy-client.crt");
    verify("datastore-ca.crt", "datastore-client.crt");
    let text = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        dir.join("apiserver.crt").to_str().unwrap(),
    ]);
    let sans = String::from_utf8_lossy(&text.stdout);
    for want in [
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:api.t1.example.com",
        "IP Address:192.0.2.10",
        "IP Address:10.96.0.1",
        &format!("IP Address:{cluster_ip}"),
        &format!("DNS:t1.{}.svc", ns.name),
        "IP Address:127.0.0.1",
    ] {
        assert!(sans.contains(want), "apiserver SANs {sans} lack {want}");
    }
    // The ground's etcd CA signed the tenant's etcd client certificate with the tenant's user.
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-in",
        dir.join("datastore-client.crt").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&subject.stdout).contains(&format!("orrery/{}/t1", ns.name)));

    // Printer columns, through real kubectl.
    let table = harness().ground.kubectl(&["get", "tcp", "-n", &ns.name]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "READY", "PHASE", "VERSION", "ENDPOINT", "AGE"] {
        assert!(header.contains(col), "header {header:?} lacks {col}");
    }
    assert!(table.contains("True") && table.contains("v1.34.4"));
    // Events a user must know about.
    let events = harness().ground.kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("CertificatesIssued") && events.contains("Ready"),
        "events: {events}"
    );
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("orrery-e2e-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_tenant_reconciles_without_writes() {
    let (ns, client, _) = ready_tenant(
        "nowrite",
        "quiet",
        json!({"version": "v1.34.4", "replicas": 1}),
    )
    .await;
    // Let the last status write and its watch events settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = resource_versions(&client, &ns.name, "quiet").await;
    assert!(
        before.len() >= 11,
        "expected the tenant and at least 10 children, got {before:?}"
    );

    let h = harness();
    let reconciles = h.metrics.reconciles("tenantcontrolplane");
    for _ in 0..3 {
        h.reconcile_all.send(()).unwrap();
    }
    eventually("three more reconciles", WAIT, || async {
        (h.metrics.reconciles("tenantcontrolplane") >= reconciles + 3).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resource_versions(&client, &ns.name, "quiet").await;
    assert_eq!(
        before, after,
        "a reconcile of an unchanged tenant changed something"
    );
}

/// How long a child deleted or edited by hand may stay so.
const RESTORE: Duration = Duration::from_secs(10);

/// Deletes `name` of kind `K` and waits until a new one (another uid) is there.
async fn delete_and_see_restored<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let old = api.get(name).await.unwrap().uid();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(&format!("{name} recreated"), RESTORE, || async {
        api.get_opt(name)
            .await
            .ok()
            .flatten()
            .filter(|o| o.uid() != old)
    })
    .await
    .unwrap()
}

/// Edits `name` with a merge patch and waits until `restored` holds again.
async fn edit_and_see_restored<K, F>(
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
    restored: F,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        &format!("{name} restored after {patch}"),
        RESTORE,
        || async { api.get(name).await.ok().filter(|o| restored(o)).map(|_| ()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_or_edited_children_are_restored() {
    let (ns, client, api) = ready_tenant("drift", "d1", json!({"version": "v1.34.4"})).await;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas) == Some(2);
    edit_and_see_restored(
        &deployments,
        "d1",
        json!({"spec": {"replicas": 5}}),
        replicas,
    )
    .await;
    delete_and_see_restored(&deployments, "d1").await;

    // A Service port edited by hand makes a plain apply invalid (two ports named kube-apiserver).
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    let before = services.get("d1").await.unwrap();
    let ports = |s: &Service| -> Vec<i32> {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| p.port)
            .collect()
    };
    let edited = json!({"spec": {"ports": [
        {"name": "kube-apiserver", "port": 7443, "targetPort": 6443, "protocol": "TCP"},
        {"name": "konnectivity", "port": 8132, "targetPort": 8132, "protocol": "TCP"},
    ]}});
    let want = ports(&before);
    edit_and_see_restored(&services, "d1", edited, |s| ports(s) == want).await;
    // A Service deleted by hand comes back at the same address: kubeconfigs stay valid.
    let again = delete_and_see_restored(&services, "d1").await;
    assert_eq!(
        again.spec.unwrap().cluster_ip,
        before.spec.unwrap().cluster_ip,
        "the endpoint must not move"
    );

    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let original = config_maps.get("d1-config").await.unwrap().data;
    let tampered = json!({"data": {"egress-selector-configuration.yaml": "tampered"}});
    edit_and_see_restored(&config_maps, "d1-config", tampered, |c| c.data == original).await;
    delete_and_see_restored(&config_maps, "d1-config").await;

    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name);
    let one = |p: &PodDisruptionBudget| {
        p.spec.as_ref().and_then(|s| s.max_unavailable.clone())
            == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    };
    edit_and_see_restored(&budgets, "d1", json!({"spec": {"maxUnavailable": 2}}), one).await;
    delete_and_see_restored(&budgets, "d1").await;

    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let ca_before = secrets.get("d1-ca").await.unwrap().data;
    // Entries that are restored to the very same bytes (a tampered certificate would be
    // issued anew instead, which is right but not "the same").
    let tampered = [
        ("d1-certs", "ca.crt"),
        ("d1-admin-kubeconfig", "kubeconfig"),
        ("d1-kubeconfigs", "scheduler.conf"),
    ];
    for (name, key) in tampered {
        let data = secrets.get(name).await.unwrap().data;
        let patch = json!({"data": {key: "dGFtcGVyZWQ="}});
        edit_and_see_restored(&secrets, name, patch, |s| s.data == data).await;
    }
    for (name, _) in tampered {
        delete_and_see_restored(&secrets, name).await;
    }
    assert_eq!(
        secrets.get("d1-ca").await.unwrap().data,
        ca_before,
        "the CA must never change"
    );
    assert!(
        condition(&api.get("d1").await.unwrap(), "Ready") == Some(("True".into(), "Ready".into())),
        "every repair keeps the tenant Ready"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_authority_is_reported_never_replaced() {
    let (ns, client, api) =
        ready_tenant("lost", "l1", json!({"version": "v1.34.4", "replicas": 1})).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    for name in ["l1-ca", "l1-front-proxy-ca", "l1-sa"] {
        let kept = secrets.get(name).await.unwrap();
        // A reconcile that read the Secret just before the deletion puts the same one back;
        // delete until a reconcile sees it gone. A different authority is never acceptable.
        eventually(&format!("{name} reported missing"), WAIT, || async {
            let _ = secrets.delete(name, &DeleteParams::default()).await;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(back) = secrets.get_opt(name).await.ok()? {
                    assert_eq!(back.data, kept.data, "{name} was made anew");
                    return None;
                }
                let tcp = api.get("l1").await.ok()?;
                let missing = ("False".to_string(), "AuthorityMissing".to_string());
                if condition(&tcp, "CertificatesReady") == Some(missing) {
                    return Some(());
                }
            }
            None
        })
        .await
        .unwrap();
        let tcp = api.get("l1").await.unwrap();
        let message = tcp
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "CertificatesReady")
            .unwrap()
            .message;
        assert!(
            message.contains(name) && message.contains("Restore it"),
            "{message}"
        );
        assert_eq!(
            condition(&api.get("l1").await.unwrap(), "Ready").unwrap().0,
            "False"
        );
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "{name} must not be made anew"
        );
        let events = warning_reasons(&ns.name);
        assert!(events.contains("AuthorityMissing"), "events: {events}");
        // Restored from a backup, the tenant is whole again with the very same authority.
        let mut backup = kept.clone();
        backup.metadata.resource_version = None;
        backup.metadata.uid = None;
        backup.metadata.creation_timestamp = None;
        backup.metadata.managed_fields = None;
        secrets
            .create(&PostParams::default(), &backup)
            .await
            .unwrap();
        wait_condition(&api, "l1", "Ready", "True", "Ready").await;
        assert_eq!(secrets.get(name).await.unwrap().data, kept.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_reconcile_shows_degraded_never_ready() {
    let (ns, _client, api) = ready_tenant(
        "degraded",
        "g1",
        json!({"version": "v1.34.4", "replicas": 1}),
    )
    .await;
    // A toleration the apiserver refuses: the Deployment cannot be applied.
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"controlPlane": {"scheduling": {"tolerations": [{"key": "a", "operator": "Sometimes"}]}}}})),
    )
    .await
    .unwrap();
    wait_condition(&api, "g1", "Degraded", "True", "Rejected").await;
    wait_condition(&api, "g1", "Ready", "False", "ReconcileFailed").await;
    let events = warning_reasons(&ns.name);
    assert!(events.contains("Rejected"), "events: {events}");
    api.patch(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"controlPlane": {"scheduling": {"tolerations": null}}}})),
    )
    .await
    .unwrap();
    wait_condition(&api, "g1", "Degraded", "False", "NoErrors").await;
    wait_condition(&api, "g1", "Ready", "True", "Ready").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_change_rolls_the_pods() {
    let (ns, client, api) =
        ready_tenant("roll", "r1", json!({"version": "v1.34.4", "replicas": 1})).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[&"checksum.orrery.dev/r1-certs".to_string()]
            .clone()
    };
    let before = hash(&deployments.get("r1").await.unwrap());
    api.patch(
        "r1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"network": {"certSANs": ["new.example.com"]}}})),
    )
    .await
    .unwrap();
    let after = eventually("the certs hash changes", WAIT, || async {
        let h = hash(&deployments.get("r1").await.ok()?);
        (h != before).then_some(h)
    })
    .await
    .unwrap();
    assert_ne!(before, after);
    let certs = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("r1-certs")
        .await
        .unwrap();
    let dir = tempfile_dir("r1");
    std::fs::write(
        dir.join("apiserver.crt"),
        secret_text(&certs, "apiserver.crt"),
    )
    .unwrap();
    let sans = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        dir.join("apiserver.crt").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&sans.stdout).contains("DNS:new.example.com"));
    kubectl_wait_ready(&ns.name, "r1");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_everything_including_etcd_keys_user_and_role() {
    let (ns, client, api) = ready_tenant(
        "delete",
        "gone",
        json!({"version": "v1.34.4", "replicas": 1}),
    )
    .await;
    create(&api, "kept", json!({"version": "v1.34.4", "replicas": 1})).await;
    kubectl_wait_ready(&ns.name, "kept");

    // Each tenant writes with its own etcd identity, as its apiserver would.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let mut etcd_of = BTreeMap::new();
    for t in ["gone", "kept"] {
        let certs = secrets.get(&format!("{t}-certs")).await.unwrap();
        let mut etcd = etcd_as(
            &secret_text(&certs, "datastore-client.crt"),
            &secret_text(&certs, "datastore-client.key"),
        )
        .await;
        for k in ["pods/default/a", "configmaps/kube-system/b"] {
            put(&mut etcd, format!("/orrery/{}/{t}/{k}", ns.name))
                .await
                .unwrap();
        }
        etcd_of.insert(t, etcd);
    }
    // A tenant cannot read or write another tenant's keys.
    let gone = etcd_of.get_mut("gone").unwrap();
    let denied = put(gone, format!("/orrery/{}/kept/pods/default/x", ns.name)).await;
    assert!(
        denied.is_err_and(|e| e.to_string().contains("permission denied")),
        "cross-tenant write must be denied"
    );
    let denied = gone
        .get(
            format!("/orrery/{}/kept/", ns.name),
            Some(GetOptions::new().with_prefix()),
        )
        .await;
    assert!(denied.is_err(), "cross-tenant read must be denied");

    api.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually("tenant gone", WAIT, || async {
        api.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();

    let mut root = etcd_root().await;
    let prefix = |t: &str| format!("/orrery/{}/{t}/", ns.name);
    let left = root
        .get(
            prefix("gone"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 0, "the deleted tenant's keys are gone");
    let kept = root
        .get(
            prefix("kept"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(kept.count(), 2, "the other tenant's keys are untouched");
    let user = format!("orrery/{}/gone", ns.name);
    assert!(
        root.user_get(user.as_str()).await.is_err(),
        "the deleted tenant's etcd user is gone"
    );
    assert!(
        root.role_get(user.as_str()).await.is_err(),
        "the deleted tenant's etcd role is gone"
    );
    root.user_get(format!("orrery/{}/kept", ns.name))
        .await
        .expect("the other tenant's user remains");

    // The garbage collector removes every child of the deleted tenant.
    let sel = ListParams::default().labels("orrery.dev/tenant=gone");
    eventually("children garbage-collected", WAIT, || async {
        let left = count::<Deployment>(&client, &ns.name, &sel).await?
            + count::<Secret>(&client, &ns.name, &sel).await?
            + count::<Service>(&client, &ns.name, &sel).await?
            + count::<ConfigMap>(&client, &ns.name, &sel).await?
            + count::<PodDisruptionBudget>(&client, &ns.name, &sel).await?;
        (left == 0).then_some(())
    })
    .await
    .unwrap();
    kubectl_wait_ready(&ns.name, "kept");

    api.delete("kept", &DeleteParams::default()).await.unwrap();
    eventually("second tenant gone", WAIT, || async {
        api.get_opt("kept").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    let kept = root
        .get(
            prefix("kept"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(kept.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tenants_are_reported_and_do_not_stop_the_controller() {
    let ns = TestNamespace::new("bad");
    let client = client().await;
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), &ns.name);
    create(
        &api,
        "nods",
        json!({"version": "v1.34.4", "dataStore": "does-not-exist"}),
    )
    .await;
    // A CA Secret that is not a CA: Orrery must not replace it.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let garbage: Secret = serde_json::from_value(json!({
        "metadata": {"name": "badca-ca"},
        "stringData": {"tls.crt": "not a certificate", "tls.key": "not a key"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &garbage)
        .await
        .unwrap();
    create(&api, "badca", json!({"version": "v1.34.4"})).await;
    create(&api, "fine", json!({"version": "v1.34.4", "replicas": 1})).await;

    wait_condition(&api, "nods", "DataStoreReady", "False", "DataStoreNotFound").await;
    wait_condition(
        &api,
        "badca",
        "CertificatesReady",
        "False",
        "CertificateAuthorityInvalid",
    )
    .await;
    kubectl_wait_ready(&ns.name, "fine");
    let nods = api.get("nods").await.unwrap();
    assert_eq!(
        nods.status.as_ref().unwrap().phase.as_deref(),
        Some("Provisioning")
    );
    let ca = secrets.get("badca-ca").await.unwrap();
    assert_eq!(
        secret_text(&ca, "tls.crt"),
        "not a certificate",
        "a bad CA is reported, never replaced"
    );
    let events = harness().ground.kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("DataStoreNotFound"), "events: {events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_supplied_ca_signs_the_tenant_certificates() {
    let ns = TestNamespace::new("byoca");
    let client = client().await;
    let dir = tempfile_dir("byoca");
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let out = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "365",
        "-subj",
        "/CN=my-own-ca",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = harness().ground.kubectl(&[
        "create",
        "secret",
        "tls",
        "own-ca",
        "-n",
        &ns.name,
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    harness().ground.kubectl_apply(&yaml);
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), &ns.name);
    create(&api, "own", json!({"version": "v1.34.4", "replicas": 1})).await;
    kubectl_wait_ready(&ns.name, "own");
    let certs = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("own-certs")
        .await
        .unwrap();
    std::fs::write(
        dir.join("apiserver.crt"),
        secret_text(&certs, "apiserver.crt"),
    )
    .unwrap();
    let verify = openssl(&[
        "verify",
        "-CAfile",
        crt.to_str().unwrap(),
        dir.join("apiserver.crt").to_str().unwrap(),
    ]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("own-ca")
        .await
        .unwrap();
    assert_eq!(
        secret_text(&secret, "tls.crt"),
        std::fs::read_to_string(&crt).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_datastore_in_use_cannot_be_deleted() {
    let ns = TestNamespace::new("inuse");
    let client = client().await;
    let h = harness();
    let name = unique_name("ds-inuse");
    let ds = ground_etcd_datastore(&h.ground, &name, SECRETS_NS, false);
    h.ground.kubectl_apply(&ds.to_string());
    let datastores = Api::<DataStore>::all(client.clone());
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), &ns.name);
    create(
        &api,
        "user",
        json!({"version": "v1.34.4", "replicas": 1, "dataStore": name}),
    )
    .await;
    kubectl_wait_ready(&ns.name, "user");
    datastores
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let tenant_ref = format!("{}/user", ns.name);
    eventually("DataStore held with usedBy", WAIT, || async {
        let ds = datastores.get(&name).await.ok()?;
        let status = ds.status.clone()?;
        (ds.metadata.deletion_timestamp.is_some() && status.used_by == vec![tenant_ref.clone()])
            .then_some(())
    })
    .await
    .unwrap();
    api.delete("user", &DeleteParams::default()).await.unwrap();
    eventually("DataStore deleted once unused", WAIT, || async {
        datastores
            .get_opt(&name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_applies_and_its_tenants_become_ready() {
    let h = harness();
    let client = client().await;
    let examples = repo_root().join("examples");
    // The managed DataStore's etcd cannot run on kwok nodes; here we check the objects it builds
    // and keep the ground's etcd as the default so the example tenants can become Ready.
    let apply_file = |f: &str| {
        h.ground
            .kubectl(&["apply", "-f", examples.join(f).to_str().unwrap()])
    };
    apply_file("datastore-managed.yaml");
    h.ground.kubectl(&[
        "annotate",
        "--overwrite",
        "datastore",
        "default",
        "orrery.dev/default-datastore=false",
    ]);
    let sts = eventually("managed etcd StatefulSet", WAIT, || async {
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), "orrery-etcd")
            .get_opt("default-etcd")
            .await
            .ok()?
    })
    .await
    .unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(3));
    let secrets = Api::<Secret>::namespaced(client.clone(), "orrery-etcd");
    for s in [
        "default-etcd-ca",
        "default-etcd-server",
        "default-etcd-root-client",
    ] {
        secrets.get(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    apply_file("datastore-external.yaml");
    apply_file("tenant-minimal.yaml");
    apply_file("tenant-ha.yaml");
    // The ground has no load-balancer implementation: play its part for the HA tenant's
    // LoadBalancer Service, as a cloud controller would.
    eventually("HA Service", WAIT, || async {
        Api::<Service>::namespaced(client.clone(), "tenant-ha")
            .get_opt("ha")
            .await
            .ok()?
    })
    .await
    .unwrap();
    h.ground.kubectl(&[
        "patch",
        "service",
        "ha",
        "-n",
        "tenant-ha",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.80"}]}}}"#,
    ]);
    kubectl_wait_ready("tenant-demo", "demo");
    kubectl_wait_ready("tenant-ha", "ha");
    let ha = Api::<TenantControlPlane>::namespaced(client.clone(), "tenant-ha")
        .get("ha")
        .await
        .unwrap();
    assert_eq!(ha.spec.replicas, 3);
    assert_eq!(
        ha.status.unwrap().endpoint.as_deref(),
        Some("192.0.2.80:6443")
    );
    for f in [
        "tenant-minimal.yaml",
        "tenant-ha.yaml",
        "datastore-external.yaml",
        "datastore-managed.yaml",
    ] {
        h.ground.kubectl(&[
            "delete",
            "--wait=false",
            "-f",
            examples.join(f).to_str().unwrap(),
        ]);
    }
}

/// How many objects of kind `K` in `ns` match `sel`.
async fn count<K>(client: &Client, ns: &str, sel: &ListParams) -> Option<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Some(
        Api::<K>::namespaced(client.clone(), ns)
            .list(sel)
            .await
            .ok()?
            .items
            .len(),
    )
}
