//! The operator's Kubernetes client: kube's own service stack with one more layer, which counts
//! every request in `orrery_kube_requests_total` by verb, resource and status code.
//!
//! The layer sits outside kube's stack, so it sees paths relative to the cluster URL, and a
//! request that kube retries (on 429, 503 or 504) counts once, with its final status.

use crate::metrics::{KubeRequest, Metrics};
use futures::future::BoxFuture;
use http::{Method, Request, Response, Uri};
use kube::client::ClientBuilder;
use kube::{Client, Config};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A client for `config` (in-cluster, or a kubeconfig) that counts its requests in `metrics`.
pub fn counting_client(config: Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&CountRequestsLayer::new(metrics.clone()))
        .build())
}

/// [`counting_client`] with the configuration kube infers: `KUBECONFIG` (or `~/.kube/config`),
/// else the Pod's service account.
pub async fn infer_counting_client(metrics: &Metrics) -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    counting_client(config, metrics)
}

/// A tower layer that counts each request of the service it wraps (see the module docs).
#[derive(Clone, Debug)]
pub struct CountRequestsLayer {
    metrics: Metrics,
}

impl CountRequestsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`CountRequestsLayer`] makes.
#[derive(Clone, Debug)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<Request<B>> for CountRequests<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        let pending = Pending {
            metrics: self.metrics.clone(),
            request: Some((verb, resource)),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response.status().as_str().to_owned(),
                Err(_) => ERROR_CODE.to_owned(),
            };
            pending.finish(code);
            result
        })
    }
}

/// The `code` of a request that got no response.
const ERROR_CODE: &str = "error";

/// A request sent but not answered yet. It counts once: with its status when answered, or as
/// [`ERROR_CODE`] when dropped unanswered (its caller gave up, e.g. on a timeout).
struct Pending {
    metrics: Metrics,
    request: Option<(&'static str, String)>,
}

impl Pending {
    fn finish(mut self, code: String) {
        self.count(code);
    }

    fn count(&mut self, code: String) {
        if let Some((verb, resource)) = self.request.take() {
            self.metrics.kube_request(KubeRequest {
                verb,
                resource,
                code,
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.count(ERROR_CODE.to_owned());
    }
}

/// The verb and the resource of a request as the apiserver names them (its `RequestInfo`):
/// `("get", "secrets")` for `GET /api/v1/namespaces/x/secrets/y`, `("patch",
/// "tenantcontrolplanes/status")` for a status patch. A path that names no resource (`/version`,
/// discovery) gives the lowercase method and the path.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let path = uri.path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // `/api/{version}/…` for the core group, `/apis/{group}/{version}/…` for the others.
    let rest = match segments.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => &[][..],
    };
    // The old `/watch/` prefix, which the apiserver still serves.
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    // `namespaces/{ns}/{resource}…`, except the namespace's own subresources.
    let rest = match rest {
        ["namespaces", _, rest @ ..]
            if rest
                .first()
                .is_some_and(|r| !matches!(*r, "status" | "finalize")) =>
        {
            rest
        }
        _ => rest,
    };
    let (resource, named) = match rest {
        [] => return (method_name(method), path.to_owned()),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
    };
    // Like the apiserver, `?watch` turns only a list into a watch.
    let watch = watch_prefix || (!named && is_watch(uri));
    (verb(method, named, watch), resource)
}

/// The verb of a request on a resource: `named` when the path names one object, `watch` when it
/// asks to watch (`?watch=true`, or the `/watch/` prefix).
fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => method_name(method),
    }
}

/// Whether the query has `watch` set to a true value (as Go's `strconv.ParseBool` reads it).
fn is_watch(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query.split('&').any(|pair| {
            matches!(
                pair.split_once('='),
                Some(("watch", "1" | "t" | "T" | "true" | "TRUE" | "True"))
            )
        })
    })
}

