//! The test ground itself: proves that the management cluster `e2e/ground up` starts behaves as a
//! real one (controllers, scheduler, garbage collector, CEL validation, server-side apply,
//! subresources) and that `up`/`down` leave nothing behind.
//!
//! Runs against the running default ground (`e2e/ground up`); every test fails, never skips,
//! when the ground is down.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use orrery_e2e::{
    Ground, create_namespace, delete_namespace, eventually, ground_command, process_running,
    processes_mentioning, unique_name,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn ground() -> Ground {
    let ground = Ground::get().expect("the test ground is set up");
    ground.ensure_running().expect("the test ground runs");
    ground
}

/// Runs `body` in a fresh namespace and deletes the namespace afterwards, also on failure.
async fn in_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let client = ground().client().await.expect("a client for the ground");
    let ns = create_namespace(&client, prefix)
        .await
        .expect("a test namespace");
    let result = body(client.clone(), ns.clone()).await;
    delete_namespace(&client, &ns)
        .await
        .expect("namespace deleted");
    result.unwrap();
}

fn api_error(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

#[tokio::test]
async fn deployment_becomes_available_on_kwok_nodes() {
    in_namespace("deploy", |client, ns| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    // kwok pretends to run the pod; the image is never pulled.
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/orrery/web:1"}]}
                }
            }
        }))?;
        deployments.create(&PostParams::default(), &deployment).await?;

        eventually("deployment web Available with 2 replicas", TIMEOUT, || async {
            let d = deployments.get("web").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.available_replicas == Some(2)).then_some(())
        })
        .await?;

        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let pods = pods.list(&ListParams::default().labels("app=web")).await?;
        ensure!(pods.items.len() == 2, "expected 2 pods, found {}", pods.items.len());
        for pod in pods.items {
            let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
            ensure!(node.starts_with("kwok-node-"), "pod scheduled to {node:?}, not a kwok node");
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            ensure!(phase == "Running", "pod on {node} is {phase}, not Running");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_child() {
    in_namespace("gc", |client, ns| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
        let owner = maps.create(&PostParams::default(), &owner).await?;
        let uid = owner.metadata.uid.context("owner has a uid")?;
        let child: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": "child",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]
            }
        }))?;
        maps.create(&PostParams::default(), &child).await?;
        let bystander: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "bystander"}}))?;
        maps.create(&PostParams::default(), &bystander).await?;

        maps.delete("owner", &DeleteParams::default()).await?;
        eventually("child garbage-collected", TIMEOUT, || async {
            match maps.get("child").await {
                Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
                _ => None,
            }
        })
        .await?;
        maps.get("bystander").await.context("an object without owner survives")?;
        Ok(())
    })
    .await;
}

/// A CRD in a group of its own (CRDs are cluster-wide and the tests run in parallel), deleted
/// again when dropped.
struct TestCrd {
    client: kube::Client,
    name: String,
    resource: ApiResource,
}

impl TestCrd {
    async fn create(client: &kube::Client, prefix: &str) -> Result<Self> {
        let group = format!("{}.groundtest.orrery.dev", unique_name(prefix));
        let name = format!("widgets.{group}");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                "versions": [{
                    "name": "v1",
                    "served": true,
                    "storage": true,
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}
                    },
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer", "format": "int32"},
                                    "minReplicas": {"type": "integer", "format": "int32"},
                                    "color": {"type": "string"}
                                },
                                "x-kubernetes-validations": [{
                                    "rule": "!has(self.minReplicas) || !has(self.replicas) || self.minReplicas <= self.replicas",
                                    "message": "minReplicas must not exceed replicas"
                                }]
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer", "format": "int32"},
                                    "phase": {"type": "string"}
                                }
                            }
                        }
                    }}
                }]
            }
        }))?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &crd).await?;
        let created = Self {
            client: client.clone(),
            name: name.clone(),
            resource: ApiResource {
                group: group.clone(),
                version: "v1".into(),
                api_version: format!("{group}/v1"),
                kind: "Widget".into(),
                plural: "widgets".into(),
            },
        };
        eventually("CRD Established", TIMEOUT, || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await?;
        Ok(created)
    }

    fn api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.resource)
    }

    fn widget(&self, name: &str, spec: serde_json::Value) -> Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": self.resource.api_version,
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec
        }))?)
    }

    /// Creates a widget. Right after a CRD becomes Established its endpoint may still answer
    /// 404 for a moment, so that is retried.
    async fn create_widget(
        &self,
        ns: &str,
        widget: &DynamicObject,
    ) -> Result<DynamicObject, kube::Error> {
        let api = self.api(ns);
        let start = Instant::now();
        loop {
            match api.create(&PostParams::default(), widget).await {
                Err(kube::Error::Api(s)) if s.code == 404 && start.elapsed() < TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => return other,
            }
        }
    }

    async fn delete(self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client);
        crds.delete(&self.name, &DeleteParams::default())
            .await
            .expect("CRD deleted");
    }
}

