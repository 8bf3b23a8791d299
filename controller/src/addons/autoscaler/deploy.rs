//! A tenant's cluster-autoscaler (pure): the Secret with its cloud-config and client key pair,
//! and the Deployment of the upstream image, in the tenant's namespace of the management
//! cluster. The autoscaler works on the tenant's Nodes as its own tenant user (the add-on
//! kubeconfig `cluster-autoscaler.conf`, never the admin's) and on its node groups through
//! Orrery's API; it holds no management credentials.

use super::authority::CA_CRT;
use crate::api::{SecretRef, TenantControlPlane};
use crate::apply::{TENANT_LABEL, child_labels, owner_reference};
use crate::pki::{KeyPairPem, TLS_CRT, TLS_KEY};
use crate::podspec::{restricted_container, restricted_pod};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use serde_json::json;
use std::collections::BTreeMap;

/// The component label of the autoscaler's objects.
pub const COMPONENT: &str = "cluster-autoscaler";
/// The key of the cloud-config in the Secret.
pub const CLOUD_CONFIG: &str = "cloud-config";
/// Where the Secret is mounted in the pod.
pub const CONFIG_DIR: &str = "/etc/orrery/cluster-autoscaler";
/// Where its tenant kubeconfig is mounted.
pub const KUBECONFIG_DIR: &str = "/etc/orrery/tenant";
/// The port of the autoscaler's metrics and health check.
const HEALTH_PORT: i32 = 8085;
/// The upstream release for each tenant minor: the autoscaler's minor follows Kubernetes'. A
/// test checks that every supported minor has one.
pub const RELEASES: [(u32, &str); 4] = [
    (34, "v1.34.5"),
    (35, "v1.35.1"),
    (36, "v1.36.1"),
    (37, "v1.37.0"),
];

/// Name of the tenant's autoscaler Secret and Deployment.
pub fn name(tcp: &TenantControlPlane) -> String {
    format!("{}-cluster-autoscaler", tcp.name_any())
}

/// The upstream image for a tenant running `version` (vMAJOR.MINOR.PATCH), from `registry`.
pub fn default_image(registry: &str, version: &str) -> String {
    let release = crate::api::release_for(&RELEASES, version);
    format!("{registry}/autoscaling/cluster-autoscaler:{release}")
}

/// The externalgrpc cloud-config: the API's address and the mounted key pair and CA.
pub fn cloud_config(address: &str) -> String {
    format!(
        "address: \"{address}\"\nkey: {CONFIG_DIR}/{TLS_KEY}\ncert: {CONFIG_DIR}/{TLS_CRT}\ncacert: {CONFIG_DIR}/{CA_CRT}\n"
    )
}

/// What a tenant's autoscaler is built from.
pub struct Inputs<'a> {
    pub tcp: &'a TenantControlPlane,
    /// `host:port` of the API.
    pub address: &'a str,
    /// The tenant's client key pair.
    pub client: &'a KeyPairPem,
    /// The API's CA certificate.
    pub ca_cert: &'a str,
    pub image: &'a str,
    /// Its tenant kubeconfig: Secret and key.
    pub kubeconfig: &'a SecretRef,
    /// Hash of the kubeconfig's content: a renewed one restarts the autoscaler.
    pub kubeconfig_hash: &'a str,
}

fn meta(tcp: &TenantControlPlane) -> ObjectMeta {
    ObjectMeta {
        name: Some(name(tcp)),
        namespace: tcp.namespace(),
        labels: Some(child_labels(TENANT_LABEL, &tcp.name_any(), COMPONENT)),
        // Owned (it goes with the tenant) but not as its controller: the tenant's own
        // reconcile prunes the children it controls, and these are not among them.
        owner_references: Some(vec![OwnerReference {
            controller: None,
            block_owner_deletion: None,
            ..owner_reference(tcp)
        }]),
        ..Default::default()
    }
}

