//! The crate's error type.

/// Everything that can go wrong in Orrery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{what} not found: {name}")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    DataStore(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Something the operation needs is still on its way; it is retried.
    #[error("waiting: {0}")]
    Pending(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("CSI: {}: {}", .0.code(), .0.message())]
    Csi(Box<tonic::Status>),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short CamelCase name of the kind of failure: the metric label, the Event reason and the
    /// reason of the Degraded condition.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(e)) if e.code == 422 => "Rejected",
            Error::Kube(kube::Error::Api(e)) if e.code >= 500 => "KubeApiUnavailable",
            Error::Kube(_) => "KubeApi",
            Error::Pki(_) => "Pki",
            Error::Etcd(_) => "Etcd",
            Error::Json(_) | Error::Yaml(_) => "Serialization",
            Error::Invalid { .. } => "InvalidSpec",
            Error::NotFound { .. } => "NotFound",
            Error::DataStore(_) => "DataStore",
            Error::Io(_) => "Io",
            Error::Pending(_) => "Pending",
            Error::Grpc(_) => "Grpc",
            Error::Csi(_) => "Csi",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The outcome of a reconcile run through kube's finalizer helper. A finalizer removal that finds
/// the object gone is no failure: a reconcile of an older cached copy (woken by a child's
/// deletion) repeated the cleanup another reconcile had finished.
pub fn finalized<T>(
    result: std::result::Result<T, kube::runtime::finalizer::Error<Error>>,
    gone: T,
) -> Result<T> {
    match result {
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(e)))
            if e.code == 404 =>
        {
            Ok(gone)
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    }
}