#[tokio::test]
async fn crd_cel_validation_rejects_a_bad_object_with_its_message() {
    in_namespace("cel", |client, ns| async move {
        let crd = TestCrd::create(&client, "cel").await?;
        let result = async {
            let good = crd.widget("good", json!({"replicas": 3, "minReplicas": 1}))?;
            crd.create_widget(&ns, &good)
                .await
                .context("a valid widget is accepted")?;

            let bad = crd.widget("bad", json!({"replicas": 1, "minReplicas": 2}))?;
            let err = match crd.create_widget(&ns, &bad).await {
                Ok(_) => bail!("a widget with minReplicas > replicas was accepted"),
                Err(err) => err,
            };
            let status =
                api_error(&err).with_context(|| format!("expected an API error, got {err}"))?;
            ensure!(status.code == 422, "expected 422 Invalid, got {status:?}");
            ensure!(
                status
                    .message
                    .contains("minReplicas must not exceed replicas"),
                "the error does not carry the rule's message: {}",
                status.message
            );
            // The same rule guards updates.
            let patch = json!({"spec": {"minReplicas": 9}});
            let err = crd
                .api(&ns)
                .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect_err("an invalid update is rejected");
            ensure!(
                api_error(&err)
                    .is_some_and(|s| s.message.contains("minReplicas must not exceed replicas"))
            );
            Ok(())
        }
        .await;
        crd.delete().await;
        result
    })
    .await;
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_detects_conflicts() {
    in_namespace("ssa", |client, ns| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let config = |value: &str| {
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"color": value}
            })
        };

        let created = maps
            .patch(
                "settings",
                &PatchParams::apply("ground-a"),
                &Patch::Apply(config("blue")),
            )
            .await
            .context("apply creates")?;
        let first_version = created.metadata.resource_version.clone();
        ensure!(
            created
                .data
                .as_ref()
                .and_then(|d| d.get("color"))
                .map(String::as_str)
                == Some("blue")
        );

        let again = maps
            .patch(
                "settings",
                &PatchParams::apply("ground-a"),
                &Patch::Apply(config("blue")),
            )
            .await?;
        ensure!(
            again.metadata.resource_version == first_version,
            "re-applying the same object changed resourceVersion {first_version:?} -> {:?}",
            again.metadata.resource_version
        );

        let err = maps
            .patch(
                "settings",
                &PatchParams::apply("ground-b"),
                &Patch::Apply(config("red")),
            )
            .await
            .expect_err("another manager may not take an owned field unforced");
        let status =
            api_error(&err).with_context(|| format!("expected an API error, got {err}"))?;
        ensure!(status.code == 409, "expected 409 Conflict, got {status:?}");
        ensure!(
            status.message.contains("ground-a"),
            "the conflict names the owner: {}",
            status.message
        );

        let forced = maps
            .patch(
                "settings",
                &PatchParams::apply("ground-b").force(),
                &Patch::Apply(config("red")),
            )
            .await
            .context("a forced apply takes the field")?;
        ensure!(
            forced
                .data
                .as_ref()
                .and_then(|d| d.get("color"))
                .map(String::as_str)
                == Some("red")
        );
        let owners: Vec<String> = forced
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("f:color"))
            })
            .filter_map(|m| m.manager)
            .collect();
        ensure!(
            owners == ["ground-b"],
            "f:color should be owned by ground-b alone, owners: {owners:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn crd_status_and_scale_subresources() {
    in_namespace("subres", |client, ns| async move {
        let crd = TestCrd::create(&client, "subres").await?;
        let result = async {
            let api = crd.api(&ns);
            let widget = crd.widget("w", json!({"replicas": 1, "color": "green"}))?;
            crd.create_widget(&ns, &widget).await?;

            // With a status subresource, status is written only through /status ...
            let status = json!({"status": {"replicas": 1, "phase": "Running"}});
            let patched = api
                .patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            ensure!(
                patched.data["status"]["phase"] == "Running",
                "status not patched: {:?}",
                patched.data
            );
            ensure!(patched.data["spec"]["color"] == "green");
            // ... and ignored on the main resource.
            let sneaky = json!({"status": {"phase": "Hacked"}, "spec": {"color": "blue"}});
            let patched = api
                .patch("w", &PatchParams::default(), &Patch::Merge(&sneaky))
                .await?;
            ensure!(
                patched.data["status"]["phase"] == "Running",
                "main resource wrote status: {:?}",
                patched.data
            );
            ensure!(patched.data["spec"]["color"] == "blue");

            let scale = api.get_scale("w").await?;
            ensure!(
                scale.spec.and_then(|s| s.replicas) == Some(1),
                "scale reads spec.replicas"
            );
            ensure!(
                scale.status.map(|s| s.replicas) == Some(1),
                "scale reads status.replicas"
            );

            let scaled = api
                .patch_scale(
                    "w",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"replicas": 5}})),
                )
                .await?;
            ensure!(scaled.spec.and_then(|s| s.replicas) == Some(5));
            let widget = api.get("w").await?;
            ensure!(
                widget.data["spec"]["replicas"] == 5,
                "scale did not reach spec.replicas: {:?}",
                widget.data
            );
            ensure!(
                widget.data["spec"]["color"] == "blue",
                "scale touched other fields: {:?}",
                widget.data
            );
            Ok(())
        }
        .await;
        crd.delete().await;
        result
    })
    .await;
}