/// The Secret the autoscaler mounts.
pub fn secret(i: &Inputs) -> Secret {
    let data = [
        (CLOUD_CONFIG, cloud_config(i.address)),
        (TLS_CRT, i.client.cert.clone()),
        (TLS_KEY, i.client.key.clone()),
        (CA_CRT, i.ca_cert.to_string()),
    ];
    Secret {
        metadata: meta(i.tcp),
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The autoscaler's Deployment: one pod (Recreate, so two never act at once) of the upstream
/// image with the externalgrpc provider, Pod Security `restricted`, scheduled like the tenant's
/// control plane. The pod template carries the hash of what it mounts, so a change restarts it.
pub fn deployment(i: &Inputs) -> Deployment {
    let tcp = i.tcp;
    let selector = BTreeMap::from([
        (TENANT_LABEL.to_string(), tcp.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT.to_string(),
        ),
    ]);
    let labels = child_labels(TENANT_LABEL, &tcp.name_any(), COMPONENT);
    let config_hash = crate::hash::of_map(&secret_text(i));
    let sched = &tcp.spec.control_plane.scheduling;
    let spec = json!({
        "replicas": 1,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {
                    "checksum.orrery.dev/cloud-config": config_hash,
                    "checksum.orrery.dev/kubeconfig": i.kubeconfig_hash,
                },
            },
            "spec": {
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": restricted_pod(),
                "nodeSelector": sched.node_selector,
                "tolerations": sched.tolerations,
                "priorityClassName": sched.priority_class_name,
                "containers": [container(i.image)],
                "volumes": [
                    {"name": "config", "secret": {"secretName": name(tcp), "defaultMode": 0o440}},
                    {"name": "kubeconfig", "secret": {
                        "secretName": i.kubeconfig.name,
                        "defaultMode": 0o440,
                        "items": [{"key": i.kubeconfig.key, "path": "kubeconfig"}],
                    }},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                ],
            },
        },
    });
    Deployment {
        metadata: meta(tcp),
        spec: Some(serde_json::from_value(spec).expect("a valid DeploymentSpec")),
        ..Default::default()
    }
}

