//! Talking to a DataStore's etcd as root: connections (pooled per DataStore) and the tenant's
//! user, role and keys.

use crate::Result;
use crate::pki::KeyPairPem;
use etcd_client::{
    Certificate, Client as EtcdClient, ConnectOptions, DeleteOptions, Identity, Permission,
    TlsOptions, UserAddOptions,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The etcd user (and role) of a tenant. Namespaces cannot contain '/', so this is unambiguous.
pub fn etcd_user(namespace: &str, name: &str) -> String {
    format!("orrery/{namespace}/{name}")
}

/// The apiserver's `--etcd-prefix` for a tenant. Its keys all start with this plus '/', which is
/// the prefix the tenant's role is limited to.
pub fn etcd_prefix(namespace: &str, name: &str) -> String {
    format!("/orrery/{namespace}/{name}")
}

fn role_prefix(namespace: &str, name: &str) -> String {
    format!("{}/", etcd_prefix(namespace, name))
}

/// How to reach a DataStore's etcd as root, and the CA that signs tenants' client certificates.
#[derive(Clone, Debug)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub ca: KeyPairPem,
    pub root: KeyPairPem,
}

impl Connection {
    fn fingerprint(&self) -> String {
        crate::hash::of_strings(&[
            self.endpoints.join(","),
            self.ca.cert.clone(),
            self.root.cert.clone(),
        ])
    }
}

#[derive(Default)]
pub struct EtcdPool {
    clients: Mutex<HashMap<String, (String, EtcdClient)>>,
}

impl EtcdPool {
    /// A client for `ds` as root, reused while the connection details are unchanged.
    pub async fn client(&self, ds_name: &str, conn: &Connection) -> Result<EtcdClient> {
        let fingerprint = conn.fingerprint();
        if let Some((f, c)) = self.clients.lock().unwrap().get(ds_name)
            && *f == fingerprint
        {
            return Ok(c.clone());
        }
        let client = connect(conn).await?;
        self.clients
            .lock()
            .unwrap()
            .insert(ds_name.to_string(), (fingerprint, client.clone()));
        Ok(client)
    }

    /// Drops a client after an error so the next use reconnects.
    pub fn forget(&self, ds_name: &str) {
        self.clients.lock().unwrap().remove(ds_name);
    }
}

/// Connects to etcd with the root client certificate.
pub async fn connect(conn: &Connection) -> Result<EtcdClient> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&conn.ca.cert))
        .identity(Identity::from_pem(&conn.root.cert, &conn.root.key));
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    Ok(EtcdClient::connect(conn.endpoints.clone(), Some(opts)).await?)
}

fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("not found"))
}

/// etcd refuses a request whose permissions were checked against an auth store that changed
/// before the request applied (another tenant's user or role added or removed meanwhile).
fn is_old_auth_revision(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Etcd(etcd_client::Error::GRpcStatus(s)) if s.message().contains("revision of auth store is old"))
}

/// Runs an idempotent sequence of etcd calls again when etcd refused one for an auth store that
/// changed under it, as etcd's own client does.
async fn again<T, Fut>(mut run: impl FnMut() -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    for _ in 0..4 {
        match run().await {
            Err(e) if is_old_auth_revision(&e) => continue,
            result => return result,
        }
    }
    run().await
}

/// Makes sure the tenant's role (read-write on its prefix only) and user exist. Reads first and
/// writes only what is missing, so a steady state costs no etcd writes.
pub async fn ensure_tenant(etcd: &mut EtcdClient, namespace: &str, name: &str) -> Result<()> {
    again(|| ensure_tenant_once(etcd.clone(), namespace, name)).await
}

async fn ensure_tenant_once(mut etcd: EtcdClient, namespace: &str, name: &str) -> Result<()> {
    let user = etcd_user(namespace, name);
    let prefix = role_prefix(namespace, name);
    let wanted = Permission::read_write(prefix.as_bytes().to_vec()).with_prefix();
    match etcd.role_get(user.as_str()).await {
        Ok(role) => {
            if !role
                .permissions()
                .iter()
                .any(|p| p.key() == wanted.key() && p.range_end() == wanted.range_end())
            {
                etcd.role_grant_permission(user.as_str(), wanted).await?;
            }
        }
        Err(e) if is_not_found(&e) => {
            etcd.role_add(user.as_str()).await?;
            etcd.role_grant_permission(user.as_str(), wanted).await?;
        }
        Err(e) => return Err(e.into()),
    }
    match etcd.user_get(user.as_str()).await {
        Ok(u) => {
            if !u.roles().contains(&user) {
                etcd.user_grant_role(user.as_str(), user.as_str()).await?;
            }
        }
        Err(e) if is_not_found(&e) => {
            // Certificate authentication only: the user has no password.
            etcd.user_add(user.as_str(), "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
            etcd.user_grant_role(user.as_str(), user.as_str()).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Removes the tenant's keys, user and role, and nothing else.
pub async fn remove_tenant(etcd: &mut EtcdClient, namespace: &str, name: &str) -> Result<i64> {
    again(|| remove_tenant_once(etcd.clone(), namespace, name)).await
}

async fn remove_tenant_once(mut etcd: EtcdClient, namespace: &str, name: &str) -> Result<i64> {
    let user = etcd_user(namespace, name);
    // Access is revoked before the keys go: a tenant apiserver still running cannot write a key
    // after the prefix was emptied. etcd checks the user's permissions on every request.
    let user_deleted = etcd.user_delete(user.as_str()).await.map(|_| ());
    let role_deleted = etcd.role_delete(user.as_str()).await.map(|_| ());
    for result in [user_deleted, role_deleted] {
        match result {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deleted = etcd
        .delete(
            role_prefix(namespace, name).into_bytes(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await?
        .deleted();
    Ok(deleted)
}

/// Makes sure `root` can authenticate and etcd authentication is on (managed etcd starts with
/// it off). Idempotent.
pub async fn ensure_auth_enabled(etcd: &mut EtcdClient) -> Result<()> {
    let roles = match etcd.user_get("root").await {
        Ok(user) => user.roles().to_vec(),
        Err(e) if is_not_found(&e) => {
            etcd.user_add("root", "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if !roles.iter().any(|r| r == "root") {
        if let Err(e) = etcd.role_get("root").await {
            if !is_not_found(&e) {
                return Err(e.into());
            }
            etcd.role_add("root").await?;
        }
        etcd.user_grant_role("root", "root").await?;
    }
    // Enabling authentication twice is a no-op in etcd.
    etcd.auth_enable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_users_and_prefixes_cannot_collide() {
        assert_eq!(etcd_user("a", "b-c"), "orrery/a/b-c");
        assert_ne!(etcd_user("a-b", "c"), etcd_user("a", "b-c"));
        assert_eq!(etcd_prefix("ns", "t"), "/orrery/ns/t");
        // The role covers "/orrery/ns/t/..." but not a sibling tenant "/orrery/ns/t2/...".
        let p = role_prefix("ns", "t");
        assert!("/orrery/ns/t/pods/x".starts_with(&p));
        assert!(!"/orrery/ns/t2/pods/x".starts_with(&p));
    }
}
