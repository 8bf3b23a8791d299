//! The management cluster as kubectl would reach it (`--kubeconfig`, `--context`, `-n`), and the
//! lookup of tenants with errors that list what exists.

use super::cli::ClientArgs;
use super::error::{Error, Result, code, forbidden_or};
use crate::api::TenantControlPlane;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

/// A client of the management cluster and the namespace the command works in.
pub struct Management {
    pub client: Client,
    pub namespace: String,
}

pub async fn connect(args: &ClientArgs) -> Result<Management> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Management { client, namespace })
}

/// The tenant `name` in the namespace; if there is none, the error lists the namespace's tenants.
pub async fn tenant(m: &Management, name: &str) -> Result<TenantControlPlane> {
    let api = Api::<TenantControlPlane>::namespaced(m.client.clone(), &m.namespace);
    match api.get_opt(name).await {
        Ok(Some(tcp)) => Ok(tcp),
        Ok(None) => Err(no_such_tenant(m, name).await),
        // A 404 on a named get here means the resource type itself is unknown.
        Err(e) if code(&e) == Some(404) => Err(Error::NoApi("TenantControlPlane")),
        Err(e) => Err(forbidden_or(
            e,
            "get",
            "tenantcontrolplanes",
            format!("TenantControlPlane {name}"),
            Some(&m.namespace),
        )),
    }
}

async fn no_such_tenant(m: &Management, name: &str) -> Error {
    let existing = match list(&m.client, Some(&m.namespace)).await {
        Ok(tenants) => tenants.iter().map(ResourceExt::name_any).collect(),
        // Allowed to get but not to list: say only that it is missing.
        Err(_) => Vec::new(),
    };
    Error::NoSuchTenant {
        name: name.into(),
        namespace: m.namespace.clone(),
        existing,
    }
}

/// Every tenant of `namespace`, or of every namespace; sorted by namespace and name.
pub async fn list(client: &Client, namespace: Option<&str>) -> Result<Vec<TenantControlPlane>> {
    let api = match namespace {
        Some(ns) => Api::<TenantControlPlane>::namespaced(client.clone(), ns),
        None => Api::<TenantControlPlane>::all(client.clone()),
    };
    let mut tenants = api
        .list(&ListParams::default())
        .await
        .map_err(|e| match code(&e) {
            Some(404) => Error::NoApi("TenantControlPlane"),
            _ => forbidden_or(
                e,
                "list",
                "tenantcontrolplanes",
                "TenantControlPlanes",
                namespace,
            ),
        })?
        .items;
    tenants.sort_by_key(|t| (t.namespace(), t.name_any()));
    Ok(tenants)
}