#[test]
fn kubectl_lists_the_kwok_nodes_ready() {
    let ground = ground();
    let table = ground.kubectl(&[
        "get",
        "nodes",
        "-l",
        "orrery.dev/ground-node=kwok",
        "--no-headers",
    ]);
    let nodes: BTreeMap<&str, &str> = table
        .lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            Some((columns.next()?, columns.next()?))
        })
        .collect();
    assert!(!nodes.is_empty(), "no kwok nodes:\n{table}");
    for (i, (name, status)) in nodes.iter().enumerate() {
        assert!(
            nodes.contains_key(format!("kwok-node-{i}").as_str()),
            "kwok nodes are not kwok-node-0..: {nodes:?}"
        );
        assert_eq!(*status, "Ready", "{name} is not Ready:\n{table}");
    }
    let untainted = ground.kubectl(&[
        "get",
        "nodes",
        "-l",
        "type=kwok",
        "-o",
        "jsonpath={.items[*].spec.taints}",
    ]);
    assert!(
        untainted.trim().is_empty(),
        "kwok nodes have taints: {untainted}"
    );
}

/// Runs `e2e/ground <args>` for the second ground and returns its stderr; panics on failure.
fn second_ground(args: &[&str]) -> String {
    let out = ground_command(&SECOND)
        .args(args)
        .output()
        .expect("running e2e/ground");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "e2e/ground {} failed:\n{stderr}",
        args.join(" ")
    );
    stderr
}

const SECOND: [(&str, &str); 3] = [
    ("ORRERY_GROUND", "updown"),
    ("ORRERY_GROUND_PORT_BASE", "16540"),
    ("ORRERY_GROUND_NODES", "1"),
];

/// Purges the second ground however the test ends.
struct PurgeSecond;

impl Drop for PurgeSecond {
    fn drop(&mut self) {
        let _ = ground_command(&SECOND).args(["down", "--purge"]).output();
    }
}

#[test]
fn up_and_down_three_times_leave_no_process_behind() {
    let _purge = PurgeSecond;
    // An earlier run that was killed may have left the second ground half up.
    second_ground(&["down", "--purge"]);
    let mut state_dir = None;

    for round in 1..=3 {
        let start = Instant::now();
        second_ground(&["up"]);
        eprintln!("round {round}: up took {:?}", start.elapsed());

        let ground = Ground::with_env(&SECOND).expect("the second ground");
        let state = ground.state_dir();
        let pids = ground.recorded_pids();
        let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
                "tenant-etcd"
            ],
            "recorded components"
        );
        for (name, pid) in &pids {
            assert!(
                process_running(*pid),
                "{name} (pid {pid}) does not run after up"
            );
        }
        let nodes = ground.kubectl(&["get", "nodes", "--no-headers"]);
        assert!(
            nodes.starts_with("kwok-node-0 ") && nodes.contains(" Ready "),
            "second ground's nodes: {nodes}"
        );
        assert_eq!(
            nodes.lines().count(),
            1,
            "the second ground has exactly one node: {nodes}"
        );
        // It runs beside the default ground, which still answers.
        self::ground().kubectl(&["get", "--raw", "/readyz"]);

        if round == 1 {
            // up on a running ground starts nothing and returns quickly.
            let start = Instant::now();
            second_ground(&["up"]);
            let again = start.elapsed();
            assert_eq!(
                ground.recorded_pids(),
                pids,
                "a second up replaced running components"
            );
            assert!(
                again < Duration::from_secs(20),
                "up on a running ground took {again:?}"
            );
            eprintln!("round {round}: up on the running ground took {again:?}");
        }

        second_ground(&["down"]);
        for (name, pid) in &pids {
            assert!(
                !process_running(*pid),
                "{name} (pid {pid}) still runs after down"
            );
        }
        assert!(ground.recorded_pids().is_empty(), "down left PID files");
        let needle = format!("{}/", state.display());
        let left = processes_mentioning(&needle);
        assert!(
            left.is_empty(),
            "processes of the second ground survived down: {left:?}"
        );
        state_dir = Some(state);
    }

    second_ground(&["down", "--purge"]);
    let state = state_dir.expect("three rounds ran");
    assert!(
        !Path::new(&state).exists(),
        "down --purge left {}",
        state.display()
    );
}
