//! Node groups are NodePools (pure): which pools a tenant may scale, their ids
//! (`<namespace>/<pool>`), and the sizes the autoscaler's calls lead to, refused with a gRPC
//! status that says why.

use super::identity::Tenant;
use super::proto::NodeGroup;
use crate::api::{Autoscaling, NodePool};
use kube::ResourceExt;
use tonic::Status;

/// The id of the node group a pool is.
pub fn group_id(pool: &NodePool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// Whether `pool` is one of the caller's: in its namespace and joining its cluster.
pub fn belongs_to(pool: &NodePool, caller: &Tenant) -> bool {
    pool.namespace().as_deref() == Some(caller.namespace.as_str())
        && pool.spec.control_plane_ref.name == caller.name
}

/// The node group of `pool`, if it has autoscaling bounds.
pub fn node_group(pool: &NodePool) -> Option<NodeGroup> {
    let bounds = pool.spec.autoscaling.as_ref()?;
    Some(NodeGroup {
        id: group_id(pool),
        min_size: bounds.min_replicas,
        max_size: bounds.max_replicas,
        debug: format!(
            "NodePool {}: replicas {} (min {}, max {})",
            group_id(pool),
            pool.spec.replicas,
            bounds.min_replicas,
            bounds.max_replicas
        ),
    })
}

/// The caller's node groups, by id.
pub fn node_groups<'a>(
    pools: impl IntoIterator<Item = &'a NodePool>,
    caller: &Tenant,
) -> Vec<NodeGroup> {
    let mut groups: Vec<NodeGroup> = pools
        .into_iter()
        .filter(|p| belongs_to(p, caller))
        .filter_map(node_group)
        .collect();
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    groups
}

/// The pool a group id names, when the caller may ask about it: a group in another namespace
/// is refused before anything is looked up.
pub fn pool_name<'a>(id: &'a str, caller: &Tenant) -> Result<&'a str, Status> {
    let (namespace, pool) = id
        .split_once('/')
        .filter(|(ns, pool)| !ns.is_empty() && !pool.is_empty())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "node group id {id:?} is not of the form <namespace>/<nodepool>"
            ))
        })?;
    if namespace != caller.namespace {
        return Err(foreign(id, caller));
    }
    Ok(pool)
}

/// The pool behind group `id` as found (`None`: no such pool), when it is the caller's node
/// group.
pub fn check<'a>(
    pool: Option<&'a NodePool>,
    id: &str,
    caller: &Tenant,
) -> Result<(&'a NodePool, &'a Autoscaling), Status> {
    let pool = pool.ok_or_else(|| Status::not_found(format!("node group {id} does not exist")))?;
    if !belongs_to(pool, caller) {
        return Err(foreign(id, caller));
    }
    let bounds = pool.spec.autoscaling.as_ref().ok_or_else(|| {
        Status::not_found(format!(
            "NodePool {id} has no spec.autoscaling, so it is no node group"
        ))
    })?;
    Ok((pool, bounds))
}

fn foreign(id: &str, caller: &Tenant) -> Status {
    Status::permission_denied(format!(
        "node group {id} is not one of tenant {caller}'s: its autoscaler may scale only that \
         tenant's NodePools"
    ))
}

/// Replicas after adding `delta` nodes to group `id` of `replicas`, within its bounds.
pub fn increased(id: &str, bounds: &Autoscaling, replicas: i32, delta: i32) -> Result<i32, Status> {
    if delta <= 0 {
        return Err(Status::invalid_argument(format!(
            "the size increase of node group {id} must be positive, not {delta}"
        )));
    }
    let wanted = replicas.saturating_add(delta);
    if wanted > bounds.max_replicas {
        return Err(Status::out_of_range(format!(
            "node group {id} cannot grow by {delta} from {replicas}: {wanted} is above its \
             maximum {} (spec.autoscaling.maxReplicas)",
            bounds.max_replicas
        )));
    }
    Ok(wanted)
}

/// Replicas after taking `delta` (negative) from group `id`'s target, which may only drop
/// capacity not yet created: `existing` machines are there and stay.
pub fn decreased_target(
    id: &str,
    bounds: &Autoscaling,
    replicas: i32,
    delta: i32,
    existing: usize,
) -> Result<i32, Status> {
    if delta >= 0 {
        return Err(Status::invalid_argument(format!(
            "the target size decrease of node group {id} must be negative, not {delta}"
        )));
    }
    let wanted = replicas.saturating_add(delta);
    if i64::from(wanted) < existing as i64 {
        return Err(Status::failed_precondition(format!(
            "node group {id} cannot shrink its target from {replicas} to {wanted}: {existing} \
             machines exist, and only capacity not yet created may be dropped this way (delete \
             nodes by name instead)"
        )));
    }
    below_minimum(id, bounds, replicas, wanted)
}

/// Replicas after deleting `count` of group `id`'s machines.
pub fn after_deleting(
    id: &str,
    bounds: &Autoscaling,
    replicas: i32,
    count: usize,
) -> Result<i32, Status> {
    let wanted = replicas.saturating_sub(i32::try_from(count).unwrap_or(i32::MAX));
    below_minimum(id, bounds, replicas, wanted)
}

