//! Supervision of serving tasks: a task that should run for the life of the process
//! (a receive loop, a QUIC accept loop, a daemon loop) and ends anyway, by returning or
//! by panicking, is reported once on a channel, so the process can exit non-zero with
//! a clear message and a service manager restart it, instead of staying up but deaf.
//!
//! Aborting a supervised task (shutdown) is not a failure and is not reported.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A serving task ended while the process was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDied {
    /// The task's name (e.g. `server.small_request`).
    pub task: &'static str,
    /// How it ended: "returned" or the panic's message.
    pub how: String,
}

impl std::error::Error for TaskDied {}

impl std::fmt::Display for TaskDied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "serving task {} stopped ({}); exiting so the service manager restarts the process",
            self.task, self.how
        )
    }
}

/// Hands out supervised tasks and receives their deaths.
#[derive(Debug)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<TaskDied>,
    rx: mpsc::UnboundedReceiver<TaskDied>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx }
    }
}

/// Aborts the task when dropped (when its watcher is aborted at shutdown).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    /// A handle that supervises more tasks into the same channel.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            tx: self.tx.clone(),
        }
    }

    /// Spawns `task` under supervision (see [`Spawner::spawn`]).
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawner().spawn(name, task)
    }

    /// Supervises an already spawned task (see [`Spawner::watch`]).
    pub fn watch(&self, name: &'static str, task: JoinHandle<()>) -> JoinHandle<()> {
        self.spawner().watch(name, task)
    }

    /// Waits for the first supervised task to die. Pending forever if none does.
    pub async fn died(&mut self) -> TaskDied {
        match self.rx.recv().await {
            Some(d) => d,
            // Unreachable while `self` holds a sender; keep waiting rather than invent a death.
            None => std::future::pending().await,
        }
    }

    /// A death already reported, if any (does not wait).
    pub fn try_died(&mut self) -> Option<TaskDied> {
        self.rx.try_recv().ok()
    }
}

/// Supervises tasks into one [`Supervisor`]'s channel; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: mpsc::UnboundedSender<TaskDied>,
}

impl Spawner {
    /// Spawns `task` under supervision. The returned handle is the watcher's: aborting
    /// it aborts the task, and that is not reported.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = fault::inject(name, task);
        self.watch(name, tokio::spawn(task))
    }

    /// Supervises the running `task`: if it returns or panics, that is reported. The
    /// returned handle is the watcher's: aborting it aborts `task`, and that is not
    /// reported.
    pub fn watch(&self, name: &'static str, task: JoinHandle<()>) -> JoinHandle<()> {
        let tx = self.tx.clone();
        // The guard exists before the watcher first runs: aborting a watcher that was
        // never polled drops it, and with it the task.
        let mut task = AbortOnDrop(task);
        tokio::spawn(async move {
            let how = match (&mut task.0).await {
                Ok(()) => "returned".to_owned(),
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!("panicked: {message}")
                }
                // Aborted from elsewhere: a shutdown, not a death.
                Err(_) => return,
            };
            tracing::error!(task = name, how = %how, "a serving task stopped");
            let _ = tx.send(TaskDied { task: name, how });
        })
    }
}

/// Test-only fault injection, compiled into debug builds only (release builds, which
/// are what is packaged and installed, cannot reach it): with
/// `BRANCHLINE_TEST_FAIL_TASK=<task name>` in the environment, that supervised task
/// panics as it starts, so tests can check with a real process that the death of a
/// serving task takes the process down.
mod fault {
    use std::future::Future;
    use std::pin::Pin;

    /// The environment variable naming the task to fail (debug builds only).
    #[cfg(debug_assertions)]
    const VAR: &str = "BRANCHLINE_TEST_FAIL_TASK";

    pub(super) fn inject<F>(name: &'static str, task: F) -> Pin<Box<dyn Future<Output = ()> + Send>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        #[cfg(debug_assertions)]
        if std::env::var(VAR).is_ok_and(|v| v == name) {
            return Box::pin(async move {
                tokio::task::yield_now().await;
                panic!("{VAR}={name}: fault injected for a test");
            });
        }
        let _ = name;
        Box::pin(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_returns_or_panics_is_reported_and_an_aborted_one_is_not() {
        let mut sup = Supervisor::default();
        let aborted = sup.spawn("aborted", std::future::pending());
        aborted.abort();
        let _ = aborted.await;
        sup.spawn("returns", async {});
        let died = sup.died().await;
        assert_eq!(died.task, "returns");
        assert_eq!(died.how, "returned");
        let inner = tokio::spawn(async { panic!("boom") });
        sup.watch("panics", inner);
        let died = sup.died().await;
        assert_eq!(died.task, "panics");
        assert!(died.how.contains("boom"), "{}", died.how);
        assert!(died.to_string().contains("restarts"));
        assert!(
            sup.try_died().is_none(),
            "the aborted task was not reported"
        );
    }

    #[tokio::test]
    async fn aborting_the_watcher_aborts_the_task() {
        let sup = Supervisor::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = sup.spawn("holds", async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        watcher.abort();
        // The task's end drops its sender.
        assert!(rx.await.is_err());
    }
}
