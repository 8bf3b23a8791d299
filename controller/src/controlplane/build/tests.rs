use super::*;
use crate::api::TenantControlPlaneSpec;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

fn tcp(yaml: &str) -> TenantControlPlane {
    let spec: TenantControlPlaneSpec = serde_yaml_ng::from_str(yaml).unwrap();
    let mut tcp = TenantControlPlane::new("t1", spec);
    tcp.metadata.namespace = Some("ns1".into());
    tcp.metadata.uid = Some("uid-1".into());
    tcp
}

fn inputs(tcp: &TenantControlPlane) -> DeploymentInputs {
    DeploymentInputs {
        images: images(tcp, &Settings::default()),
        datastore_endpoints: vec!["https://etcd-0:2379".into(), "https://etcd-1:2379".into()],
        etcd_prefix: "/orrery/ns1/t1".into(),
        advertise_address: Some("10.96.0.20".into()),
        config_hashes: BTreeMap::from([("t1-certs".to_string(), "abc".to_string())]),
    }
}

fn container<'a>(d: &'a Deployment, name: &str) -> &'a Container {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
}

#[test]
fn default_tenant_has_four_containers_wired_through_konnectivity() {
    let t = tcp("version: v1.34.4");
    let d = deployment(&t, &inputs(&t));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let ru = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_surge, Some(IntOrString::String("100%".into())));
    let names: Vec<_> = spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "konnectivity-server"
        ]
    );
    let api = container(&d, "kube-apiserver");
    let args = api.args.as_ref().unwrap();
    assert!(args.contains(&"--egress-selector-config-file=/etc/kubernetes/config/egress-selector-configuration.yaml".into()));
    assert!(args.contains(&"--etcd-servers=https://etcd-0:2379,https://etcd-1:2379".into()));
    assert!(args.contains(&"--etcd-prefix=/orrery/ns1/t1".into()));
    assert!(args.contains(&"--advertise-address=10.96.0.20".into()));
    assert_eq!(
        api.image.as_deref(),
        Some("registry.k8s.io/kube-apiserver:v1.34.4")
    );
    let kcm = container(&d, "kube-controller-manager")
        .args
        .as_ref()
        .unwrap();
    assert!(kcm.contains(&"--controllers=*,bootstrapsigner,tokencleaner".into()));
    assert!(kcm.contains(&"--cluster-signing-key-file=/etc/kubernetes/pki/ca.key".into()));
    let konn = container(&d, "konnectivity-server").args.as_ref().unwrap();
    assert!(konn.contains(&"--uds-name=/run/konnectivity/konnectivity-server.socket".into()));
    assert!(konn.contains(&"--authentication-audience=system:konnectivity-server".into()));
    let egress: Value = serde_yaml_ng::from_str(&egress_selector_configuration()).unwrap();
    assert_eq!(
        egress["egressSelections"][0]["connection"]["transport"]["uds"]["udsName"],
        "/run/konnectivity/konnectivity-server.socket"
    );
    // A replica going away drains before it stops, within its grace period.
    let drain = api
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds);
    assert_eq!(drain, Some(super::apiserver::DRAIN_SECONDS));
    let pod = spec.template.spec.as_ref().unwrap();
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(grace > super::apiserver::DRAIN_SECONDS + 10, "{grace}");
    // Probes.
    assert_eq!(
        api.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        api.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/livez")
    );
    let sched = container(&d, "kube-scheduler");
    assert_eq!(
        sched
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    // The hash of each mounted object is in the template.
    let ann = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(
        ann.get("checksum.orrery.dev/t1-certs").map(String::as_str),
        Some("abc")
    );
}

#[test]
fn pods_meet_restricted_and_carry_no_management_credentials() {
    let t = tcp("version: v1.34.4");
    let d = deployment(&t, &inputs(&t));
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    for c in &pod.containers {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }
    // Only kube-controller-manager sees the CA key.
    let vols = pod.volumes.unwrap();
    let with_ca_key: Vec<_> = vols
        .iter()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources.as_ref().unwrap().iter().any(|s| {
                    s.secret.as_ref().is_some_and(|s| {
                        s.items.as_ref().unwrap().iter().any(|i| i.path == "ca.key")
                    })
                })
            })
        })
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(with_ca_key, ["controller-manager-pki"]);
}

