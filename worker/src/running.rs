//! The tasks this process is running right now, by work item: the
//! heartbeat renews their leases (and stops the attempts whose items
//! another worker took over), the cancel listener stops them, and shutdown
//! waits for them.
//!
//! An entry lives exactly as long as its [`RunningGuard`]: registered before
//! the attempt starts (so its lease is renewed from the first moment) and
//! removed when the guard drops, whatever way the attempt ended. A work item
//! can be registered twice: the reaper may hand this process back an item
//! it is still running, once the older attempt's lease expired (a Redis
//! outage longer than the lease). The newer registration replaces the older
//! one, whose attempt is told its lease is lost, and each guard removes only
//! its own registration, never the one that replaced it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use savestream_shared::task::TaskId;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct RunningTasks {
    by_job: Arc<Mutex<HashMap<String, Entry>>>,
    /// The number the next registration gets, so a guard knows its own entry.
    next_registration: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Entry {
    task_id: TaskId,
    registration: u64,
    signals: AttemptSignals,
}

impl Entry {
    /// Whether this entry is `holder`'s attempt, not yet ending.
    fn is_writing(&self, holder: &Holder) -> bool {
        self.registration == holder.registration && !self.signals.is_ending()
    }
}

/// What tells one attempt to stop, and what the attempt tells the heartbeat.
#[derive(Clone, Debug, Default)]
pub struct AttemptSignals {
    /// Canceled when the task is canceled while running: the attempt stops
    /// and removes the task's partial files.
    pub cancel: CancellationToken,
    /// Canceled when another attempt holds the work item now (another
    /// worker took it over, or this one was handed it again): the attempt
    /// stops writing at once and leaves the partial files to the new
    /// holder.
    pub lease_lost: CancellationToken,
    /// Set when the attempt sends the transition that ends it (which
    /// acknowledges its work item): from then on the item is expected to
    /// be missing from the consumer's pending entries, and the attempt no
    /// longer writes into its partial files.
    ending: Arc<AtomicBool>,
}

impl AttemptSignals {
    /// Signals whose cancel is `cancel` (for attempts driven by hand).
    pub fn with_cancel(cancel: CancellationToken) -> AttemptSignals {
        AttemptSignals {
            cancel,
            ..AttemptSignals::default()
        }
    }

    /// Marks the attempt as ending: its work item is about to be
    /// acknowledged by its own transition, which is no sign of a takeover.
    pub fn ending(&self) {
        self.ending.store(true, Ordering::Release);
    }

    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }
}

/// The attempt that held a work item here when [`RunningTasks::holders`] looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub task_id: TaskId,
    registration: u64,
}

