//! The running cloud controllers, one task per tenant: started once, started again when what
//! they were started with changes (the admin kubeconfig, the settings) or when the task ended,
//! stopped when the tenant goes or switches the add-on off.

use crate::api::TenantControlPlane;
use futures::future::BoxFuture;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Key = ObjectRef<TenantControlPlane>;

struct Running {
    /// Hash of what the task was started with.
    hash: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The tasks, by tenant. Each task's token is a child of the process's shutdown token.
pub struct Runners {
    shutdown: CancellationToken,
    running: Mutex<HashMap<Key, Running>>,
}

impl Runners {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            running: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key`'s task runs, started with `hash`.
    pub fn is_current(&self, key: &Key, hash: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|r| r.hash == hash && !r.task.is_finished())
    }

    /// Starts `key`'s task from `start` (given the token that stops it), stopping the one it
    /// replaces.
    pub fn start(
        &self,
        key: Key,
        hash: String,
        start: impl FnOnce(CancellationToken) -> BoxFuture<'static, ()>,
    ) {
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(start(stop.clone()));
        let old = self.lock().insert(key, Running { hash, stop, task });
        if let Some(old) = old {
            old.stop.cancel();
        }
    }

    /// Stops `key`'s task; whether there was one.
    pub fn stop(&self, key: &Key) -> bool {
        let old = self.lock().remove(key);
        old.map(|r| r.stop.cancel()).is_some()
    }

    /// Stops the tasks of the tenants `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.lock().retain(|key, r| {
            let kept = keep(key);
            if !kept {
                r.stop.cancel();
            }
            kept
        });
    }

    /// Stops every task and waits for them to end.
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in &all {
            r.stop.cancel();
        }
        for r in all {
            let _ = r.task.await;
        }
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A task that counts how often it started and stopped.
    fn counted(
        started: Arc<AtomicUsize>,
        stopped: Arc<AtomicUsize>,
    ) -> impl FnOnce(CancellationToken) -> BoxFuture<'static, ()> {
        move |stop| {
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                stop.cancelled().await;
                stopped.fetch_add(1, Ordering::SeqCst);
            }
            .boxed()
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_runner_is_started_once_and_again_only_when_its_inputs_change() {
        let shutdown = CancellationToken::new();
        let runners = Runners::new(shutdown.clone());
        let (started, stopped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        assert!(!runners.is_current(&a, "h1"));
        runners.start(
            a.clone(),
            "h1".into(),
            counted(started.clone(), stopped.clone()),
        );
        assert!(runners.is_current(&a, "h1"));
        assert!(!runners.is_current(&a, "h2"), "a changed kubeconfig");
        runners.start(
            a.clone(),
            "h2".into(),
            counted(started.clone(), stopped.clone()),
        );
        runners.start(
            b.clone(),
            "h1".into(),
            counted(started.clone(), stopped.clone()),
        );
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            1,
            "the replaced task stopped"
        );
        assert_eq!(runners.len(), 2);

        assert!(runners.stop(&a));
        assert!(!runners.stop(&a), "stopped once");
        settle().await;
        assert_eq!(stopped.load(Ordering::SeqCst), 2);

        runners.start(
            a.clone(),
            "h2".into(),
            counted(started.clone(), stopped.clone()),
        );
        runners.retain(|k| k == &a);
        settle().await;
        assert_eq!(stopped.load(Ordering::SeqCst), 3, "b's tenant is gone");
        assert!(runners.is_current(&a, "h2") && !runners.is_current(&b, "h1"));

        shutdown.cancel();
        runners.stop_all().await;
        assert_eq!(stopped.load(Ordering::SeqCst), 4);
        assert!(runners.is_empty());
    }

    #[tokio::test]
    async fn a_runner_that_ended_is_not_current() {
        let runners = Runners::new(CancellationToken::new());
        let a = ObjectRef::new("a").within("ns");
        runners.start(a.clone(), "h".into(), |_| async {}.boxed());
        settle().await;
        assert!(
            !runners.is_current(&a, "h"),
            "started again by the next reconcile"
        );
    }
}
