//! The tasks this process is running right now, by work item: the
//! heartbeat renews their leases, the cancel listener stops them, and
//! shutdown waits for them.
//!
//! An entry lives exactly as long as its [`RunningGuard`]: registered before
//! the attempt starts (so its lease is renewed from the first moment) and
//! removed when the guard drops, whatever way the attempt ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use savestream_shared::task::TaskId;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct RunningTasks {
    by_job: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    task_id: TaskId,
    cancel: CancellationToken,
}

impl RunningTasks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every
        // critical section is a single insert, remove or read.
        self.by_job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that this process holds work item `job_id` of `task_id`.
    pub fn register(&self, job_id: &str, task_id: &TaskId) -> RunningGuard {
        let cancel = CancellationToken::new();
        self.lock().insert(
            job_id.to_owned(),
            Entry {
                task_id: task_id.clone(),
                cancel: cancel.clone(),
            },
        );
        RunningGuard {
            tasks: self.clone(),
            job_id: job_id.to_owned(),
            cancel,
        }
    }

    /// The work items whose leases must be renewed.
    pub fn job_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The tasks being run, for the registry (`WorkerInfo::tasks`).
    pub fn task_ids(&self) -> Vec<String> {
        let mut task_ids: Vec<String> = self
            .lock()
            .values()
            .map(|entry| entry.task_id.to_string())
            .collect();
        task_ids.sort();
        task_ids.dedup();
        task_ids
    }

    /// Tells the attempt of `task_id` to stop because the task was canceled.
    /// Returns whether this process was running it.
    pub fn cancel(&self, task_id: &TaskId) -> bool {
        let mut found = false;
        for entry in self.lock().values().filter(|entry| &entry.task_id == task_id) {
            entry.cancel.cancel();
            found = true;
        }
        found
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered work item; dropping it unregisters it.
#[derive(Debug)]
pub struct RunningGuard {
    tasks: RunningTasks,
    job_id: String,
    /// Canceled when the task is canceled while running.
    pub cancel: CancellationToken,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.tasks.lock().remove(&self.job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_registers_until_it_drops_and_cancel_reaches_its_token() {
        let running = RunningTasks::default();
        let task_id = TaskId::generate();
        let guard = running.register("1-0", &task_id);
        assert_eq!(running.job_ids(), vec!["1-0".to_owned()]);
        assert_eq!(running.task_ids(), vec![task_id.to_string()]);

        assert!(running.cancel(&task_id));
        assert!(guard.cancel.is_cancelled());
        assert!(!running.cancel(&TaskId::generate()));

        drop(guard);
        assert!(running.is_empty());
        assert!(!running.cancel(&task_id));
    }
}
