//! A live tenant: Orrery installed with its Helm chart runs on the ground's real node, a managed
//! DataStore's etcd really runs, and a tenant control plane really serves. Checked with real
//! clients only: kubectl against the tenant, kubeadm's token discovery against its cluster-info,
//! etcd with the DataStore's root certificate.
//!
//! Needs the live tier: `ORRERY_GROUND_LIVE=1 e2e/ground up` (fails, never skips, without it).

use etcd_client::{
    Certificate, Client as EtcdClient, ConnectOptions, GetOptions, Identity, TlsOptions,
};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use orrery::api::{DataStore, TenantControlPlane};
use orrery_e2e::live::{
    Release, apply_json, check, live_ground, live_scheduling, managed_datastore,
    restricted_namespace, wait_tenant_ready,
};
use orrery_e2e::{Ground, eventually, install_crds, unique_name};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TOKEN_ID: &str = "abcdef";
const TOKEN_SECRET: &str = "0123456789abcdef";

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn tenant_kubectl(ground: &Ground, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(ground.bin("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

/// `kubeadm join phase preflight` performs token discovery: it fetches `cluster-info`
/// anonymously, checks the bootstrapsigner's signature for the token and pins the CA by hash,
/// then reads kubeadm-config and the component configs with the bootstrap token.
fn kubeadm_discovery(ground: &Ground, endpoint: &str, ca_hash: &str) -> Output {
    let child = Command::new("timeout")
        .arg("90")
        .arg(ground.bin("kubeadm"))
        .args(["join", "phase", "preflight", endpoint])
        .args(["--token", &format!("{TOKEN_ID}.{TOKEN_SECRET}")])
        .args(["--discovery-token-ca-cert-hash", ca_hash])
        .args([
            "--ignore-preflight-errors=all",
            "--node-name=discovery-check",
            "-v=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ca_hash(ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1",
            ca.display()
        ))
        .output()
        .unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
}

async fn etcd_root(client: &kube::Client, etcd_ns: &str, datastore: &str) -> EtcdClient {
    let secrets = Api::<Secret>::namespaced(client.clone(), etcd_ns);
    let root = secrets
        .get(&format!("{datastore}-etcd-root-client"))
        .await
        .unwrap();
    let service = Api::<Service>::namespaced(client.clone(), etcd_ns)
        .get(&format!("{datastore}-etcd-client"))
        .await
        .unwrap();
    let ip = service.spec.unwrap().cluster_ip.unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(secret_text(&root, "ca.crt")))
        .identity(Identity::from_pem(
            secret_text(&root, "tls.crt"),
            secret_text(&root, "tls.key"),
        ))
        // The Service IP routes through kube-proxy; the certificate names the Service.
        .domain_name(format!("{datastore}-etcd-client.{etcd_ns}.svc"));
    EtcdClient::connect(
        [format!("https://{ip}:2379")],
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap()
}

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("orrery-live"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_tenant_serves_real_clients_and_kubeadm_discovery() {
    let ground = live_ground();
    install_crds(&ground);
    let client = ground.client().await.unwrap();
    let dir = workdir();
    let etcd_ns = unique_name("orrery-etcd");
    let datastore = unique_name("live");
    let (etcd_ns, datastore) = (etcd_ns.as_str(), datastore.as_str());

    // Orrery itself, from its chart, on the real node.
    let release = Release::install(&ground, "orrery-live");

    // A managed DataStore: Orrery's own etcd StatefulSet, one member, on the real node.
    managed_datastore(&ground, &client, datastore, etcd_ns).await;
    let datastores = Api::<DataStore>::all(client.clone());

    // The tenant.
    let ns = restricted_namespace(&ground, "live");
    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "live", "namespace": ns},
            "spec": {"version": "v1.34.4", "replicas": 1, "dataStore": datastore,
                     "controlPlane": {"scheduling": live_scheduling()}}
        }),
    );
    let start = Instant::now();
    let wait = ground.run(
        "kubectl",
        &[
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "tcp/live",
            "--timeout=300s",
        ],
    );
    if !wait.status.success() {
        let tcp = ground.run("kubectl", &["get", "tcp", "live", "-n", &ns, "-o", "yaml"]);
        let pods = ground.run("kubectl", &["get", "pods", "-n", &ns, "-o", "wide"]);
        let logs = release.logs();
        panic!(
            "tenant not Ready: {}\n{}\n{}\n{}",
            String::from_utf8_lossy(&wait.stderr),
            String::from_utf8_lossy(&tcp.stdout),
            String::from_utf8_lossy(&pods.stdout),
            logs
        );
    }
    println!(
        "live tenant: created to Ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    print_memory(&ground, &ns);

    let tcps = Api::<TenantControlPlane>::namespaced(client.clone(), &ns);
    let tcp = tcps.get("live").await.unwrap();
    let status = tcp.status.clone().unwrap();
    for c in [
        "TenantAPIReady",
        "TenantBootstrapped",
        "DataStoreReady",
        "Ready",
    ] {
        assert!(
            status
                .conditions
                .iter()
                .any(|x| x.type_ == c && x.status == "True"),
            "{c} is not True"
        );
    }
    let endpoint = status.endpoint.clone().unwrap();
    // Its cloud controller, on by default, runs in the operator once the tenant is bootstrapped,
    // and the status says so.
    eventually("AddonsReady", Duration::from_secs(60), || async {
        let tcp = tcps.get("live").await.ok()?;
        tcp.status?.conditions.into_iter().find(|c| {
            c.type_ == "AddonsReady"
                && c.status == "True"
                && c.reason == "AddonsRunning"
                && c.message == "running: cloud-controller"
        })
    })
    .await
    .unwrap();

    // Real kubectl with the generated admin kubeconfig.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let admin = secrets.get("live-admin-kubeconfig").await.unwrap();
    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig, secret_text(&admin, "kubeconfig")).unwrap();
    let readyz = check(
        tenant_kubectl(&ground, &kubeconfig, &["get", "--raw", "/readyz"]),
        "tenant /readyz",
    );
    assert_eq!(readyz.trim(), "ok");
    check(
        tenant_kubectl(&ground, &kubeconfig, &["create", "namespace", "hello"]),
        "create namespace in the tenant",
    );
    let nss = check(
        tenant_kubectl(&ground, &kubeconfig, &["get", "namespaces", "-o", "name"]),
        "list namespaces",
    );
    assert!(nss.contains("namespace/hello"));
    // The bootstrap is in place.
    for (ns_, kind, name) in [
        ("kube-public", "configmap", "cluster-info"),
        ("kube-system", "configmap", "kubeadm-config"),
        ("kube-system", "configmap", "kubelet-config"),
        ("kube-system", "deployment", "coredns"),
        ("kube-system", "daemonset", "kube-proxy"),
        ("kube-system", "daemonset", "konnectivity-agent"),
    ] {
        check(
            tenant_kubectl(&ground, &kubeconfig, &["get", "-n", ns_, kind, name]),
            &format!("{kind} {name}"),
        );
    }

    // kubeadm token discovery against cluster-info, signed by the tenant's bootstrapsigner.
    let token = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": format!("bootstrap-token-{TOKEN_ID}"), "namespace": "kube-system"},
        "stringData": {
            "token-id": TOKEN_ID, "token-secret": TOKEN_SECRET,
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"
        }
    });
    let token_file = dir.join("token.json");
    std::fs::write(&token_file, token.to_string()).unwrap();
    check(
        tenant_kubectl(
            &ground,
            &kubeconfig,
            &["apply", "-f", token_file.to_str().unwrap()],
        ),
        "bootstrap token",
    );
    eventually(
        "cluster-info signed for the token",
        Duration::from_secs(60),
        || async {
            let out = tenant_kubectl(
                &ground,
                &kubeconfig,
                &[
                    "get",
                    "cm",
                    "cluster-info",
                    "-n",
                    "kube-public",
                    "-o",
                    "json",
                ],
            );
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("jws-kubeconfig-{TOKEN_ID}"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    let certs = secrets.get("live-certs").await.unwrap();
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, secret_text(&certs, "ca.crt")).unwrap();
    let good = kubeadm_discovery(&ground, &endpoint, &ca_hash(&ca));
    check(good, "kubeadm discovery with the right CA hash");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bad = kubeadm_discovery(&ground, &endpoint, &wrong);
    assert!(
        !bad.status.success(),
        "kubeadm discovery must fail with a wrong CA hash"
    );
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("none of the public keys"),
        "unexpected kubeadm error: {said}"
    );

    // The tenant's data lives in the managed etcd under its own prefix.
    let mut etcd = etcd_root(&client, etcd_ns, datastore).await;
    let prefix = format!("/orrery/{ns}/live/");
    let keys = etcd
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert!(
        keys.count() > 10,
        "the tenant apiserver stores under {prefix}"
    );
    let ns_key = format!("/orrery/{ns}/live/namespaces/hello");
    assert_eq!(etcd.get(ns_key, None).await.unwrap().count(), 1);

    // Each add-on switched off is gone from the tenant after one reconcile, and comes back when
    // switched on again.
    for (field, kind, name) in [
        ("coreDNS", "deployment", "coredns"),
        ("kubeProxy", "daemonset", "kube-proxy"),
        ("konnectivity", "daemonset", "konnectivity-agent"),
    ] {
        for enabled in [false, true] {
            let patch = json!({"spec": {"addons": {field: {"enabled": enabled}}}});
            tcps.patch("live", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            eventually(
                &format!("{kind} {name} present={enabled} in the tenant"),
                Duration::from_secs(60),
                || async {
                    let out = tenant_kubectl(
                        &ground,
                        &kubeconfig,
                        &["get", "-n", "kube-system", kind, name],
                    );
                    let present = out.status.success();
                    let gone = String::from_utf8_lossy(&out.stderr).contains("NotFound");
                    ((enabled && present) || (!enabled && gone)).then_some(())
                },
            )
            .await
            .unwrap();
        }
    }

    sleep_and_wake(&ground, &tcps, &ns, &kubeconfig, &endpoint).await;

    // Delete: the tenant's keys go, the DataStore stays.
    tcps.delete("live", &DeleteParams::default()).await.unwrap();
    eventually("tenant deleted", Duration::from_secs(120), || async {
        tcps.get_opt("live").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    let left = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 0);

    ground.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    for round in 0..3 {
        delete_while_writing(&ground, &client, &mut etcd, datastore, round).await;
    }
    datastores
        .delete(datastore, &DeleteParams::default())
        .await
        .unwrap();
    eventually("DataStore deleted", Duration::from_secs(60), || async {
        datastores
            .get_opt(datastore)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    release.uninstall();
    ground.kubectl(&["delete", "namespace", etcd_ns, "--wait=false"]);
}

/// Prints the resident memory of the tenant's control-plane pod, from its memory cgroup
/// (information for the benchmark figures; nothing is asserted).
/// Puts tenant `live` to sleep and wakes it: its control-plane pods go (phase Sleeping, Ready
/// False for that reason), then come back with the object written before the sleep, at the same
/// endpoint. Prints how long each took.
async fn sleep_and_wake(
    ground: &Ground,
    tcps: &Api<TenantControlPlane>,
    ns: &str,
    kubeconfig: &Path,
    endpoint: &str,
) {
    check(
        tenant_kubectl(
            ground,
            kubeconfig,
            &[
                "create",
                "configmap",
                "before-sleep",
                "-n",
                "hello",
                "--from-literal=k=v",
            ],
        ),
        "write an object before the sleep",
    );
    let control_plane_pods = || control_plane_pods(ground, ns, "name");
    let patch = |sleep: bool| json!({"spec": {"sleep": sleep}});
    let start = Instant::now();
    tcps.patch("live", &PatchParams::default(), &Patch::Merge(&patch(true)))
        .await
        .unwrap();
    eventually("the tenant asleep", Duration::from_secs(120), || async {
        let status = tcps.get("live").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (status.phase.as_deref() == Some("Sleeping")
            && ready.status == "False"
            && ready.reason == "Sleeping"
            && control_plane_pods().trim().is_empty())
        .then_some(())
    })
    .await
    .unwrap();
    let slept = start.elapsed();
    assert!(
        !tenant_kubectl(ground, kubeconfig, &["get", "--raw", "/readyz"])
            .status
            .success(),
        "a sleeping tenant's apiserver answers"
    );

    let start = Instant::now();
    tcps.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(&patch(false)),
    )
    .await
    .unwrap();
    let kept = eventually(
        "the woken tenant's API",
        Duration::from_secs(180),
        || async {
            let out = tenant_kubectl(
                ground,
                kubeconfig,
                &[
                    "get",
                    "configmap",
                    "before-sleep",
                    "-n",
                    "hello",
                    "-o",
                    "jsonpath={.data.k}",
                ],
            );
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await
    .unwrap();
    let answered = start.elapsed();
    assert_eq!(kept, "v", "the object written before the sleep");
    eventually(
        "the woken tenant Ready",
        Duration::from_secs(120),
        || async {
            let status = tcps.get("live").await.ok()?.status?;
            (status.phase.as_deref() == Some("Ready")).then_some(status.endpoint)
        },
    )
    .await
    .map(|e| assert_eq!(e.as_deref(), Some(endpoint), "the same endpoint"))
    .unwrap();
    println!(
        "live tenant: sleep → no control-plane pod {:.1} s; wake → tenant API answers {:.1} s, \
         Ready {:.1} s",
        slept.as_secs_f64(),
        answered.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

/// Tenant `live`'s control-plane pods in `ns`, printed as kubectl's `-o` `output` says.
fn control_plane_pods(ground: &Ground, ns: &str, output: &str) -> String {
    ground.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "orrery.dev/tenant=live",
        "-o",
        output,
    ])
}

fn print_memory(ground: &Ground, ns: &str) {
    std::thread::sleep(Duration::from_secs(10));
    let uid = control_plane_pods(ground, ns, "jsonpath={.items[0].metadata.uid}");
    let find = Command::new("find")
        .args([
            "/sys/fs/cgroup/memory",
            "-maxdepth",
            "8",
            "-type",
            "d",
            "-name",
        ])
        .arg(format!("pod{}", uid.trim()))
        .output()
        .unwrap();
    let Some(dir) = String::from_utf8_lossy(&find.stdout)
        .lines()
        .next()
        .map(PathBuf::from)
    else {
        println!("live tenant: no memory cgroup found for pod {uid}");
        return;
    };
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0) as f64
            / 1048576.0
    };
    println!(
        "live tenant: idle control-plane pod memory: rss {:.0} MiB, rss+cache {:.0} MiB",
        field("total_rss "),
        field("total_rss ") + field("total_cache ")
    );
}

/// Creates a live tenant, keeps its apiserver writing, deletes the tenant, and checks that not
/// one key is left under its prefix: access is revoked before the keys go.
async fn delete_while_writing(
    ground: &Ground,
    client: &kube::Client,
    etcd: &mut EtcdClient,
    datastore: &str,
    round: usize,
) {
    let ns = restricted_namespace(ground, "live-del");
    apply_json(
        ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "w", "namespace": ns},
            "spec": {"version": "v1.34.4", "replicas": 1, "dataStore": datastore,
                     "addons": {"coreDNS": {"enabled": false}, "kubeProxy": {"enabled": false},
                                "konnectivity": {"enabled": false}},
                     "controlPlane": {"scheduling": live_scheduling()}}
        }),
    );
    wait_tenant_ready(ground, &ns, "w");
    let admin = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("w-admin-kubeconfig")
        .await
        .unwrap();
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&secret_text(&admin, "kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let tenant = kube::Client::try_from(config).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(tenant, "default");
            let mut written = 0usize;
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let cm =
                    serde_json::from_value(json!({"metadata": {"name": format!("w{i}")}})).unwrap();
                match cms.create(&Default::default(), &cm).await {
                    Ok(_) => written += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            written
        })
    };
    let prefix = format!("/orrery/{ns}/w/");
    eventually(
        "the tenant apiserver writes",
        Duration::from_secs(30),
        || async {
            let n = etcd
                .clone()
                .get(
                    format!("{prefix}configmaps/default/"),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .ok()?
                .count();
            (n > 5).then_some(())
        },
    )
    .await
    .unwrap();
    let tcps = Api::<TenantControlPlane>::namespaced(client.clone(), &ns);
    tcps.delete("w", &DeleteParams::default()).await.unwrap();
    eventually(
        "writer tenant deleted",
        Duration::from_secs(120),
        || async { tcps.get_opt("w").await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap();
    // The apiserver may still run (its pods go with the garbage collector): give it time to try.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let left = etcd
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    println!(
        "live tenant deletion round {round}: {written} objects written while deleting, {left} keys left"
    );
    assert_eq!(
        left, 0,
        "keys left under {prefix} after deleting a tenant that was writing"
    );
    ground.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
