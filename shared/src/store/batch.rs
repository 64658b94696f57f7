//! Batched transitions: many tasks per function call.
//!
//! One `FCALL` costs Redis a script invocation and the client a round trip;
//! at tens of thousands of tasks a second those fixed costs dominate, so the
//! queue's hot path (create, start, complete) also comes in batches. Each
//! task in a batch succeeds or fails on its own, with the same rules as the
//! single calls: the batch functions apply the very same per-task functions.

use fred::prelude::{HashesInterface, KeysInterface};
use fred::types::Value;

use super::queue::{Job, Lease};
use super::{idempotency_digest, Created, NewTask, Store, StoreError};
use crate::task::TaskId;

impl Store {
    /// KEYS of a batch call: the shared keys, then each task's hash.
    fn batch_keys<'a>(&self, task_ids: impl Iterator<Item = &'a TaskId>) -> Vec<String> {
        let keys = self.keys();
        let mut batch_keys = vec![
            keys.events(),
            keys.jobs(),
            keys.queued(),
            keys.running(),
            keys.delayed(),
        ];
        for task_id in task_ids {
            batch_keys.push(keys.task(task_id));
        }
        batch_keys
    }

    async fn call_batch(
        &self,
        function: &str,
        task_ids: &[&TaskId],
        args: Vec<String>,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        let Some(first) = task_ids.first() else {
            return Ok(Vec::new());
        };
        let keys = self.batch_keys(task_ids.iter().copied());
        let reply = self.call(first, function, keys, args).await?;
        self.per_task(function, task_ids, reply)
    }

    /// A batch call's answer split into each task's own result: an error
    /// comes as the text `ERR <code> <details>` in the task's slot.
    fn per_task(
        &self,
        function: &str,
        task_ids: &[&TaskId],
        reply: Value,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        let results = reply.into_array();
        if results.len() != task_ids.len() {
            return Err(StoreError::Corrupt(format!(
                "{function} answered {} results for {} tasks",
                results.len(),
                task_ids.len()
            )));
        }
        Ok(results
            .into_iter()
            .zip(task_ids)
            .map(|(result, task_id)| {
                match result
                    .as_str()
                    .as_deref()
                    .and_then(|text| text.strip_prefix("ERR "))
                {
                    Some(details) => Err(StoreError::from_library_error(task_id, details)
                        .unwrap_or_else(|| StoreError::Corrupt(details.to_owned()))),
                    None => Ok(result),
                }
            })
            .collect())
    }

    /// The first of `requests` whose idempotency key was used within
    /// [`IDEMPOTENCY_WINDOW`](super::IDEMPOTENCY_WINDOW) for a different
    /// request, by its place in `requests`, with the task that use created.
    /// Read before a batch is created, so that a batch refused for one
    /// reused key is refused before any of its tasks is written: the
    /// library's `create` refuses a reused key too, but each task of a call
    /// on its own, after the tasks before it. (A key taken between this
    /// read and the create is still refused there, for its task alone.)
    pub async fn first_reused_key<'a>(
        &self,
        requests: impl IntoIterator<Item = (&'a NewTask, Option<&'a str>)>,
    ) -> Result<Option<(usize, TaskId)>, StoreError> {
        let keyed: Vec<(usize, &NewTask, String)> = requests
            .into_iter()
            .enumerate()
            .filter_map(|(index, (new_task, key))| {
                key.map(|key| (index, new_task, self.keys().idempotency(&idempotency_digest(key))))
            })
            .collect();
        if keyed.is_empty() {
            return Ok(None);
        }
        let pipeline = self.client().pipeline();
        for (_, _, key) in &keyed {
            let _: () = pipeline.get(key.as_str()).await?;
        }
        let firsts: Vec<Value> = pipeline.all().await?;
        let used: Vec<(usize, &NewTask, TaskId)> = keyed
            .iter()
            .zip(firsts)
            .filter_map(|((index, new_task, _), first)| {
                let first = TaskId::parse(&first.as_string()?).ok()?;
                Some((*index, *new_task, first))
            })
            .collect();
        if used.is_empty() {
            return Ok(None);
        }
        let pipeline = self.client().pipeline();
        for (_, _, first) in &used {
            let _: () = pipeline.hget(self.keys().task(first), "request").await?;
        }
        let requests: Vec<Value> = pipeline.all().await?;
        Ok(used
            .into_iter()
            .zip(requests)
            .find(|((_, new_task, _), request)| {
                // No hash: the first task is gone, and the key creates anew.
                request
                    .as_string()
                    .is_some_and(|request| request != new_task.request_field())
            })
            .map(|((index, _, first), _)| (index, first)))
    }

    /// Creates many tasks in one call, each as [`Store::create`] creates
    /// one: a task with an idempotency key already used within
    /// [`IDEMPOTENCY_WINDOW`](super::IDEMPOTENCY_WINDOW) answers the first
    /// task instead, also when the first is earlier in the same batch.
    pub async fn create_batch<'a>(
        &self,
        requests: impl IntoIterator<Item = (&'a NewTask, Option<&'a str>)>,
    ) -> Result<Vec<Result<Created, StoreError>>, StoreError> {
        let keys = self.keys();
        let mut batch_keys = self.batch_keys(std::iter::empty());
        let mut task_ids: Vec<&TaskId> = Vec::new();
        let mut new_tasks: Vec<&NewTask> = Vec::new();
        let mut args = Vec::new();
        for (new_task, idempotency_key) in requests {
            task_ids.push(&new_task.task_id);
            new_tasks.push(new_task);
            batch_keys.push(keys.task(&new_task.task_id));
            if let Some(key) = idempotency_key {
                batch_keys.push(keys.idempotency(&idempotency_digest(key)));
            }
            args.extend(new_task.create_args(idempotency_key.is_some()));
        }
        let Some(first) = task_ids.first() else {
            return Ok(Vec::new());
        };
        let reply = self
            .call(first, "savestream_create_batch", batch_keys, args)
            .await?;
        Ok(self
            .per_task("savestream_create_batch", &task_ids, reply)?
            .into_iter()
            .zip(new_tasks)
            .map(|(answer, new_task)| Created::from_answer(answer, new_task))
            .collect())
    }

    /// Starts the attempts that many work items stand for, as
    /// [`Store::start_job`] does one: the task hashes of the items that do
    /// not carry their task's fields are read with `HGETALL`s pipelined
    /// behind the call. The answers are in the order of `jobs`; an item
    /// that names no valid task is answered `Corrupt` and not sent.
    pub async fn start_batch(
        &self,
        jobs: &[Job],
        worker: &str,
    ) -> Result<Vec<Result<Lease, StoreError>>, StoreError> {
        let named: Vec<(&Job, &TaskId)> = jobs
            .iter()
            .filter_map(|job| job.task_id.as_ref().ok().map(|task_id| (job, task_id)))
            .collect();
        let mut started = Vec::with_capacity(named.len());
        if let Some((_, anchor)) = named.first() {
            let task_ids: Vec<&TaskId> = named.iter().map(|(_, task_id)| *task_id).collect();
            let to_read: Vec<&TaskId> = named
                .iter()
                .filter(|(job, _)| job.carried_for_start().is_none())
                .map(|(_, task_id)| *task_id)
                .collect();
            let mut args = Vec::with_capacity(named.len() * 3);
            for (job, task_id) in &named {
                args.extend([task_id.to_string(), job.job_id.clone(), worker.to_owned()]);
            }
            let keys = self.batch_keys(task_ids.iter().copied());
            let (reply, hashes) = self
                .call_then_read(anchor, &to_read, "savestream_start_batch", keys, args)
                .await?;
            let results = self.per_task("savestream_start_batch", &task_ids, reply)?;
            let mut hashes = hashes.into_iter();
            for (result, (job, task_id)) in results.into_iter().zip(&named) {
                let carried = job.carried_for_start();
                // The hashes come in the order of the items that needed one.
                let read = if carried.is_none() { hashes.next() } else { None };
                started.push(match result {
                    Ok(reply) => {
                        self.lease_of_start(task_id, &job.job_id, worker, carried, reply, read)
                            .await
                    }
                    Err(error) => Err(error),
                });
            }
        }
        let mut started = started.into_iter();
        Ok(jobs
            .iter()
            .map(|job| match &job.task_id {
                Ok(_) => started.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt(format!(
                        "work item {} was not started",
                        job.job_id
                    )))
                }),
                Err(raw) => Err(super::queue::unnamed_task(&job.job_id, raw)),
            })
            .collect())
    }

    /// Completes many attempts in one call, as [`Store::complete`] does one.
    pub async fn complete_batch(
        &self,
        completions: &[(&Lease, Option<u64>, &str)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let task_ids: Vec<&TaskId> = completions.iter().map(|(lease, _, _)| &lease.task.id).collect();
        let retention_ms = self.retention_ms();
        let mut args = Vec::with_capacity(completions.len() * 5);
        for (lease, size, path) in completions {
            args.extend([
                lease.task.id.to_string(),
                lease.attempt.to_string(),
                size.map(|size| size.to_string()).unwrap_or_default(),
                (*path).to_owned(),
                retention_ms.clone(),
            ]);
        }
        let results = self
            .call_batch("savestream_complete_batch", &task_ids, args)
            .await?;
        Ok(results.into_iter().map(|result| result.map(|_| ())).collect())
    }
}