impl RunningTasks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every
        // critical section is a single insert, remove or read.
        self.by_job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that this process holds work item `job_id` of `task_id`. An
    /// older attempt of the same item still registered here has lost its
    /// lease (the item was claimed again after it expired): it is told to
    /// stop, and its guard no longer removes anything.
    pub fn register(&self, job_id: &str, task_id: &TaskId) -> RunningGuard {
        let signals = AttemptSignals::default();
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let replaced = self.lock().insert(
            job_id.to_owned(),
            Entry {
                task_id: task_id.clone(),
                registration,
                signals: signals.clone(),
            },
        );
        if let Some(replaced) = replaced {
            tracing::warn!(
                job_id,
                task_id = %replaced.task_id,
                "this worker was handed back a work item it was still running (its lease had expired): stopping the older attempt"
            );
            replaced.signals.lease_lost.cancel();
        }
        RunningGuard {
            tasks: self.clone(),
            job_id: job_id.to_owned(),
            registration,
            signals,
        }
    }

    /// Every work item held now, with the attempt that holds it: the items
    /// whose leases the heartbeat renews, and the holders it may stop when
    /// an item turns out to be taken over. The holder is taken before the
    /// renewal is sent, so an item this process is handed again while the
    /// renewal is in flight keeps its new attempt.
    pub fn holders(&self) -> Vec<(String, Holder)> {
        self.lock()
            .iter()
            .map(|(job_id, entry)| {
                let holder = Holder {
                    task_id: entry.task_id.clone(),
                    registration: entry.registration,
                };
                (job_id.clone(), holder)
            })
            .collect()
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

    /// Whether the attempt `holder` names still holds `job_id` and may be
    /// writing: not once it ended, began to send the transition that ends
    /// it, or was replaced.
    pub fn is_writing(&self, job_id: &str, holder: &Holder) -> bool {
        self.lock()
            .get(job_id)
            .is_some_and(|entry| entry.is_writing(holder))
    }

    /// Tells the attempt `holder` names that its lease is lost, unless it
    /// has ended, begun to end, or been replaced since. Returns whether it
    /// was told.
    pub fn lose(&self, job_id: &str, holder: &Holder) -> bool {
        match self.lock().get(job_id) {
            Some(entry) if entry.is_writing(holder) => {
                entry.signals.lease_lost.cancel();
                true
            }
            _ => false,
        }
    }

    /// Tells the attempt of `task_id` to stop because the task was canceled.
    /// Returns whether this process was running it.
    pub fn cancel(&self, task_id: &TaskId) -> bool {
        let mut found = false;
        for entry in self.lock().values().filter(|entry| &entry.task_id == task_id) {
            entry.signals.cancel.cancel();
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

/// A registered work item; dropping it unregisters it, unless a newer
/// registration of the same item replaced it.
#[derive(Debug)]
pub struct RunningGuard {
    tasks: RunningTasks,
    job_id: String,
    registration: u64,
    pub signals: AttemptSignals,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut by_job = self.tasks.lock();
        if by_job
            .get(&self.job_id)
            .is_some_and(|entry| entry.registration == self.registration)
        {
            by_job.remove(&self.job_id);
        }
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
        assert_eq!(job_ids(&running), vec!["1-0".to_owned()]);
        assert_eq!(running.task_ids(), vec![task_id.to_string()]);

        assert!(running.cancel(&task_id));
        assert!(guard.signals.cancel.is_cancelled());
        assert!(!guard.signals.lease_lost.is_cancelled());
        assert!(!running.cancel(&TaskId::generate()));

        drop(guard);
        assert!(running.is_empty());
        assert!(!running.cancel(&task_id));
    }

    #[test]
    fn a_second_registration_of_an_item_stops_the_first_whose_guard_then_removes_nothing() {
        let running = RunningTasks::default();
        let task_id = TaskId::generate();
        let first = running.register("1-0", &task_id);

        let second = running.register("1-0", &task_id);

        assert!(first.signals.lease_lost.is_cancelled());
        assert!(!second.signals.lease_lost.is_cancelled());
        drop(first);
        assert_eq!(job_ids(&running), vec!["1-0".to_owned()]);
        assert!(running.cancel(&task_id));
        assert!(second.signals.cancel.is_cancelled());
        drop(second);
        assert!(running.is_empty());
    }

    #[test]
    fn a_lost_lease_reaches_only_an_attempt_that_is_not_ending() {
        let running = RunningTasks::default();
        let task_id = TaskId::generate();
        let writing = running.register("1-0", &task_id);
        let ending = running.register("2-0", &task_id);
        ending.signals.ending();
        let seen = holder_of(&running, "1-0");
        let seen_ending = holder_of(&running, "2-0");

        assert!(!running.is_writing("2-0", &seen_ending));
        assert!(!running.lose("2-0", &seen_ending));
        assert!(!ending.signals.lease_lost.is_cancelled());
        assert!(running.is_writing("1-0", &seen));
        assert!(running.lose("1-0", &seen));
        assert!(writing.signals.lease_lost.is_cancelled());
        assert!(!writing.signals.cancel.is_cancelled());
    }

    #[test]
    fn a_holder_seen_before_the_item_was_handed_back_cannot_stop_the_new_attempt() {
        // The heartbeat looks at the holders, sends the renewal, and hears
        // the item is no longer pending here; meanwhile the reaper handed
        // the item back to this process and a new attempt registered it.
        let running = RunningTasks::default();
        let task_id = TaskId::generate();
        let _older = running.register("1-0", &task_id);
        let seen = holder_of(&running, "1-0");

        let newer = running.register("1-0", &task_id);

        assert!(!running.is_writing("1-0", &seen));
        assert!(!running.lose("1-0", &seen));
        assert!(!newer.signals.lease_lost.is_cancelled());
    }

    fn job_ids(running: &RunningTasks) -> Vec<String> {
        running.holders().into_iter().map(|(job_id, _)| job_id).collect()
    }

    fn holder_of(running: &RunningTasks, job_id: &str) -> Holder {
        let holders = running.holders();
        let (_, holder) = holders
            .into_iter()
            .find(|(held, _)| held == job_id)
            .expect("the item is registered");
        holder
    }
}
