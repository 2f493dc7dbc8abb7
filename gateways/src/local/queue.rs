//! The executor's queue and its Slurm port: submit, list, look up and cancel jobs.

use super::*;

/// A job waiting to start.
pub(super) struct Queued {
    pub(super) job_id: u64,
    pub(super) cancel: oneshot::Receiver<()>,
    /// What one of its nodes needs, how many, of which set, for how long.
    pub(super) wants: Wants,
}

impl Queued {
    /// A job to queue (what it wants), and what cancels it. Its body stays in its record only
    /// (read when it starts), not twice in memory.
    pub(super) fn new(job_id: u64, wants: Wants) -> (Queued, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            job_id,
            cancel: rx,
            wants,
        };
        (queued, tx)
    }
}

#[derive(Default)]
pub(super) struct Queue {
    /// In job id order (ids are handed out in submission order; two submits finishing out of
    /// order are put back in it), so a cancel finds a waiting job by binary search.
    pub(super) waiting: std::collections::VecDeque<Queued>,
    pub(super) running: usize,
}

impl Queue {
    /// Adds a job in id order: at the back but for a submit overtaken by a later one.
    pub(super) fn enqueue(&mut self, job: Queued) {
        let at = self
            .waiting
            .iter()
            .rposition(|w| w.job_id < job.job_id)
            .map_or(0, |i| i + 1);
        self.waiting.insert(at, job);
    }

    /// Takes a waiting job out, if it is waiting.
    pub(super) fn remove(&mut self, job_id: u64) -> bool {
        match self.waiting.binary_search_by_key(&job_id, |w| w.job_id) {
            Ok(i) => self.waiting.remove(i).is_some(),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl SlurmPort for LocalExecutor {
    async fn submit(&self, body: &Value) -> Result<Accepted, SlurmError> {
        let job = body
            .get("job")
            .cloned()
            .ok_or_else(|| SlurmError::Rejected(vec!["the body has no job".into()]))?;
        if !job
            .get("script")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("#!"))
        {
            return Err(SlurmError::Rejected(vec![
                "the job has no script starting with #!".into(),
            ]));
        }
        // Every path a job names must stay under the shared mount: the server opens the output
        // files, and must not be made to truncate its own database or secret.
        let efs = self.inner.settings.efs_root.clone();
        let cwd_text = job
            .get("current_working_directory")
            .and_then(Value::as_str)
            .unwrap_or(EFS_MOUNT);
        let cwd = self.confined(cwd_text, &efs);
        let mut outside = Vec::new();
        if cwd.is_none() {
            outside.push("current_working_directory");
        }
        // File names are expanded as they will be when the job runs (a stand-in for the node,
        // which is not known yet): a pattern the executor cannot expand is refused now, and so
        // is a job name that would lead `%x` out of the mount.
        let names = JobNames {
            job_id: 1,
            name: filename::job_name(&job),
            user: Some(self.inner.settings.user.name.as_str()),
            array_task: None,
            first_node: Some("node"),
        };
        for key in ["standard_output", "standard_error", "standard_input"] {
            let Some(pattern) = job.get(key).and_then(Value::as_str) else {
                continue;
            };
            let expanded = filename::expand(pattern, &names)
                .map_err(|e| SlurmError::Rejected(vec![format!("{key}: {e}")]))?;
            if cwd
                .as_ref()
                .is_some_and(|dir| self.confined(&expanded.path, dir).is_none())
            {
                outside.push(key);
            }
        }
        if !outside.is_empty() {
            return Err(SlurmError::Rejected(vec![format!(
                "{} must stay under {EFS_MOUNT} (the cluster's shared mount), without ..",
                outside.join(", ")
            )]));
        }
        let wants = self.demand(body)?;
        let mut records = self.inner.records.lock().await;
        let job_id = self.allocate_id(&records)?;
        let free = self.inner.settings.nodes.is_none() && {
            let q = self.inner.queue.lock().await;
            q.running + q.waiting.len() < self.inner.settings.slots
        };
        let mut record = Record {
            job_id,
            name: filename::job_name(&job).to_string(),
            state: JobState::Pending,
            reason: Some(if free { "None" } else { "Resources" }.into()),
            exit_code: None,
            submit_time: Utc::now(),
            start_time: None,
            end_time: None,
            comment: job
                .get("comment")
                .and_then(Value::as_str)
                .map(str::to_string),
            pid: None,
            pid_start: None,
            boot_id: None,
            node: None,
            // Kept until it starts (the queue reads it from here), so a restart can queue it again.
            body: Some(job),
            usage: None,
            changed: 0,
        };
        self.mark_changed(&mut record);
        self.persist(&record);
        records.insert(job_id, record);
        drop(records);
        let (queued, cancel) = Queued::new(job_id, wants);
        self.inner.cancels.lock().await.insert(job_id, cancel);
        self.inner.queue.lock().await.enqueue(queued);
        self.dispatch().await;
        Ok(Accepted {
            job_id,
            warnings: Vec::new(),
        })
    }

    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        Ok(self
            .inner
            .records
            .lock()
            .await
            .get(&job_id)
            .map(Record::view))
    }

    /// As slurmctld answers: every unfinished job, and finished ones for `MIN_JOB_AGE` after
    /// they ended (older ones are still found by id), so the listing grows with the queue, not
    /// with the history. For `RESTART_LISTS_ALL` after the executor opened, every job is listed:
    /// a submission whose outcome a crash kept from the log is settled from this listing (by its
    /// comment) a minute after the restart, however long ago its job ended.
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        let now = Utc::now();
        let forgotten = if now - self.inner.opened_at < RESTART_LISTS_ALL {
            DateTime::<Utc>::MIN_UTC
        } else {
            now - MIN_JOB_AGE
        };
        Ok(self
            .inner
            .records
            .lock()
            .await
            .values()
            .filter(|r| r.end_time.is_none_or(|end| end > forgotten))
            .map(Record::view)
            .collect())
    }

