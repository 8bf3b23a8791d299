//! `kubectl orrery scale np/NAME --replicas=N`: refuses what admission would refuse (the rules on
//! spec.replicas in `api/nodepool.rs`), sets spec.replicas, then watches the pool until N nodes
//! are Ready and up to date.

use super::cli::{ClientArgs, ScaleArgs};
use super::connect::{self, Management};
use super::describe::pools::{PHASES, failing, held_up, phase_name};
use super::error::{Error, Result, code, forbidden_or};
use super::wait::{self, Follow, Kind, Verdict};
use crate::api::{MachinePhase, NodePool, NodePoolSpec, NodePoolStatus};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch};

pub const POOL: Kind = Kind {
    name: "NodePool",
    resource: "nodepools",
};

/// Refuses a negative number of nodes, as the CRD's minimum does.
pub fn check_replicas(replicas: i32) -> Result<(), String> {
    if replicas < 0 {
        return Err(format!("spec.replicas must be 0 or more, not {replicas}"));
    }
    Ok(())
}

/// What setting spec.replicas to `replicas` would do.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Scale { from: i32 },
    Unchanged,
}

/// Refuses what admission refuses: a negative number, or one outside spec.autoscaling.
pub fn check(spec: &NodePoolSpec, replicas: i32) -> Result<Change, String> {
    check_replicas(replicas)?;
    if let Some(bounds) = &spec.autoscaling
        && !(bounds.min_replicas..=bounds.max_replicas).contains(&replicas)
    {
        return Err(format!(
            "{replicas} is outside spec.autoscaling ({} to {}): spec.replicas must lie between \
             spec.autoscaling.minReplicas and spec.autoscaling.maxReplicas; scale within them, or \
             change spec.autoscaling first",
            bounds.min_replicas, bounds.max_replicas
        ));
    }
    if spec.replicas == replicas {
        return Ok(Change::Unchanged);
    }
    Ok(Change::Scale {
        from: spec.replicas,
    })
}

/// What "done" means: Orrery reported on `generation` and `replicas` nodes are Ready and up to
/// date.
#[derive(Clone, Copy, Debug)]
pub struct Goal {
    pub generation: Option<i64>,
    pub replicas: i32,
}

/// Whether `pool` has reached `goal`, and a line saying where it is.
pub fn assess(pool: &NodePool, goal: Goal) -> Verdict {
    let Some(status) = &pool.status else {
        return Verdict::Waiting("Orrery has not reported on it yet".into());
    };
    if let Some(line) = wait::behind(goal.generation, status.observed_generation) {
        return Verdict::Waiting(line);
    }
    let n = goal.replicas;
    if status.ready_replicas == n && status.replicas == n && status.updated_replicas == n {
        let version = status
            .version
            .as_ref()
            .map(|v| format!(", {v}"))
            .unwrap_or_default();
        return Verdict::Done(format!("{n}/{n} nodes ready and up to date{version}"));
    }
    let mut line = progress(status, n);
    if let Some(c) = held_up(pool) {
        line.push_str(&format!(" ({}: {})", c.reason, c.message));
    }
    if let Some(c) = failing(pool) {
        line.push_str(&format!(" (Degraded {}: {})", c.reason, c.message));
    }
    Verdict::Waiting(line)
}

/// "2/3 ready, 3/3 up to date; machines: 1 Joining, 2 Ready".
fn progress(status: &NodePoolStatus, want: i32) -> String {
    let counts: Vec<String> = PHASES
        .iter()
        .filter_map(|phase| {
            let n = status.machines.iter().filter(|m| m.phase == *phase).count();
            (n > 0).then(|| format!("{n} {}", phase_name(*phase)))
        })
        .collect();
    let machines = if counts.is_empty() {
        "no machines".to_string()
    } else {
        format!("machines: {}", counts.join(", "))
    };
    format!(
        "{}/{want} ready, {}/{want} up to date; {machines}",
        status.ready_replicas, status.updated_replicas
    )
}

/// The pool's state in one line for errors: its progress, every condition that is not as it
/// should be, and each machine that is not Ready with its message.
pub fn summary(pool: &NodePool) -> String {
    let Some(status) = &pool.status else {
        return "Orrery has not reported on it yet: is the operator running?".into();
    };
    let mut parts = vec![progress(status, pool.spec.replicas)];
    for c in &status.conditions {
        // Ready should be True; Progressing and Degraded False.
        if (c.type_ == crate::conditions::READY) != (c.status == "True") {
            parts.push(format!(
                "{}={} ({}): {}",
                c.type_, c.status, c.reason, c.message
            ));
        }
    }
    for m in status
        .machines
        .iter()
        .filter(|m| m.phase != MachinePhase::Ready)
    {
        let message = m.message.as_deref().unwrap_or("");
        parts.push(format!("{} {}: {message}", m.name, phase_name(m.phase)));
    }
    parts.join("; ")
}