fn below_minimum(
    id: &str,
    bounds: &Autoscaling,
    replicas: i32,
    wanted: i32,
) -> Result<i32, Status> {
    if wanted < bounds.min_replicas {
        return Err(Status::out_of_range(format!(
            "node group {id} cannot shrink from {replicas} to {wanted}: that is below its \
             minimum {} (spec.autoscaling.minReplicas)",
            bounds.min_replicas
        )));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addons::autoscaler::fixtures::pool;
    use tonic::Code;

    fn bounds(min: i32, max: i32) -> Autoscaling {
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
        }
    }

    const SCALED: &str = "replicas: 2\nautoscaling: {minReplicas: 1, maxReplicas: 4}\n";

    #[test]
    fn a_tenant_sees_its_own_autoscaled_pools_as_groups() {
        let me = Tenant::new("ns", "t1");
        let pools = [
            pool("ns", "b", "t1", SCALED),
            pool(
                "ns",
                "a",
                "t1",
                "replicas: 0\nautoscaling: {minReplicas: 0, maxReplicas: 3}",
            ),
            pool("ns", "fixed", "t1", "replicas: 2"),
            pool("ns", "other-tenant", "t2", SCALED),
            pool("elsewhere", "same-name-tenant", "t1", SCALED),
        ];
        let groups = node_groups(&pools, &me);
        let seen: Vec<(&str, i32, i32)> = groups
            .iter()
            .map(|g| (g.id.as_str(), g.min_size, g.max_size))
            .collect();
        assert_eq!(seen, [("ns/a", 0, 3), ("ns/b", 1, 4)]);
        assert_eq!(groups[1].debug, "NodePool ns/b: replicas 2 (min 1, max 4)");
    }

    #[test]
    fn a_group_id_is_checked_against_the_caller() {
        let me = Tenant::new("ns", "t1");
        let mine = pool("ns", "p", "t1", SCALED);
        let theirs = pool("ns", "q", "t2", SCALED);
        let fixed = pool("ns", "f", "t1", "replicas: 1");
        for (id, expected) in [
            ("ns/p", Ok("p")),
            ("other/p", Err(Code::PermissionDenied)),
            ("p", Err(Code::InvalidArgument)),
            ("ns/", Err(Code::InvalidArgument)),
            ("/p", Err(Code::InvalidArgument)),
        ] {
            assert_eq!(pool_name(id, &me).map_err(|s| s.code()), expected, "{id}");
        }
        for (what, found, expected) in [
            ("mine", Some(&mine), None),
            (
                "another tenant's in my namespace",
                Some(&theirs),
                Some(Code::PermissionDenied),
            ),
            ("without autoscaling", Some(&fixed), Some(Code::NotFound)),
            ("missing", None, Some(Code::NotFound)),
        ] {
            let got = check(found, "ns/x", &me).err().map(|s| s.code());
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn sizes_stay_within_the_bounds_and_never_drop_existing_machines() {
        let b = bounds(1, 4);
        let code = |r: Result<i32, Status>| r.map_err(|s| s.code());
        for (what, got, expected) in [
            ("grow", code(increased("g", &b, 2, 2)), Ok(4)),
            (
                "grow past max",
                code(increased("g", &b, 2, 3)),
                Err(Code::OutOfRange),
            ),
            (
                "grow by nothing",
                code(increased("g", &b, 2, 0)),
                Err(Code::InvalidArgument),
            ),
            (
                "grow by less",
                code(increased("g", &b, 2, -1)),
                Err(Code::InvalidArgument),
            ),
            (
                "drop capacity not yet created",
                code(decreased_target("g", &b, 4, -2, 2)),
                Ok(2),
            ),
            (
                "drop an existing machine",
                code(decreased_target("g", &b, 4, -3, 2)),
                Err(Code::FailedPrecondition),
            ),
            (
                "drop below min",
                code(decreased_target("g", &bounds(3, 4), 4, -2, 0)),
                Err(Code::OutOfRange),
            ),
            (
                "drop by a positive delta",
                code(decreased_target("g", &b, 4, 1, 0)),
                Err(Code::InvalidArgument),
            ),
            (
                "delete two of four",
                code(after_deleting("g", &b, 4, 2)),
                Ok(2),
            ),
            (
                "delete down to min",
                code(after_deleting("g", &b, 2, 1)),
                Ok(1),
            ),
            (
                "delete below min",
                code(after_deleting("g", &b, 2, 2)),
                Err(Code::OutOfRange),
            ),
            ("delete none", code(after_deleting("g", &b, 2, 0)), Ok(2)),
        ] {
            assert_eq!(got, expected, "{what}");
        }
        let refused = increased("ns/p", &b, 2, 3).unwrap_err();
        assert!(
            refused.message().contains("above its maximum 4"),
            "{}",
            refused.message()
        );
    }
}
