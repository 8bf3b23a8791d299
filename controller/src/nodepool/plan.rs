//! The rollout planner: which machines of a pool to create and which to delete next, from the
//! machines as they are now. Pure; the controller runs one plan per reconcile and plans again
//! once the machines changed, so each plan is one safe step, as with a Deployment's ReplicaSets.
//!
//! The rules follow Cluster API's MachineDeployment and MachineHealthCheck:
//! - machines being deleted count as gone;
//! - deletions the autoscaler requested come first and take nothing from maxUnavailable; a
//!   machine leaving on request is not replaced until it is gone. The autoscaler marks machines
//!   and then lowers `replicas`, two writes: a plan made in between must not start a machine that
//!   the lower number then removes again;
//! - a machine past its startup or unhealthy timeout is replaced, at most max(maxUnavailable, 1)
//!   at a time (deletions under way count): a broken machine serves nothing, so replacing one at a
//!   time never lowers availability, while a storm of them (say the tenant's API is down) is not
//!   torn down all at once;
//! - without a rollout the pool is scaled: scale-down deletes not-ready, then outdated, then the
//!   newest machines first;
//! - during a rollout at most replicas + maxSurge machines exist, and outdated Ready machines are
//!   deleted only while replicas - maxUnavailable remain available; a scale change is honoured.

use crate::api::{MachinePhase, RollingUpdateStrategy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use std::cmp::Reverse;
use std::time::Duration;

/// maxSurge and maxUnavailable of a rollout, in machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

/// How a percentage of the replicas becomes a number of machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Up,
    Down,
}

/// A number of machines, or a percentage of `replicas` rounded as asked. Admission refuses other
/// values; here they count as 0.
pub fn resolve(value: &IntOrString, replicas: i32, rounding: Rounding) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let Some(percent) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let scaled = percent * i64::from(replicas.max(0));
            let whole = match rounding {
                Rounding::Up => (scaled + 99) / 100,
                Rounding::Down => scaled / 100,
            };
            i32::try_from(whole).unwrap_or(i32::MAX)
        }
    }
}

/// The strategy's limits for `replicas`, as a Deployment resolves them: surge rounds up,
/// unavailability down, and when both come to 0 one machine may be unavailable.
pub fn limits(strategy: &RollingUpdateStrategy, replicas: i32) -> Limits {
    let surge = resolve(&strategy.max_surge, replicas, Rounding::Up);
    let unavailable = resolve(&strategy.max_unavailable, replicas, Rounding::Down);
    let unavailable = if surge == 0 && unavailable == 0 {
        1
    } else {
        unavailable
    };
    Limits {
        max_surge: u32::try_from(surge).unwrap_or(0),
        max_unavailable: u32::try_from(unavailable).unwrap_or(0),
    }
}

/// What the planner needs of the pool.
#[derive(Clone, Debug)]
pub struct Pool<'a> {
    /// Desired number of machines.
    pub replicas: u32,
    /// Hash of the current template and version; machines with another one are outdated.
    pub template_hash: &'a str,
    pub limits: Limits,
    /// How long a machine may take from creation to a Ready node.
    pub node_startup_timeout: Duration,
    /// How long a joined node may stay NotReady.
    pub unhealthy_timeout: Duration,
}

/// One machine of the pool as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Name of the VM.
    pub name: String,
    pub template_hash: String,
    pub phase: MachinePhase,
    /// When the VM was created.
    pub created: Timestamp,
    /// Since when its node has been NotReady; a NotReady machine without it is not replaced.
    pub not_ready_since: Option<Timestamp>,
    /// The autoscaler asked to remove exactly this machine.
    pub delete_requested: bool,
}

/// Why a machine is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The autoscaler asked for it.
    Requested,
    /// The pool has more machines than `replicas`.
    ScaleDown,
    /// It is outdated and a new one replaces it.
    Rollout,
    /// Its node did not become Ready within the startup timeout.
    StartupTimeout,
    /// Its node stayed NotReady past the unhealthy timeout.
    Unhealthy,
}