pub async fn run(client: &ClientArgs, args: ScaleArgs) -> Result<()> {
    let m = connect::connect(client).await?;
    let pool = get_pool(&m, &args.pool).await?;
    let name = pool.name_any();
    let change = check(&pool.spec, args.replicas)
        .map_err(|why| Error::Refused(format!("cannot scale NodePool {name}: {why}")))?;
    let generation = match change {
        Change::Unchanged => {
            eprintln!(
                "{}: spec.replicas is {} already",
                POOL.qualified(&name),
                args.replicas
            );
            pool.metadata.generation
        }
        Change::Scale { from } => {
            let updated = set_replicas(&m, &pool, args.replicas).await?;
            eprintln!(
                "{}: spec.replicas {from} → {}",
                POOL.qualified(&name),
                updated.spec.replicas
            );
            updated.metadata.generation
        }
    };
    if args.no_wait {
        return Ok(());
    }
    let goal = Goal {
        generation,
        replicas: args.replicas,
    };
    let follow = Follow {
        m: &m,
        kind: POOL,
        name: &name,
        timeout: args.timeout.timeout,
        output: args.output,
    };
    follow
        .until(|pool: &NodePool| assess(pool, goal), summary)
        .await
}

/// The pool `name` in the namespace; if there is none, the error lists the namespace's pools.
async fn get_pool(m: &Management, name: &str) -> Result<NodePool> {
    let api = Api::<NodePool>::namespaced(m.client.clone(), &m.namespace);
    match api.get_opt(name).await {
        Ok(Some(pool)) => Ok(pool),
        Ok(None) => {
            let existing = match api.list(&ListParams::default()).await {
                Ok(list) => list.items.iter().map(ResourceExt::name_any).collect(),
                // Allowed to get but not to list: say only that it is missing.
                Err(_) => Vec::new(),
            };
            Err(Error::NoSuchPool {
                name: name.into(),
                namespace: m.namespace.clone(),
                existing,
            })
        }
        // A 404 on a named get here means the resource type itself is unknown.
        Err(e) if code(&e) == Some(404) => Err(Error::NoApi(POOL.name)),
        Err(e) => Err(forbidden_or(
            e,
            "get",
            POOL.resource,
            format!("NodePool {name}"),
            Some(&m.namespace),
        )),
    }
}