fn container(image: &str) -> serde_json::Value {
    json!({
        "name": COMPONENT,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        // The image's entry point is its CMD, which `args` alone would replace.
        "command": ["/cluster-autoscaler"],
        "args": [
            "--cloud-provider=externalgrpc",
            format!("--cloud-config={CONFIG_DIR}/{CLOUD_CONFIG}"),
            format!("--kubeconfig={KUBECONFIG_DIR}/kubeconfig"),
            "--namespace=kube-system",
            format!("--address=:{HEALTH_PORT}"),
        ],
        "ports": [{"name": "http", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/health-check", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": restricted_container(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": "kubeconfig", "mountPath": KUBECONFIG_DIR, "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    })
}

/// The Secret's content as text, for its hash.
fn secret_text(i: &Inputs) -> BTreeMap<String, String> {
    secret(i)
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> TenantControlPlane {
        let mut t: TenantControlPlane = serde_json::from_value(json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "demo", "namespace": "tenants", "uid": "u-1"},
            "spec": {"version": "v1.34.4", "controlPlane": {"scheduling": {
                "nodeSelector": {"pool": "cp"},
                "tolerations": [{"key": "cp", "operator": "Exists"}]
            }}}
        }))
        .unwrap();
        t.metadata.namespace = Some("tenants".into());
        t
    }

    fn built(pair: &KeyPairPem, kubeconfig_hash: &str) -> (Secret, Deployment) {
        let tcp = tcp();
        let kubeconfig = SecretRef {
            name: "demo-admin-kubeconfig".into(),
            key: "kubeconfig".into(),
        };
        let i = Inputs {
            tcp: &tcp,
            address: "orrery-autoscaler.orrery-system.svc:8443",
            client: pair,
            ca_cert: "CA",
            image: "registry.k8s.io/autoscaling/cluster-autoscaler:v1.34.5",
            kubeconfig: &kubeconfig,
            kubeconfig_hash,
        };
        (secret(&i), deployment(&i))
    }

    fn pair(cert: &str) -> KeyPairPem {
        KeyPairPem {
            cert: cert.into(),
            key: "KEY".into(),
        }
    }

    #[test]
    fn the_image_follows_the_tenant_minor() {
        for (version, expected) in [
            ("v1.34.4", "v1.34.5"),
            ("v1.35.0", "v1.35.1"),
            ("v1.36.3", "v1.36.1"),
            ("v1.37.2", "v1.37.0"),
            ("v1.99.0", "v1.37.0"),
        ] {
            let expected = format!("r.example/autoscaling/cluster-autoscaler:{expected}");
            assert_eq!(default_image("r.example", version), expected, "{version}");
        }
    }

    #[test]
    fn the_secret_holds_the_cloud_config_and_key_pair() {
        let (secret, _) = built(&pair("CERT"), "k");
        let data: BTreeMap<String, String> = secret
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        assert_eq!(
            data[CLOUD_CONFIG],
            "address: \"orrery-autoscaler.orrery-system.svc:8443\"\n\
             key: /etc/orrery/cluster-autoscaler/tls.key\n\
             cert: /etc/orrery/cluster-autoscaler/tls.crt\n\
             cacert: /etc/orrery/cluster-autoscaler/ca.crt\n"
        );
        let config: serde_json::Value = serde_yaml_ng::from_str(&data[CLOUD_CONFIG]).unwrap();
        assert_eq!(
            config["address"],
            "orrery-autoscaler.orrery-system.svc:8443"
        );
        assert_eq!(
            (data["tls.crt"].as_str(), data["tls.key"].as_str()),
            ("CERT", "KEY")
        );
        assert_eq!(data["ca.crt"], "CA");
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("TenantControlPlane", "u-1")
        );
        assert_eq!(
            owner.controller, None,
            "the tenant's reconcile must not prune it"
        );
    }

    #[test]
    fn the_deployment_runs_the_externalgrpc_provider_restricted() {
        let (_, d) = built(&pair("CERT"), "k");
        let d = serde_json::to_value(&d).unwrap();
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["type"], "Recreate");
        let pod = &spec["template"]["spec"];
        for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(
                &spec["template"]["metadata"]["labels"][k], v,
                "selector {k}"
            );
        }
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["nodeSelector"]["pool"], "cp");
        assert_eq!(pod["tolerations"][0]["key"], "cp");
        let c = &pod["containers"][0];
        assert_eq!(
            c["image"],
            "registry.k8s.io/autoscaling/cluster-autoscaler:v1.34.5"
        );
        assert_eq!(c["command"], json!(["/cluster-autoscaler"]));
        assert_eq!(
            c["args"],
            json!([
                "--cloud-provider=externalgrpc",
                "--cloud-config=/etc/orrery/cluster-autoscaler/cloud-config",
                "--kubeconfig=/etc/orrery/tenant/kubeconfig",
                "--namespace=kube-system",
                "--address=:8085",
            ])
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            pod["volumes"][0]["secret"]["secretName"],
            "demo-cluster-autoscaler"
        );
        assert_eq!(
            pod["volumes"][1]["secret"]["secretName"],
            "demo-admin-kubeconfig"
        );
        assert_eq!(pod["volumes"][1]["secret"]["items"][0]["key"], "kubeconfig");
    }

    #[test]
    fn a_new_certificate_or_kubeconfig_restarts_the_pod() {
        let annotations = |(_, d): (Secret, Deployment)| {
            d.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()
        };
        let before = annotations(built(&pair("CERT"), "k"));
        assert_eq!(before, annotations(built(&pair("CERT"), "k")), "stable");
        assert_ne!(before, annotations(built(&pair("RENEWED"), "k")));
        assert_ne!(before, annotations(built(&pair("CERT"), "k2")));
    }
}