#[test]
fn konnectivity_off_removes_sidecar_port_and_egress() {
    let t = tcp("version: v1.34.4\naddons:\n  konnectivity:\n    enabled: false\n");
    let d = deployment(&t, &inputs(&t));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 3);
    assert!(
        !container(&d, "kube-apiserver")
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a.contains("egress"))
    );
    assert_eq!(service(&t).spec.unwrap().ports.unwrap().len(), 1);
}

#[test]
fn spec_settings_reach_the_objects() {
    let t = tcp(
        "version: v1.35.2\nreplicas: 3\nnetwork:\n  serviceType: LoadBalancer\n  port: 443\ncontrolPlane:\n  apiServer:\n    image: my/apiserver:1\n    extraArgs:\n      v: \"4\"\n      authorization-mode: RBAC\n  scheduling:\n    nodeSelector:\n      pool: cp\n",
    );
    let d = deployment(&t, &inputs(&t));
    let api = container(&d, "kube-apiserver");
    assert_eq!(api.image.as_deref(), Some("my/apiserver:1"));
    let args = api.args.as_ref().unwrap();
    assert!(args.contains(&"--v=4".into()));
    assert!(
        args.contains(&"--authorization-mode=RBAC".into()),
        "extraArgs override"
    );
    assert!(!args.contains(&"--authorization-mode=Node,RBAC".into()));
    assert!(args.contains(&"--secure-port=443".into()));
    assert_eq!(
        container(&d, "kube-scheduler").image.as_deref(),
        Some("registry.k8s.io/kube-scheduler:v1.35.2")
    );
    assert_eq!(
        container(&d, "konnectivity-server").image.as_deref(),
        Some("registry.k8s.io/kas-network-proxy/proxy-server:v0.34.0")
    );
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "cp");
    let svc = service(&t).spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(svc.ports.unwrap()[0].port, 443);
    let pdb = pod_disruption_budget(&t).spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn children_are_labelled_and_owned() {
    let t = tcp("version: v1.34.4");
    for m in [
        service(&t).metadata,
        config_map(&t).metadata,
        pod_disruption_budget(&t).metadata,
    ] {
        assert_eq!(m.labels.as_ref().unwrap()[TENANT_LABEL], "t1");
        assert_eq!(m.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        assert_eq!(
            m.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
    }
}

/// The egress selector configuration, read back from the ConfigMap the apiserver mounts.
#[test]
fn egress_configuration_sends_cluster_traffic_over_the_socket() {
    let cm = config_map(&tcp("version: v1.34.4"));
    let data = cm.data.unwrap();
    let doc: Value = serde_yaml_ng::from_str(&data["egress-selector-configuration.yaml"]).unwrap();
    for (pointer, want) in [
        ("/apiVersion", json!("apiserver.k8s.io/v1beta1")),
        ("/kind", json!("EgressSelectorConfiguration")),
        ("/egressSelections/0/name", json!("cluster")),
        (
            "/egressSelections/0/connection/proxyProtocol",
            json!("GRPC"),
        ),
        (
            "/egressSelections/0/connection/transport/uds/udsName",
            json!(UDS_PATH),
        ),
    ] {
        assert_eq!(doc.pointer(pointer), Some(&want), "{pointer}");
    }
    assert_eq!(doc["egressSelections"].as_array().unwrap().len(), 1);
}

#[test]
fn a_sleeping_tenant_keeps_its_deployment_with_no_pods() {
    let asleep = tcp("version: v1.34.4\nreplicas: 3\nsleep: true\n");
    let d = deployment(&asleep, &inputs(&asleep));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(0));
    // Everything else is the awake tenant's: waking rolls nothing.
    let mut awake = asleep.clone();
    awake.spec.sleep = false;
    let mut woken = deployment(&awake, &inputs(&awake));
    assert_eq!(woken.spec.as_ref().unwrap().replicas, Some(3));
    woken.spec.as_mut().unwrap().replicas = Some(0);
    assert_eq!(woken, d);
}