/// Sets spec.replicas with a merge patch that carries the resourceVersion read, so a change made
/// meanwhile (by the autoscaler, by another scale) is not overwritten unseen.
async fn set_replicas(m: &Management, pool: &NodePool, replicas: i32) -> Result<NodePool> {
    let api = Api::<NodePool>::namespaced(m.client.clone(), &m.namespace);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": pool.resource_version()},
        "spec": {"replicas": replicas},
    });
    let name = pool.name_any();
    api.patch(&name, &super::write_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict {
                kind: POOL.name,
                name: name.clone(),
            },
            kube::Error::Api(s) if s.code == 422 => Error::Rejected(s.message),
            e => forbidden_or(
                e,
                "patch",
                POOL.resource,
                format!("NodePool {name}"),
                Some(&m.namespace),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn spec(yaml: &str) -> NodePoolSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn refuses_what_admission_refuses() {
        let plain = "controlPlaneRef: {name: demo}\nreplicas: 2\n";
        let bounded = "controlPlaneRef: {name: demo}\nreplicas: 2\n\
                       autoscaling: {minReplicas: 1, maxReplicas: 4}\n";
        // (spec, --replicas, outcome or the words of the refusal)
        let cases: &[(&str, i32, Result<Change, &str>)] = &[
            (plain, 3, Ok(Change::Scale { from: 2 })),
            (plain, 0, Ok(Change::Scale { from: 2 })),
            (plain, 2, Ok(Change::Unchanged)),
            (plain, -1, Err("spec.replicas must be 0 or more")),
            (bounded, 1, Ok(Change::Scale { from: 2 })),
            (bounded, 4, Ok(Change::Scale { from: 2 })),
            (bounded, 2, Ok(Change::Unchanged)),
            (
                bounded,
                0,
                Err("0 is outside spec.autoscaling (1 to 4): spec.replicas must lie between"),
            ),
            (bounded, 5, Err("change spec.autoscaling first")),
            (bounded, -2, Err("spec.replicas must be 0 or more")),
        ];
        for (yaml, replicas, want) in cases {
            let got = check(&spec(yaml), *replicas);
            match want {
                Ok(change) => assert_eq!(got.as_ref(), Ok(change), "{yaml} → {replicas}"),
                Err(words) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(words), "{yaml} → {replicas}: {err}");
                }
            }
        }
    }

    fn machine(name: &str, phase: &str, message: Option<&str>) -> Value {
        json!({"name": name, "phase": phase, "version": "v1.34.4", "templateHash": "h",
               "since": "2026-01-01T00:00:00Z", "message": message})
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    fn pool(status: Value) -> NodePool {
        let mut p = json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
            "metadata": {"name": "workers", "namespace": "t", "generation": 4},
            "spec": {"controlPlaneRef": {"name": "demo"}, "replicas": 3},
        });
        if !status.is_null() {
            p["status"] = status;
        }
        serde_json::from_value(p).unwrap()
    }

    fn counts(seen: i64, replicas: i32, ready: i32, updated: i32) -> Value {
        json!({"observedGeneration": seen, "replicas": replicas, "readyReplicas": ready,
               "updatedReplicas": updated, "availableReplicas": ready, "version": "v1.34.4"})
    }

    #[test]
    fn progress_lines_and_the_end() {
        let goal = Goal {
            generation: Some(4),
            replicas: 3,
        };
        let mut joining = counts(4, 3, 2, 3);
        joining["machines"] = json!([
            machine("workers-a", "Ready", None),
            machine("workers-b", "Ready", None),
            machine(
                "workers-c",
                "Joining",
                Some("the VM runs; its node has not joined yet")
            ),
        ]);
        joining["conditions"] = json!([
            cond(
                "Ready",
                "False",
                "NodesNotReady",
                "2/3 nodes Ready and up to date"
            ),
            cond("Progressing", "True", "Joining", "3 machines, 3 up to date"),
        ]);
        let mut blocked = counts(4, 0, 0, 0);
        blocked["conditions"] = json!([
            cond(
                "Ready",
                "False",
                "WaitingForControlPlane",
                "tenant demo is not Ready"
            ),
            cond(
                "Degraded",
                "True",
                "WaitingForControlPlane",
                "tenant demo is not Ready"
            ),
        ]);
        let mut failing = counts(4, 2, 2, 2);
        failing["machines"] = json!([
            machine("workers-a", "Ready", None),
            machine("workers-b", "Ready", None),
        ]);
        failing["conditions"] = json!([
            cond(
                "Ready",
                "True",
                "NodesReady",
                "2/2 nodes Ready and up to date"
            ),
            cond("Degraded", "True", "KubeApi", "reconcile failed: boom"),
        ]);
        let three_ready = [
            machine("workers-a", "Ready", None),
            machine("workers-b", "Ready", None),
            machine("workers-c", "Ready", None),
        ];
        let mut rolling = counts(4, 3, 3, 2);
        rolling["machines"] = json!(three_ready);
        // Scaling down: the machine being removed no longer counts, the pool is done.
        let mut done = counts(4, 3, 3, 3);
        let mut machines = three_ready.to_vec();
        machines.push(machine("workers-d", "Deleting", Some("scaled down")));
        done["machines"] = json!(machines);
        let cases: Vec<(Value, Verdict)> = vec![
            (
                Value::Null,
                Verdict::Waiting("Orrery has not reported on it yet".into()),
            ),
            (
                counts(3, 2, 2, 2),
                Verdict::Waiting(
                    "Orrery has not taken up generation 4 yet (it last reported on 3)".into(),
                ),
            ),
            (
                joining,
                Verdict::Waiting("2/3 ready, 3/3 up to date; machines: 1 Joining, 2 Ready".into()),
            ),
            (
                blocked,
                Verdict::Waiting(
                    "0/3 ready, 0/3 up to date; no machines (WaitingForControlPlane: tenant \
                     demo is not Ready)"
                        .into(),
                ),
            ),
            (
                failing,
                Verdict::Waiting(
                    "2/3 ready, 2/3 up to date; machines: 2 Ready (Degraded KubeApi: \
                     reconcile failed: boom)"
                        .into(),
                ),
            ),
            // Ready but not all up to date: a rollout is still under way.
            (
                rolling,
                Verdict::Waiting("3/3 ready, 2/3 up to date; machines: 3 Ready".into()),
            ),
            (
                done,
                Verdict::Done("3/3 nodes ready and up to date, v1.34.4".into()),
            ),
        ];
        for (i, (status, want)) in cases.into_iter().enumerate() {
            assert_eq!(assess(&pool(status), goal), want, "case {i}");
        }
    }

    #[test]
    fn summary_lists_what_is_not_as_it_should_be() {
        let mut status = counts(4, 3, 2, 3);
        status["machines"] = json!([
            machine("workers-a", "Ready", None),
            machine("workers-b", "NotReady", Some("the node is not Ready")),
        ]);
        status["conditions"] = json!([
            cond(
                "Ready",
                "False",
                "NodesNotReady",
                "2/3 nodes Ready and up to date"
            ),
            cond("Progressing", "False", "Stable", "3 machines"),
            cond("Degraded", "True", "NodesNotReady", "NotReady: workers-b"),
        ]);
        assert_eq!(
            summary(&pool(status)),
            "2/3 ready, 3/3 up to date; machines: 1 Ready, 1 NotReady; \
             Ready=False (NodesNotReady): 2/3 nodes Ready and up to date; \
             Degraded=True (NodesNotReady): NotReady: workers-b; \
             workers-b NotReady: the node is not Ready"
        );
        assert_eq!(
            summary(&pool(Value::Null)),
            "Orrery has not reported on it yet: is the operator running?"
        );
    }

    #[test]
    fn objects_are_named_as_kubectl_prints_them() {
        assert_eq!(POOL.qualified("workers"), "nodepool.orrery.dev/workers");
        assert_eq!(
            wait::TENANT.qualified("demo"),
            "tenantcontrolplane.orrery.dev/demo"
        );
    }
}
