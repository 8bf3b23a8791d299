//! Why a reconcile stopped before its end: one type for every step, so each step reads `?`.

use crate::Error;
use std::time::Duration;

/// How soon a blocked reconcile looks again when nothing it watches changes.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(5);

/// A reconcile that did not reach its end.
#[derive(Debug)]
pub enum Stop {
    /// Waiting on something outside the reconcile, or a spec that cannot work: shown in a
    /// condition of the object and retried after `retry` (`None`: when a watched object changes,
    /// else at the periodic resync).
    Blocked(Blocked),
    /// An unexpected failure: a Degraded condition, a Warning Event, and a retry with backoff.
    Failed(Error),
}

/// A known reason to stop, told to the user in condition `condition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub condition: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub retry: Option<Duration>,
}

impl Blocked {
    /// Blocked on something that will change by itself (an address, a pod): looked at again soon.
    pub fn waiting(
        condition: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            condition,
            reason,
            message: message.into(),
            retry: Some(BLOCKED_RETRY),
        }
    }

    /// Blocked until the user changes something: looked at again when a watched object changes,
    /// else only at the periodic resync (never retried hot).
    pub fn until_changed(
        condition: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            retry: None,
            ..Self::waiting(condition, reason, message)
        }
    }
}

impl Stop {
    /// A short CamelCase name of what stopped the reconcile: the metric label and Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Stop::Blocked(b) => b.reason,
            Stop::Failed(e) => e.category(),
        }
    }
}

impl From<Blocked> for Stop {
    fn from(b: Blocked) -> Self {
        Stop::Blocked(b)
    }
}

impl<E: Into<Error>> From<E> for Stop {
    /// A write refused because the namespace is being deleted is no failure: the owner goes with
    /// it, and retrying writes there (with Warning Events it would refuse too) only makes noise.
    fn from(e: E) -> Self {
        let e = e.into();
        if is_namespace_terminating(&e) {
            return Stop::Blocked(Blocked::waiting(
                crate::conditions::READY,
                "NamespaceTerminating",
                "the namespace is being deleted; nothing more is applied in it",
            ));
        }
        Stop::Failed(e)
    }
}

fn is_namespace_terminating(e: &Error) -> bool {
    matches!(e, Error::Kube(kube::Error::Api(s)) if s.code == 403 && s.message.contains("because it is being terminated"))
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Blocked(b) => write!(f, "{}: {}", b.reason, b.message),
            Stop::Failed(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_names_the_reason_or_the_error() {
        let waiting = Stop::from(Blocked::waiting(
            "Ready",
            "WaitingForEndpoint",
            "no address",
        ));
        assert_eq!(waiting.category(), "WaitingForEndpoint");
        let invalid = Stop::from(Error::Invalid {
            field: "spec.x".into(),
            reason: "bad".into(),
        });
        assert_eq!(invalid.category(), "InvalidSpec");
        assert_eq!(invalid.to_string(), "invalid spec.x: bad");
        let until = Blocked::until_changed("Ready", "InvalidSpec", "spec.x: bad");
        assert_eq!(until.retry, None);
        assert_eq!(
            Blocked::waiting("Ready", "R", "m").retry,
            Some(BLOCKED_RETRY)
        );
        let terminating = kube::Error::Api(
            kube::core::Status::failure(
                "secrets \"t-ca\" is forbidden: unable to create new content in namespace ns because it is being terminated",
                "Forbidden",
            )
            .with_code(403)
            .boxed(),
        );
        assert_eq!(Stop::from(terminating).category(), "NamespaceTerminating");
        let forbidden = kube::Error::Api(
            kube::core::Status::failure("secrets is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        assert_eq!(Stop::from(forbidden).category(), "KubeApi");
    }
}
