//! Current Kubernetes for tenants, on the live tier. A tenant on each supported minor becomes
//! Ready and serves that version, with the add-on releases of its minor. Then an HA tenant (two
//! replicas) with a NodePool worker is upgraded from v1.36 to v1.37 by changing spec.version,
//! while a prober reads `/readyz` and creates an object every 100 ms: no request fails; the
//! phase says Upgrading and VersionCurrent where the roll stands; the control plane rolls first,
//! then kube-proxy and CoreDNS take the new minor's releases, then the worker is replaced by one
//! on the new version (never newer than the apiserver).
//!
//! Needs the live tier with KubeVirt (`e2e/ground up --live`); fails, never skips, without it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use orrery::api::{TenantControlPlane, minor_of, release_for};
use orrery::controlplane::build::KONNECTIVITY_RELEASES;
use orrery::tenant::COREDNS_RELEASES;
use orrery_e2e::live::{
    Release, Teardown, Tenant, apply_json, check, live_ground, live_scheduling, managed_datastore,
    poll_until, restricted_namespace, wait_tenant_ready, write_admin_kubeconfig,
};
use orrery_e2e::prober::{Credentials, Prober};
use orrery_e2e::{Ground, install_crds, unique_name, versions_env};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const FROM: &str = "v1.36.3";
const TO: &str = "v1.37.2";

fn tenant_json(
    name: &str,
    ns: &str,
    datastore: &str,
    version: &str,
    replicas: u32,
) -> serde_json::Value {
    json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": ns},
        // Workers reach their apiserver at a management Service IP: the tenant's Services get a
        // range of their own, or the worker's kube-proxy would capture those IPs.
        "spec": {"version": version, "replicas": replicas, "dataStore": datastore,
                 "network": {"serviceCIDR": "10.112.0.0/16"},
                 "controlPlane": {"scheduling": live_scheduling()}}
    })
}

async fn tenant_of(
    ground: &Ground,
    client: &kube::Client,
    ns: &str,
    name: &str,
    dir: &Path,
) -> Tenant {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{name}-admin-kubeconfig"))
        .await
        .unwrap();
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Tenant {
        ground: ground.clone(),
        kubeconfig: write_admin_kubeconfig(&secret, &dir),
    }
}

/// The image of the first container of a Deployment or DaemonSet in the tenant's kube-system.
fn addon_image(tenant: &Tenant, kind: &str, name: &str) -> String {
    tenant.kubectl(&[
        "get",
        kind,
        name,
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])
}