/// The next step: how many machines to create (from the current template) and which to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: u32,
    pub delete: Vec<(String, Reason)>,
}

impl Plan {
    /// Nothing to do: the pool has converged, or waits for machines to change.
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.delete.is_empty()
    }

    /// Marks `chosen` for deletion and drops them from `live`.
    fn remove(&mut self, live: &mut Vec<&Machine>, chosen: &[&Machine], reason: Reason) {
        for m in chosen {
            self.delete.push((m.name.clone(), reason));
        }
        live.retain(|m| !chosen.iter().any(|c| c.name == m.name));
    }
}

/// The next step for `pool`, whose machines are `machines`, at `now`.
pub fn plan(pool: &Pool, machines: &[Machine], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    // Machines being deleted count as gone.
    let mut live: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.phase != MachinePhase::Deleting)
        .collect();
    // Requested deletions are honoured first, outside every budget.
    let requested: Vec<&Machine> = live
        .iter()
        .copied()
        .filter(|m| m.delete_requested)
        .collect();
    plan.remove(&mut live, &requested, Reason::Requested);
    // Machines leaving on request, deleted already or not: they hold their place until gone.
    let leaving = machines.iter().filter(|m| m.delete_requested).count();
    remediate(pool, machines, &mut live, &mut plan, now);
    if live.iter().all(|m| m.template_hash == pool.template_hash) {
        scale(pool, &mut live, leaving, &mut plan);
    } else {
        roll(pool, &mut live, leaving, &mut plan);
    }
    plan
}

/// Deletes machines past a timeout, earliest deadline first, within the remediation budget.
fn remediate(
    pool: &Pool,
    machines: &[Machine],
    live: &mut Vec<&Machine>,
    plan: &mut Plan,
    now: Timestamp,
) {
    // Deletions under way that the autoscaler did not ask for use the budget.
    let in_flight = machines
        .iter()
        .filter(|m| m.phase == MachinePhase::Deleting && !m.delete_requested)
        .count();
    let budget = (pool.limits.max_unavailable.max(1) as usize).saturating_sub(in_flight);
    let mut overdue: Vec<(Timestamp, Reason, &Machine)> = live
        .iter()
        .filter_map(|m| {
            let (deadline, reason) = deadline(pool, m)?;
            (now > deadline).then_some((deadline, reason, *m))
        })
        .collect();
    overdue.sort_by(|a, b| (a.0, &a.2.name).cmp(&(b.0, &b.2.name)));
    for (_, reason, m) in overdue.into_iter().take(budget) {
        plan.remove(live, &[m], reason);
    }
}

/// When `m` is due for replacement if it does not change, and why.
fn deadline(pool: &Pool, m: &Machine) -> Option<(Timestamp, Reason)> {
    let after = |since: Timestamp, timeout: Duration| since.checked_add(timeout).ok();
    match m.phase {
        MachinePhase::Provisioning | MachinePhase::Joining => Some((
            after(m.created, pool.node_startup_timeout)?,
            Reason::StartupTimeout,
        )),
        MachinePhase::NotReady => Some((
            after(m.not_ready_since?, pool.unhealthy_timeout)?,
            Reason::Unhealthy,
        )),
        MachinePhase::Ready | MachinePhase::Deleting => None,
    }
}

/// The earliest future moment at which a machine would pass a timeout: when to plan again if
/// nothing else changes.
pub fn next_deadline(pool: &Pool, machines: &[Machine], now: Timestamp) -> Option<Timestamp> {
    machines
        .iter()
        .filter(|m| !m.delete_requested)
        .filter_map(|m| deadline(pool, m))
        .map(|(at, _)| at)
        .filter(|at| *at >= now)
        .min()
}