    fn jobs_version(&self) -> Option<u64> {
        Some(
            self.inner
                .changes
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// The records changed after `version` (read under the records' lock, so none is missed
    /// and the version returned covers exactly what is listed).
    async fn jobs_since(&self, version: u64) -> Result<Option<JobsDelta>, SlurmError> {
        let records = self.inner.records.lock().await;
        let now = self
            .inner
            .changes
            .load(std::sync::atomic::Ordering::Acquire);
        let by_change = self
            .inner
            .by_change
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(Some(JobsDelta {
            version: now,
            jobs: by_change
                .range(version.saturating_add(1)..)
                .filter_map(|(_, id)| records.get(id).map(Record::view))
                .collect(),
        }))
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        if !self.inner.records.lock().await.contains_key(&job_id) {
            return Err(SlurmError::UnknownJob(job_id));
        }
        let queued = self.inner.queue.lock().await.remove(job_id);
        if queued {
            // Never started: it ends here, as Slurm ends a pending job it cancels.
            self.inner.cancels.lock().await.remove(&job_id);
            self.update(job_id, |r| {
                r.state = JobState::Cancelled;
                r.reason = Some("cancelled while pending".into());
                r.end_time = Some(Utc::now());
                r.body = None;
            })
            .await;
        } else if let Some(tx) = self.inner.cancels.lock().await.remove(&job_id) {
            let _ = tx.send(());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(job_id: u64) -> Queued {
        let one = Demand {
            cpus: 1,
            memory_mib: 1,
        };
        let set = NodeSet {
            family: Family::Compute,
            size: Size::Xs,
        };
        Queued::new(
            job_id,
            Wants {
                demand: one,
                nodes: 1,
                set,
                limit: None,
            },
        )
        .0
    }

    #[test]
    fn the_queue_stays_in_id_order_and_a_cancel_finds_its_job() {
        let mut q = Queue::default();
        // Submit 3 finished after submit 4; 1 after everything.
        for id in [2, 4, 3, 5, 1] {
            q.enqueue(queued(id));
        }
        let ids = |q: &Queue| q.waiting.iter().map(|w| w.job_id).collect::<Vec<_>>();
        assert_eq!(ids(&q), [1, 2, 3, 4, 5]);
        assert!(q.remove(3));
        assert!(!q.remove(3), "not waiting any more");
        assert!(!q.remove(9), "never waited");
        assert_eq!(ids(&q), [1, 2, 4, 5]);
    }
}