fn field(ground: &Ground, ns: &str, object: &str, path: &str) -> String {
    let out = ground.run(
        "kubectl",
        &["get", object, "-n", ns, "-o", &format!("jsonpath={path}")],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a failed wait shows: the tenant, its pods, the pool, its VMs, events, operator log.
fn report(ground: &Ground, ns: &str, release: &Release) -> String {
    let mut out = String::new();
    for args in [
        vec!["get", "tcp,np", "-n", ns, "-o", "yaml"],
        vec!["get", "pods,vm,vmi", "-n", ns, "-o", "wide"],
        vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
    ] {
        let o = ground.run("kubectl", &args);
        out += &format!(
            "$ kubectl {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let logs = release.logs();
    let tail: Vec<&str> = logs.lines().rev().take(80).collect();
    out + &tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Polls `done` every 500 ms until it holds; fails with the report after `timeout`.
fn wait_until(
    what: &str,
    timeout: Duration,
    report: &dyn Fn() -> String,
    done: impl FnMut() -> bool,
) -> Duration {
    poll_until(what, timeout, Duration::from_millis(500), report, done)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_minor_runs_and_an_ha_tenant_upgrades_without_a_failed_request() {
    let ground = live_ground();
    install_crds(&ground);
    let client = ground.client().await.unwrap();
    let release = Release::install(&ground, "orrery-up");
    let etcd_ns = unique_name("orrery-up-etcd");
    let datastore = unique_name("up");
    managed_datastore(&ground, &client, &datastore, &etcd_ns).await;
    let ns = restricted_namespace(&ground, "up");
    let _teardown = Teardown {
        ground: &ground,
        namespaces: [ns.clone(), etcd_ns.clone()],
    };
    let dir = std::env::temp_dir().join(unique_name("orrery-up"));
    let why = || report(&ground, &ns, &release);

    // A tenant on each supported minor, all at once.
    let versions: Vec<String> = versions_env("TENANT_KUBERNETES_VERSIONS")
        .split_whitespace()
        .map(String::from)
        .collect();
    let start = Instant::now();
    for v in &versions {
        let name = format!("minor-{}", minor_of(v).unwrap());
        apply_json(&ground, &tenant_json(&name, &ns, &datastore, v, 1));
    }
    for v in &versions {
        let name = format!("minor-{}", minor_of(v).unwrap());
        wait_tenant_ready(&ground, &ns, &name);
        let tenant = tenant_of(&ground, &client, &ns, &name, &dir).await;
        let served: serde_json::Value =
            serde_json::from_str(&tenant.kubectl(&["get", "--raw", "/version"])).unwrap();
        assert_eq!(
            served["gitVersion"],
            v.as_str(),
            "{name} serves its version"
        );
        assert_eq!(
            field(&ground, &ns, &format!("tcp/{name}"), "{.status.version}"),
            *v
        );
        assert_eq!(
            addon_image(&tenant, "deployment", "coredns"),
            format!(
                "registry.k8s.io/coredns/coredns:{}",
                release_for(&COREDNS_RELEASES, v)
            )
        );
        assert_eq!(
            addon_image(&tenant, "daemonset", "konnectivity-agent"),
            format!(
                "registry.k8s.io/kas-network-proxy/proxy-agent:{}",
                release_for(&KONNECTIVITY_RELEASES, v)
            )
        );
        assert_eq!(
            addon_image(&tenant, "daemonset", "kube-proxy"),
            format!("registry.k8s.io/kube-proxy:{v}")
        );
        println!(
            "upgrade: {name} ({v}) Ready {:.1} s after the tenants were created",
            start.elapsed().as_secs_f64()
        );
    }
    for v in &versions {
        let name = format!("tcp/minor-{}", minor_of(v).unwrap());
        ground.kubectl(&["delete", &name, "-n", &ns, "--wait=true", "--timeout=120s"]);
    }

    // The HA tenant on v1.36 and a worker of its version (VMs need a privileged namespace).
    ground.kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=privileged",
        "--overwrite",
    ]);
    apply_json(&ground, &tenant_json("ha", &ns, &datastore, FROM, 2));
    wait_tenant_ready(&ground, &ns, "ha");
    apply_json(
        &ground,
        &json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
            "metadata": {"name": "workers", "namespace": ns},
            "spec": {"controlPlaneRef": {"name": "ha"}, "replicas": 1,
                     "template": {"cores": 1, "memory": "1536Mi", "placement": live_scheduling()},
                     "nodeStartupTimeout": "8m", "drainTimeout": "2m"}
        }),
    );
    let took = wait_until("the worker Ready", Duration::from_secs(600), &why, || {
        field(&ground, &ns, "np/workers", "{.status.readyReplicas}") == "1"
    });
    println!(
        "upgrade: a {FROM} worker Ready in {:.0} s",
        took.as_secs_f64()
    );
    let tenant = tenant_of(&ground, &client, &ns, "ha", &dir).await;
    let kubelets = || {
        tenant.kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.nodeInfo.kubeletVersion}",
        ])
    };
    assert_eq!(kubelets(), FROM);

    // The prober, then the upgrade.
    let tcps = Api::<TenantControlPlane>::namespaced(client.clone(), &ns);
    let endpoint = tcps
        .get("ha")
        .await
        .unwrap()
        .status
        .unwrap()
        .endpoint
        .unwrap();
    let kubeconfig = std::fs::read_to_string(&tenant.kubeconfig).unwrap();
    let credentials = Credentials::from_kubeconfig(&kubeconfig).unwrap();
    let prober = Prober::start(
        &endpoint,
        &credentials,
        "default",
        "probe",
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    check(
        ground.run(
            "kubectl",
            &[
                "patch",
                "tcp",
                "ha",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                &json!({"spec": {"version": TO}}).to_string(),
            ],
        ),
        "set spec.version",
    );
    let (mut phases, mut reasons) = (BTreeSet::new(), BTreeSet::new());
    let control_plane = wait_until(
        "the control plane rolled",
        Duration::from_secs(300),
        &why,
        || {
            phases.insert(field(&ground, &ns, "tcp/ha", "{.status.phase}"));
            reasons.insert(field(
                &ground,
                &ns,
                "tcp/ha",
                r#"{.status.conditions[?(@.type=="VersionCurrent")].reason}"#,
            ));
            field(&ground, &ns, "tcp/ha", "{.status.version}") == TO
        },
    );
    assert!(phases.contains("Upgrading"), "phases seen: {phases:?}");
    assert!(
        reasons.contains("RollingOut"),
        "VersionCurrent reasons: {reasons:?}"
    );
    let served: serde_json::Value =
        serde_json::from_str(&tenant.kubectl(&["get", "--raw", "/version"])).unwrap();
    assert_eq!(served["gitVersion"], TO);
    // Then the add-ons: kube-proxy with the control plane, CoreDNS as kubeadm v1.37 maps it.
    let coredns = format!(
        "registry.k8s.io/coredns/coredns:{}",
        release_for(&COREDNS_RELEASES, TO)
    );
    let addons = wait_until("the add-ons moved", Duration::from_secs(300), &why, || {
        addon_image(&tenant, "daemonset", "kube-proxy")
            == format!("registry.k8s.io/kube-proxy:{TO}")
            && addon_image(&tenant, "deployment", "coredns") == coredns
    });
    // Then the worker: a new machine of the new version replaces the old one.
    let workers = wait_until("the worker rolled", Duration::from_secs(900), &why, || {
        field(&ground, &ns, "np/workers", "{.status.version}") == TO
            && field(&ground, &ns, "np/workers", "{.status.readyReplicas}") == "1"
            && kubelets() == TO
    });
    let total = start.elapsed();
    let report = prober.stop().await;
    println!(
        "upgrade: {FROM} → {TO} of an HA tenant (2 replicas): control plane rolled in {:.1} s, \
         add-ons {:.1} s later, the worker {:.0} s later; {:.0} s in all",
        control_plane.as_secs_f64(),
        addons.as_secs_f64(),
        workers.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "upgrade: prober over {:.0} s: {} requests ({} /readyz, {} writes), {} failed",
        report.elapsed.as_secs_f64(),
        report.requests(),
        report.readyz_ok,
        report.writes_ok,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "requests failed during the upgrade:\n{}",
        report.failures.join("\n")
    );
    // It really probed all along: at least one pair of requests per second.
    assert!(
        report.writes_ok as f64 >= report.elapsed.as_secs_f64(),
        "{report:?}"
    );
    assert_eq!(field(&ground, &ns, "tcp/ha", "{.status.phase}"), "Ready");
    assert_eq!(
        field(
            &ground,
            &ns,
            "tcp/ha",
            r#"{.status.conditions[?(@.type=="VersionCurrent")].reason}"#
        ),
        "AtVersion"
    );
    let events = ground.kubectl(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "reason=Upgraded",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(&format!("runs {TO} on every replica (was {FROM})")),
        "{events}"
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
    release.uninstall();
}
