//! `kubectl orrery describe TENANT|-A`: each tenant as a tree, one line per part, in the manner
//! of `clusterctl describe cluster`. [`fetch`] makes every read, [`tree`] builds the tree from
//! them (pure, with [`row`], [`objects`], [`certs`] and [`pools`]), [`render`] prints it.

pub mod certs;
pub mod fetch;
pub mod objects;
pub mod pools;
pub mod render;
pub mod row;
pub mod tree;

#[cfg(test)]
mod tests;

use super::cli::{ClientArgs, DescribeArgs};
use super::connect;
use super::error::Result;
use futures::{StreamExt, stream};
use kube::ResourceExt;
use render::Described;

/// How many tenants are read at once with `-A`.
const CONCURRENT_READS: usize = 4;

pub async fn run(client: &ClientArgs, args: DescribeArgs, colour: bool) -> Result<()> {
    let m = connect::connect(client).await?;
    let tenants = match (&args.tenant, args.all_namespaces) {
        (Some(name), _) => vec![connect::tenant(&m, name).await?],
        (None, true) => connect::list(&m.client, None).await?,
        (None, false) => connect::list(&m.client, Some(&m.namespace)).await?,
    };
    if tenants.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", m.namespace)
        };
        eprintln!("No TenantControlPlanes found in {scope}.");
        return Ok(());
    }
    let look_inside = !args.no_tenant;
    let fetched: Vec<fetch::Fetched> = stream::iter(tenants)
        .map(|tcp| fetch::fetch(&m.client, tcp, look_inside))
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    let now = jiff::Timestamp::now();
    let options = tree::Options {
        expand: args.expand,
    };
    let described: Vec<Described> = fetched
        .iter()
        .map(|f| Described {
            namespace: args
                .all_namespaces
                .then(|| f.tcp.namespace().unwrap_or_default()),
            tree: tree::tree(f, options, now),
        })
        .collect();
    match (args.output, &args.tenant) {
        (None, _) => print!("{}", render::table(&described, now, colour)),
        (Some(format), Some(_)) => super::print(&described[0], format)?,
        (Some(format), None) => super::print(&described, format)?,
    }
    Ok(())
}