/// Order of deletion when the pool shrinks: not-ready first, then outdated, then newest.
fn deletion_order(pool: &Pool, machines: &mut [&Machine]) {
    machines.sort_by_key(|m| {
        (
            m.phase == MachinePhase::Ready,
            m.template_hash == pool.template_hash,
            Reverse(m.created),
            m.name.clone(),
        )
    });
}

/// No rollout: create up to `replicas` (counting the `leaving` machines, see the module's doc),
/// or delete the surplus.
fn scale(pool: &Pool, live: &mut Vec<&Machine>, leaving: usize, plan: &mut Plan) {
    let (count, replicas) = (live.len(), pool.replicas as usize);
    if count + leaving < replicas {
        plan.create = (replicas - count - leaving) as u32;
    } else if count > replicas {
        let mut order = live.clone();
        deletion_order(pool, &mut order);
        plan.remove(live, &order[..count - replicas], Reason::ScaleDown);
    }
}

/// A rollout step, as a Deployment's rolling update takes one; the `leaving` machines count
/// against maxSurge until they are gone.
fn roll(pool: &Pool, live: &mut Vec<&Machine>, leaving: usize, plan: &mut Plan) {
    let replicas = pool.replicas as usize;
    let Limits {
        max_surge,
        max_unavailable,
    } = pool.limits;
    let is_current = |m: &Machine| m.template_hash == pool.template_hash;
    let is_ready = |m: &Machine| m.phase == MachinePhase::Ready;
    let current = live.iter().filter(|m| is_current(m)).count();
    // New machines up to replicas + maxSurge in all, and up to replicas of the current template.
    plan.create = (replicas + max_surge as usize)
        .saturating_sub(live.len() + leaving)
        .min(replicas.saturating_sub(current)) as u32;
    // Scaled down during the rollout: current machines beyond replicas go.
    let mut surplus: Vec<&Machine> = live.iter().copied().filter(|m| is_current(m)).collect();
    deletion_order(pool, &mut surplus);
    surplus.truncate(current.saturating_sub(replicas));
    plan.remove(live, &surplus, Reason::ScaleDown);

    let min_available = replicas.saturating_sub(max_unavailable as usize);
    let mut old: Vec<&Machine> = live.iter().copied().filter(|m| !is_current(m)).collect();
    deletion_order(pool, &mut old);
    // Outdated machines that are not Ready go first, as long as enough others remain that are
    // or may become available (new ones still starting count).
    let new_unavailable = live
        .iter()
        .filter(|m| is_current(m) && !is_ready(m))
        .count();
    let cleanup = live.len().saturating_sub(min_available + new_unavailable);
    let not_ready: Vec<&Machine> = old
        .iter()
        .copied()
        .filter(|m| !is_ready(m))
        .take(cleanup)
        .collect();
    plan.remove(live, &not_ready, Reason::Rollout);
    // Outdated Ready machines go while replicas - maxUnavailable stay available.
    let available = live.iter().filter(|m| is_ready(m)).count();
    let budget = available.saturating_sub(min_available);
    let outdated_ready: Vec<&Machine> = old
        .iter()
        .copied()
        .filter(|m| is_ready(m))
        .take(budget)
        .collect();
    plan.remove(live, &outdated_ready, Reason::Rollout);
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachinePhase::{Deleting, Joining, NotReady, Provisioning, Ready};

    const MINUTE: Duration = Duration::from_secs(60);

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn minutes_ago(m: u64) -> Timestamp {
        now().checked_sub(MINUTE * m as u32).unwrap()
    }

    /// A machine of template `hash` created `age` minutes ago.
    fn machine(name: &str, hash: &str, phase: MachinePhase, age: u64) -> Machine {
        Machine {
            name: name.into(),
            template_hash: hash.into(),
            phase,
            created: minutes_ago(age),
            not_ready_since: (phase == NotReady).then(|| minutes_ago(1)),
            delete_requested: false,
        }
    }

    fn not_ready_for(mut m: Machine, minutes: u64) -> Machine {
        m.not_ready_since = Some(minutes_ago(minutes));
        m
    }

    fn requested(mut m: Machine) -> Machine {
        m.delete_requested = true;
        m
    }

    /// A pool of the current template "new", startup timeout 10m, unhealthy timeout 5m.
    fn pool(replicas: u32, max_surge: u32, max_unavailable: u32) -> Pool<'static> {
        Pool {
            replicas,
            template_hash: "new",
            limits: Limits {
                max_surge,
                max_unavailable,
            },
            node_startup_timeout: MINUTE * 10,
            unhealthy_timeout: MINUTE * 5,
        }
    }

    fn creates(n: u32) -> Plan {
        Plan {
            create: n,
            delete: vec![],
        }
    }

    fn deletes(names: &[(&str, Reason)]) -> Plan {
        Plan {
            create: 0,
            delete: names.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
        }
    }

    fn and_creates(mut plan: Plan, n: u32) -> Plan {
        plan.create = n;
        plan
    }

    #[test]
    fn limits_resolve_like_a_deployment() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        // (maxSurge, maxUnavailable, replicas) -> (surge, unavailable)
        let cases = vec![
            (int(1), int(0), 3, (1, 0)),
            (int(0), int(2), 3, (0, 2)),
            (pct("25%"), pct("25%"), 10, (3, 2)),
            (pct("25%"), pct("25%"), 4, (1, 1)),
            (pct("100%"), pct("100%"), 4, (4, 4)),
            (pct("0%"), pct("10%"), 3, (0, 1)),
            (int(0), int(0), 3, (0, 1)),
            (pct("50%"), pct("50%"), 0, (0, 1)),
            (pct("x%"), int(2), 3, (0, 2)),
            (int(-1), int(1), 3, (0, 1)),
        ];
        for (surge, unavailable, replicas, (want_surge, want_unavailable)) in cases {
            let strategy = RollingUpdateStrategy {
                max_surge: surge.clone(),
                max_unavailable: unavailable.clone(),
            };
            assert_eq!(
                limits(&strategy, replicas),
                Limits {
                    max_surge: want_surge,
                    max_unavailable: want_unavailable
                },
                "{surge:?} / {unavailable:?} of {replicas}"
            );
        }
    }

    #[test]
    fn plans() {
        use Reason::*;
        let cases: Vec<(&str, Pool, Vec<Machine>, Plan)> = vec![
            ("fresh pool", pool(3, 1, 0), vec![], creates(3)),
            (
                "scale up",
                pool(3, 1, 0),
                vec![machine("a", "new", Ready, 30)],
                creates(2),
            ),
            (
                "scale down: the joining one, then the newest",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                    machine("c", "new", Ready, 10),
                    machine("d", "new", Joining, 5),
                ],
                deletes(&[("d", ScaleDown), ("c", ScaleDown)]),
            ),
            (
                "scale down: a NotReady node before a newer Ready one",
                pool(1, 1, 0),
                vec![
                    machine("a", "new", Ready, 10),
                    machine("b", "new", NotReady, 60),
                ],
                deletes(&[("b", ScaleDown)]),
            ),
            (
                "scale to zero",
                pool(0, 1, 0),
                vec![
                    machine("a", "new", Ready, 10),
                    machine("b", "new", Provisioning, 1),
                ],
                deletes(&[("b", ScaleDown), ("a", ScaleDown)]),
            ),
            (
                "machines being deleted count as gone",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Deleting, 20),
                ],
                creates(1),
            ),
            (
                "a rollout waits while the new machine starts",
                pool(3, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("o2", "old", Ready, 20),
                    machine("o3", "old", Ready, 10),
                    machine("n1", "new", Provisioning, 2),
                ],
                Plan::default(),
            ),
            (
                "a rollout removes an outdated machine that is not Ready first",
                pool(3, 1, 0),
                vec![
                    machine("o1", "old", NotReady, 30),
                    machine("o2", "old", Ready, 20),
                    machine("o3", "old", Ready, 10),
                    machine("n1", "new", Ready, 2),
                ],
                deletes(&[("o1", Rollout)]),
            ),
            (
                "remediation of a stuck join, replaced at once",
                pool(1, 1, 0),
                vec![machine("a", "new", Joining, 11)],
                and_creates(deletes(&[("a", StartupTimeout)]), 1),
            ),
            (
                "a join still within its startup timeout waits",
                pool(1, 1, 0),
                vec![machine("a", "new", Joining, 9)],
                Plan::default(),
            ),
            (
                "a VM that never booted is replaced",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 60),
                    machine("b", "new", Provisioning, 15),
                ],
                and_creates(deletes(&[("b", StartupTimeout)]), 1),
            ),
            (
                "remediation of a node NotReady past the unhealthy timeout",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 60),
                    not_ready_for(machine("b", "new", NotReady, 60), 6),
                ],
                and_creates(deletes(&[("b", Unhealthy)]), 1),
            ),
            (
                "a node NotReady for less than the unhealthy timeout waits",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 60),
                    not_ready_for(machine("b", "new", NotReady, 60), 4),
                ],
                Plan::default(),
            ),
            (
                "remediation capped by maxUnavailable 1: the longest NotReady first",
                pool(3, 1, 1),
                vec![
                    not_ready_for(machine("a", "new", NotReady, 60), 6),
                    not_ready_for(machine("b", "new", NotReady, 60), 8),
                    not_ready_for(machine("c", "new", NotReady, 60), 7),
                ],
                and_creates(deletes(&[("b", Unhealthy)]), 1),
            ),
            (
                "remediation with maxUnavailable 0 still replaces one at a time",
                pool(3, 1, 0),
                vec![
                    machine("a", "new", Provisioning, 12),
                    machine("b", "new", Joining, 11),
                    machine("c", "new", Ready, 60),
                ],
                and_creates(deletes(&[("a", StartupTimeout)]), 1),
            ),
            (
                "remediation capped by maxUnavailable 2",
                pool(3, 1, 2),
                vec![
                    not_ready_for(machine("a", "new", NotReady, 60), 6),
                    not_ready_for(machine("b", "new", NotReady, 60), 8),
                    not_ready_for(machine("c", "new", NotReady, 60), 7),
                ],
                and_creates(deletes(&[("b", Unhealthy), ("c", Unhealthy)]), 2),
            ),
            (
                "remediation waits while a deletion is under way",
                pool(3, 1, 1),
                vec![
                    not_ready_for(machine("a", "new", NotReady, 60), 6),
                    machine("b", "new", Deleting, 60),
                    machine("c", "new", Ready, 60),
                    machine("d", "new", Ready, 60),
                ],
                Plan::default(),
            ),
            (
                "a requested deletion under way does not hold remediation back",
                pool(3, 1, 1),
                vec![
                    not_ready_for(machine("a", "new", NotReady, 60), 6),
                    requested(machine("b", "new", Deleting, 60)),
                    machine("c", "new", Ready, 60),
                    machine("d", "new", Ready, 60),
                ],
                deletes(&[("a", Unhealthy)]),
            ),
            (
                "requested deletion after the autoscaler lowered replicas",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                    requested(machine("c", "new", Ready, 40)),
                ],
                deletes(&[("c", Requested)]),
            ),
            (
                "requested deletion with replicas unchanged: not replaced while it leaves",
                pool(3, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                    requested(machine("c", "new", Ready, 40)),
                ],
                deletes(&[("c", Requested)]),
            ),
            (
                "a requested machine being deleted still holds its place",
                pool(3, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                    requested(machine("c", "new", Deleting, 40)),
                ],
                Plan::default(),
            ),
            (
                "a requested machine gone, with replicas unchanged, is replaced",
                pool(3, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                ],
                creates(1),
            ),
            (
                "requested deletions take nothing from maxUnavailable or remediation",
                pool(2, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    requested(machine("o2", "old", Ready, 20)),
                    machine("n1", "new", Joining, 11),
                ],
                // o1 and the leaving o2 leave room for one new machine within maxSurge.
                and_creates(deletes(&[("o2", Requested), ("n1", StartupTimeout)]), 1),
            ),
            (
                "scale up while rolling",
                pool(5, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("o2", "old", Ready, 20),
                    machine("o3", "old", Ready, 10),
                    machine("n1", "new", Ready, 2),
                ],
                creates(2),
            ),
            (
                "scale down while rolling: outdated machines go while one stays available",
                pool(1, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("o2", "old", Ready, 20),
                    machine("o3", "old", Ready, 10),
                    machine("n1", "new", Ready, 2),
                ],
                deletes(&[("o3", Rollout), ("o2", Rollout), ("o1", Rollout)]),
            ),
            (
                "scale down while rolling: surplus current machines go too",
                pool(1, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("n1", "new", Ready, 3),
                    machine("n2", "new", Ready, 2),
                ],
                deletes(&[("n2", ScaleDown), ("o1", Rollout)]),
            ),
            (
                "scale down while rolling before any new machine exists",
                pool(1, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("o2", "old", Ready, 20),
                    machine("o3", "old", Ready, 10),
                ],
                deletes(&[("o3", Rollout), ("o2", Rollout)]),
            ),
            (
                "converged",
                pool(2, 1, 0),
                vec![
                    machine("a", "new", Ready, 30),
                    machine("b", "new", Ready, 20),
                ],
                Plan::default(),
            ),
        ];
        for (case, pool, machines, want) in cases {
            assert_eq!(plan(&pool, &machines, now()), want, "{case}");
        }
    }

    /// Carries out `plan` as the controller does: deleted machines start deleting, new ones are
    /// created from the current template.
    fn apply(pool: &Pool, machines: &mut Vec<Machine>, plan: &Plan, created: &mut u32) {
        for (name, _) in &plan.delete {
            let m = machines.iter_mut().find(|m| &m.name == name).unwrap();
            m.phase = Deleting;
        }
        for _ in 0..plan.create {
            *created += 1;
            let name = format!("n{created}");
            machines.push(machine(&name, pool.template_hash, Provisioning, 0));
        }
    }

    /// Time passes: deletions finish and new machines' nodes become Ready.
    fn settle(machines: &mut Vec<Machine>) {
        machines.retain(|m| m.phase != Deleting);
        for m in machines.iter_mut() {
            m.phase = Ready;
        }
    }

    /// Runs a rollout of three outdated machines step by step, checking each step and that the
    /// pool never exceeds replicas + maxSurge nor drops below replicas - maxUnavailable Ready.
    fn rollout(surge: u32, unavailable: u32, want: Vec<Plan>) {
        let pool = pool(3, surge, unavailable);
        let mut machines = vec![
            machine("o1", "old", Ready, 30),
            machine("o2", "old", Ready, 20),
            machine("o3", "old", Ready, 10),
        ];
        let mut created = 0;
        for (step, want) in want.iter().enumerate() {
            let got = plan(&pool, &machines, now());
            assert_eq!(&got, want, "step {step}");
            apply(&pool, &mut machines, &got, &mut created);
            let live: Vec<&Machine> = machines.iter().filter(|m| m.phase != Deleting).collect();
            assert!(live.len() <= (3 + surge) as usize, "step {step}: surge");
            let ready = live.iter().filter(|m| m.phase == Ready).count();
            assert!(
                ready >= (3 - unavailable) as usize,
                "step {step}: availability"
            );
            settle(&mut machines);
        }
        assert!(machines.iter().all(|m| m.template_hash == "new"));
        assert_eq!(machines.len(), 3);
    }

    #[test]
    fn rollout_with_surge_1_unavailable_0_step_by_step() {
        use Reason::Rollout;
        rollout(
            1,
            0,
            vec![
                creates(1),
                deletes(&[("o3", Rollout)]),
                creates(1),
                deletes(&[("o2", Rollout)]),
                creates(1),
                deletes(&[("o1", Rollout)]),
                Plan::default(),
            ],
        );
    }

    #[test]
    fn rollout_with_surge_0_unavailable_1_step_by_step() {
        use Reason::Rollout;
        rollout(
            0,
            1,
            vec![
                deletes(&[("o3", Rollout)]),
                creates(1),
                deletes(&[("o2", Rollout)]),
                creates(1),
                deletes(&[("o1", Rollout)]),
                creates(1),
                Plan::default(),
            ],
        );
    }

    #[test]
    fn rollout_with_surge_2_unavailable_1_takes_bigger_steps() {
        use Reason::Rollout;
        rollout(
            2,
            1,
            vec![
                and_creates(deletes(&[("o3", Rollout)]), 2),
                and_creates(deletes(&[("o2", Rollout), ("o1", Rollout)]), 1),
                Plan::default(),
            ],
        );
    }

    #[test]
    fn a_converged_pool_plans_nothing_again() {
        // From several starting points, planning until nothing is left to do ends in the desired
        // pool, and planning once more on it yields nothing, so a second reconcile writes nothing.
        let starts: Vec<(Pool, Vec<Machine>)> = vec![
            (pool(3, 1, 0), vec![]),
            (
                pool(2, 0, 1),
                vec![
                    machine("o1", "old", Ready, 30),
                    machine("o2", "old", NotReady, 20),
                    machine("o3", "new", Joining, 11),
                ],
            ),
            (
                pool(1, 1, 0),
                vec![
                    machine("o1", "old", Ready, 30),
                    requested(machine("o2", "new", Ready, 20)),
                    machine("o3", "new", Ready, 10),
                ],
            ),
        ];
        for (pool, mut machines) in starts {
            let mut created = 0;
            let mut steps = 0;
            loop {
                let next = plan(&pool, &machines, now());
                if next.is_empty() {
                    break;
                }
                apply(&pool, &mut machines, &next, &mut created);
                settle(&mut machines);
                steps += 1;
                assert!(steps < 20, "no convergence: {machines:?}");
            }
            assert_eq!(machines.len(), pool.replicas as usize);
            assert!(
                machines
                    .iter()
                    .all(|m| m.template_hash == "new" && m.phase == Ready)
            );
            assert_eq!(plan(&pool, &machines, now()), Plan::default());
        }
    }

    #[test]
    fn the_next_deadline_is_the_earliest_timeout_to_come() {
        let pool = pool(3, 1, 0);
        let joining = machine("a", "new", Joining, 3);
        let not_ready = not_ready_for(machine("b", "new", NotReady, 60), 1);
        let at = |m: u64| now().checked_add(MINUTE * m as u32).unwrap();
        let cases: Vec<(&str, Vec<Machine>, Option<Timestamp>)> = vec![
            ("all Ready", vec![machine("c", "new", Ready, 60)], None),
            (
                "joining: startup timeout",
                vec![joining.clone()],
                Some(at(7)),
            ),
            (
                "the NotReady node's comes first",
                vec![joining.clone(), not_ready.clone()],
                Some(at(4)),
            ),
            (
                "overdue machines are left to the plan",
                vec![machine("d", "new", Joining, 30), joining.clone()],
                Some(at(7)),
            ),
            ("requested ones go anyway", vec![requested(joining)], None),
        ];
        for (case, machines, want) in cases {
            assert_eq!(next_deadline(&pool, &machines, now()), want, "{case}");
        }
    }
}
