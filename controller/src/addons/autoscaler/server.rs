//! The gRPC server of the autoscaler API: mutual TLS with the API's CA (a client without a
//! certificate from it does not get past the handshake), the [`Provider`] behind it, and a
//! restart on the same socket when the server certificate was renewed.

use super::ApiEndpoint;
use super::authority;
use super::index::Index;
use super::proto::CloudProviderServer;
use super::service::Provider;
use crate::Result;
use crate::pki::KeyPairPem;
use futures::Stream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

/// How often the certificates are looked at again (renewal, or a CA replaced by hand).
const RECHECK: Duration = Duration::from_secs(3600);
/// Wait before asking the apiserver again after a failure.
const RETRY: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown`. Every replica of the operator serves it, so
/// the Service may send a call to any; writes go through the apiserver like any user's.
pub async fn serve(
    client: kube::Client,
    api: ApiEndpoint,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let index = Arc::new(Index::watch(&client, shutdown.clone()));
    let provider = Arc::new(Provider::new(client.clone(), index));
    let listener = Arc::new(listener);
    info!(addr = ?listener.local_addr().ok(), service = %api.address(), "serving the cluster-autoscaler cloud-provider API");
    loop {
        let Some(pki) = certificates(&client, &api, &shutdown, None).await else {
            return Ok(());
        };
        let restart = shutdown.child_token();
        let renewal = tokio::spawn(watch_renewal(
            client.clone(),
            api.clone(),
            pki.clone(),
            restart.clone(),
        ));
        let served = serve_tls(
            provider.clone(),
            &pki,
            incoming(listener.clone()),
            restart.cancelled_owned(),
        )
        .await;
        renewal.abort();
        served?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        info!("restarting the autoscaler API with its new certificates");
    }
}

/// Serves `provider` on the connections of `incoming` until `stop`, with the server key pair
/// `pki.1`, asking every client for a certificate of the CA `pki.0`.
pub async fn serve_tls<I>(
    provider: Arc<Provider>,
    pki: &(KeyPairPem, KeyPairPem),
    incoming: I,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()>
where
    I: Stream<Item = std::io::Result<TcpStream>>,
{
    let (ca, server) = pki;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert, &server.key))
        .client_ca_root(Certificate::from_pem(&ca.cert));
    Server::builder()
        .tls_config(tls)?
        .add_service(CloudProviderServer::from_arc(provider))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// The CA and the server's key pair, retried until they can be had; `None` on shutdown.
async fn certificates(
    client: &kube::Client,
    api: &ApiEndpoint,
    shutdown: &CancellationToken,
    retry: Option<Duration>,
) -> Option<(KeyPairPem, KeyPairPem)> {
    loop {
        let got = async {
            let ca = authority::ensure_ca(client, api).await?;
            let server = authority::ensure_server(client, api, &ca, SystemTime::now()).await?;
            Ok::<_, crate::Error>((ca, server))
        };
        match got.await {
            Ok(pki) => return Some(pki),
            Err(e) => warn!(error = %e, "cannot read or make the autoscaler API's certificates"),
        }
        tokio::select! {
            () = tokio::time::sleep(retry.unwrap_or(RETRY)) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Cancels `restart` once the certificates differ from `serving` (renewed, or replaced).
async fn watch_renewal(
    client: kube::Client,
    api: ApiEndpoint,
    serving: (KeyPairPem, KeyPairPem),
    restart: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECHECK) => {}
            () = restart.cancelled() => return,
        }
        match certificates(&client, &api, &restart, Some(RECHECK)).await {
            Some(now) if now != serving => {
                restart.cancel();
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// The connections `listener` accepts, across restarts of the server. An error accepting one
/// (too many open files, say) is logged and waited out rather than ending the server.
pub(super) fn incoming(
    listener: Arc<TcpListener>,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return Some((Ok(stream), listener)),
                Err(e) => {
                    warn!(error = %e, "accepting an autoscaler API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}