/// The lowercase method, the verb of a request that names no resource.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use std::time::Duration;

    /// Method and URI of a request, and the verb and resource the apiserver sees in it.
    #[rustfmt::skip]
    const REQUESTS: &[(&str, &str, &str, &str)] = &[
            // Core group, namespaced.
            ("GET", "/api/v1/namespaces/x/secrets/y", "get", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets", "list", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets?labelSelector=a%3Db&limit=500", "list", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets?watch=true&resourceVersion=7", "watch", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets?allowWatchBookmarks=true&watch=1", "watch", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets?watch=false", "list", "secrets"),
            ("GET", "/api/v1/namespaces/x/secrets?watchy=true", "list", "secrets"),
            ("POST", "/api/v1/namespaces/x/secrets", "create", "secrets"),
            ("PUT", "/api/v1/namespaces/x/secrets/y", "update", "secrets"),
            ("PATCH", "/api/v1/namespaces/x/secrets/y?fieldManager=orrery&force=true", "patch", "secrets"),
            ("DELETE", "/api/v1/namespaces/x/secrets/y", "delete", "secrets"),
            ("DELETE", "/api/v1/namespaces/x/secrets?labelSelector=a", "deletecollection", "secrets"),
            ("GET", "/api/v1/namespaces/x/pods/p/log", "get", "pods/log"),
            ("POST", "/api/v1/namespaces/x/serviceaccounts/s/token", "create", "serviceaccounts/token"),
            // Other groups, subresources.
            ("GET", "/apis/orrery.dev/v1alpha1/namespaces/t/tenantcontrolplanes", "list", "tenantcontrolplanes"),
            ("PATCH", "/apis/orrery.dev/v1alpha1/namespaces/t/tenantcontrolplanes/a/status", "patch", "tenantcontrolplanes/status"),
            ("PUT", "/apis/orrery.dev/v1alpha1/namespaces/t/tenantcontrolplanes/a/status", "update", "tenantcontrolplanes/status"),
            ("GET", "/apis/apps/v1/namespaces/x/deployments/d/scale", "get", "deployments/scale"),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/l", "update", "leases"),
            ("POST", "/apis/events.k8s.io/v1/namespaces/x/events", "create", "events"),
            // Across namespaces, and cluster-scoped.
            ("GET", "/apis/apps/v1/deployments?watch=true", "watch", "deployments"),
            ("GET", "/apis/orrery.dev/v1alpha1/datastores/ds", "get", "datastores"),
            ("PATCH", "/apis/orrery.dev/v1alpha1/datastores/ds/status", "patch", "datastores/status"),
            ("GET", "/api/v1/nodes", "list", "nodes"),
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", "create", "tokenreviews"),
            // Namespaces themselves, with their own subresources.
            ("GET", "/api/v1/namespaces", "list", "namespaces"),
            ("GET", "/api/v1/namespaces/x", "get", "namespaces"),
            ("DELETE", "/api/v1/namespaces/x", "delete", "namespaces"),
            ("PUT", "/api/v1/namespaces/x/finalize", "update", "namespaces/finalize"),
            ("GET", "/api/v1/namespaces/x/status", "get", "namespaces/status"),
            // A watch of one object is a get, unless it uses the old prefix.
            ("GET", "/api/v1/namespaces/x/secrets/y?watch=true", "get", "secrets"),
            ("GET", "/api/v1/watch/namespaces/x/secrets/y", "watch", "secrets"),
            ("GET", "/api/v1/watch/namespaces/x/secrets", "watch", "secrets"),
            // No resource: the method and the path.
            ("GET", "/version", "get", "/version"),
            ("GET", "/api", "get", "/api"),
            ("GET", "/api/v1", "get", "/api/v1"),
            ("GET", "/apis/orrery.dev/v1alpha1", "get", "/apis/orrery.dev/v1alpha1"),
            ("GET", "/apis/orrery.dev", "get", "/apis/orrery.dev"),
            ("GET", "/readyz?verbose", "get", "/readyz"),
            ("POST", "/", "post", "/"),
            ("OPTIONS", "/api/v1/namespaces/x/secrets", "options", "secrets"),
    ];

    #[test]
    fn classifies_paths_like_the_apiserver() {
        for (method, uri, verb, resource) in REQUESTS {
            let method: Method = method.parse().unwrap();
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                classify(&method, &uri),
                (*verb, resource.to_string()),
                "{method} {uri}"
            );
        }
        // kube sends relative URIs; an absolute one classifies by its path alike.
        let absolute: Uri = "https://10.0.0.1:6443/api/v1/namespaces/x/secrets/y"
            .parse()
            .unwrap();
        assert_eq!(
            classify(&Method::GET, &absolute),
            ("get", "secrets".to_owned())
        );
    }

    /// An HTTP server standing in for an apiserver: lists of ConfigMaps are empty, `slow` never
    /// answers in time, everything else is not found.
    async fn fake_apiserver() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        async fn answer(request: axum::extract::Request) -> axum::response::Response {
            let json = [(http::header::CONTENT_TYPE, "application/json")];
            match request.uri().path() {
                "/api/v1/namespaces/x/configmaps" => {
                    let list =
                        r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{},"items":[]}"#;
                    (json, list).into_response()
                }
                "/api/v1/namespaces/x/configmaps/slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    StatusCode::OK.into_response()
                }
                _ => {
                    let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
                    (StatusCode::NOT_FOUND, json, status).into_response()
                }
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(answer);
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        (addr, server)
    }

    fn client_of(addr: std::net::SocketAddr, metrics: &Metrics) -> Client {
        let config = Config::new(format!("http://{addr}").parse().unwrap());
        counting_client(config, metrics).unwrap()
    }

    fn series(verb: &'static str, resource: &str, code: &str, count: u64) -> (KubeRequest, u64) {
        let labels = KubeRequest {
            verb,
            resource: resource.into(),
            code: code.into(),
        };
        (labels, count)
    }

    #[tokio::test]
    async fn counts_each_request_with_its_status() {
        let (addr, server) = fake_apiserver().await;
        let metrics = Metrics::default();
        let api: Api<ConfigMap> = Api::namespaced(client_of(addr, &metrics), "x");

        assert!(
            api.list(&Default::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(api.list(&Default::default()).await.is_ok());
        assert_eq!(api.get_opt("missing").await.unwrap(), None);
        let slow = tokio::time::timeout(Duration::from_millis(300), api.get("slow")).await;
        assert!(slow.is_err(), "the slow request answered: {slow:?}");

        assert_eq!(
            metrics.kube_requests(),
            vec![
                series("get", "configmaps", "404", 1),
                series("get", "configmaps", "error", 1),
                series("list", "configmaps", "200", 2),
            ]
        );
        server.abort();
    }

    #[tokio::test]
    async fn counts_a_request_that_cannot_connect_as_an_error() {
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let metrics = Metrics::default();
        let api: Api<ConfigMap> = Api::namespaced(client_of(closed, &metrics), "x");
        assert!(api.delete("c", &Default::default()).await.is_err());
        assert_eq!(
            metrics.kube_requests(),
            vec![series("delete", "configmaps", "error", 1)]
        );
    }
}
