//! The job lifecycle: Slurm's state names, the transitions Clusterra accepts, and the decisions
//! about a job (may this caller cancel it?). Pure: given past events, decide new ones.

use serde::{Deserialize, Serialize};

/// A job's lifecycle state, named as Slurm names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Running,
    Suspended,
    Completing,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    NodeFail,
    Preempted,
    BootFail,
    Deadline,
    OutOfMemory,
}

impl JobState {
    pub const ALL: [JobState; 13] = [
        JobState::Pending,
        JobState::Running,
        JobState::Suspended,
        JobState::Completing,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Timeout,
        JobState::NodeFail,
        JobState::Preempted,
        JobState::BootFail,
        JobState::Deadline,
        JobState::OutOfMemory,
    ];

    /// Slurm's name, e.g. `NODE_FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Suspended => "SUSPENDED",
            JobState::Completing => "COMPLETING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::Timeout => "TIMEOUT",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Preempted => "PREEMPTED",
            JobState::BootFail => "BOOT_FAIL",
            JobState::Deadline => "DEADLINE",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
        }
    }

    /// Reads a Slurm `job_state` array (v0.0.44): the first base state is the lifecycle state,
    /// the rest are flags. Requeue states count as pending; unknown names are `None`.
    pub fn from_slurm(states: &[String]) -> Option<JobState> {
        states.iter().find_map(|s| match s.as_str() {
            "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => {
                Some(JobState::Pending)
            }
            "STOPPED" => Some(JobState::Suspended),
            other => JobState::ALL.into_iter().find(|st| st.as_str() == other),
        })
    }

    /// Finished: no transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            JobState::Pending | JobState::Running | JobState::Suspended | JobState::Completing
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition or a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRuleError {
    #[error("job is already {from}; it cannot become {to}")]
    ImpossibleTransition { from: JobState, to: JobState },
    #[error("job already finished as {0}; there is nothing to cancel")]
    AlreadyFinished(JobState),
    #[error("only the job's owner or a workspace admin may cancel it")]
    NotOwner,
}

/// Decides whether `from → to` is a real transition. `Ok(false)` means "no change": nothing to
/// record. Any non-terminal state may move to any other state (a poll can miss RUNNING between a
/// fast job's PENDING and COMPLETED); a terminal state never changes, but for NODE_FAIL: it is
/// also what Clusterra records for a job Slurm no longer knows, and Slurm requeues jobs whose
/// node failed, so a job Slurm later reports in another state moves there (a correction).
pub fn transition(from: JobState, to: JobState) -> Result<bool, JobRuleError> {
    if from == to {
        return Ok(false);
    }
    if from.is_terminal() && from != JobState::NodeFail {
        return Err(JobRuleError::ImpossibleTransition { from, to });
    }
    Ok(true)
}

/// What Slurm said about one job in one reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Slurm reported the job (same job id, same submission id) in this state.
    Reported(JobState),
    /// Slurm positively said it does not know the job: a lookup by its id answered "invalid job
    /// id", or that id is now another job's.
    Unknown,
    /// No usable answer (the call failed, timed out, or the answer was not a v0.0.44
    /// document): nothing can be concluded.
    NoAnswer,
}

/// What reconcile records for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to record.
    Keep,
    /// Record Slurm's state; `correction` when it overturns a recorded NODE_FAIL.
    Change { to: JobState, correction: bool },
    /// Record NODE_FAIL: Slurm no longer knows a job whose end was never seen.
    Vanished,
}

/// The reconcile decision for a job recorded as `recorded` that Slurm described as `observed`.
/// No answer never changes anything; only a positive "unknown" makes a job vanish, and only an
/// unfinished one; a finished job is only ever corrected out of NODE_FAIL.
pub fn reconcile_verdict(recorded: JobState, observed: Observed) -> Verdict {
    match observed {
        Observed::NoAnswer => Verdict::Keep,
        Observed::Unknown if recorded.is_terminal() => Verdict::Keep,
        Observed::Unknown => Verdict::Vanished,
        Observed::Reported(to) => match transition(recorded, to) {
            Ok(true) => Verdict::Change {
                to,
                correction: recorded.is_terminal(),
            },
            Ok(false) | Err(_) => Verdict::Keep,
        },
    }
}

/// What a cancel request decides for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// The first request: record these events (`JobCancelRequested`), then ask Slurm.
    Record(Vec<crate::DomainEvent>),
    /// Asked before: nothing new is recorded (the request is idempotent); Slurm is asked again
    /// while the job is unfinished.
    AlreadyAsked { unfinished: bool },
}

/// A cancel by `caller` (admin or not) of the job `facts` describe: only its owner or an admin
/// may, a finished job cannot be cancelled, and a second request records nothing new.
pub fn decide_cancel(
    facts: &JobFacts,
    caller: &crate::Email,
    caller_is_admin: bool,
    why: Option<String>,
) -> Result<Cancel, JobRuleError> {
    if facts.submitted.user != *caller && !caller_is_admin {
        return Err(JobRuleError::NotOwner);
    }
    if facts.cancel_requested {
        return Ok(Cancel::AlreadyAsked {
            unfinished: !facts.state.is_terminal(),
        });
    }
    if facts.state.is_terminal() {
        return Err(JobRuleError::AlreadyFinished(facts.state));
    }
    Ok(Cancel::Record(vec![
        crate::DomainEvent::JobCancelRequested(crate::events::JobCancelRequested {
            job_id: facts.submitted.job_id,
            by: caller.clone(),
            why,
        }),
    ]))
}

/// A job's start and end after `change`, as every view derives them: the start, once known, is
/// kept (Slurm's start time, else the change's time when it is to RUNNING); the end is the change's
/// time when it is terminal, and none again when Slurm corrects a NODE_FAIL. The change's time is
/// Slurm's (`at`) or, without one, when the log recorded it.
pub fn times_after(
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    change: &crate::JobStateChanged,
    recorded_at: chrono::DateTime<chrono::Utc>,
) -> (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    let at = change.at.unwrap_or(recorded_at);
    let started = started_at.or(change
        .started_at
        .or((change.to == JobState::Running).then_some(at)));
    (started, change.to.is_terminal().then_some(at))
}

/// Turns Slurm's pending reason into a sentence a researcher understands.
pub fn explain_pending(reason: &str, cold_start_seconds: u32) -> String {
    match reason {
        "" | "None" => "queued; it starts as soon as the scheduler places it".into(),
        "Resources" | "ReqNodeNotAvail" | "NodeDown" | "PartitionNodeLimit" | "Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_in_higher_priority_partitions" => {
            format!("waiting for a node to start: about {cold_start_seconds} s")
        }
        "Priority" => "waiting behind higher-priority jobs in the queue".into(),
        "Dependency" => "waiting for the jobs it depends on to finish".into(),
        "DependencyNeverSatisfied" => "will never start: a job it depends on failed; cancel it and resubmit".into(),
        "BeginTime" => "waiting for its requested start time".into(),
        "JobHeldUser" => "held by you; release it to let it start".into(),
        "JobHeldAdmin" => "held by an administrator".into(),
        "QOSMaxJobsPerUserLimit" | "QOSMaxCpuPerUserLimit" | "AssocGrpCpuLimit" | "AssocMaxJobsLimit" | "AssocGrpJobsLimit" | "QOSGrpCpuLimit" => {
            "waiting because you are at your limit of running jobs or CPUs; it starts when one of yours finishes".into()
        }
        "AssocGrpBillingMinutes" | "QOSGrpBillingMinutes" | "OverQuota" => "over your quota: it will not start until the quota is raised".into(),
        "PartitionTimeLimit" => "its time limit is longer than the partition allows; cancel it and resubmit with a shorter time_limit".into(),
        "BadConstraints" => "no node offers the features it asks for; cancel it and resubmit with other constraints".into(),
        other => format!("waiting ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Email;

    #[test]
    fn times_after_keep_the_start_and_follow_the_end() {
        use chrono::TimeZone;
        let t = |h| chrono::Utc.with_ymd_and_hms(2026, 11, 29, h, 0, 0).unwrap();
        let change = |to, at: Option<_>, started_at| crate::JobStateChanged {
            job_id: 1,
            from: JobState::Pending,
            to,
            reason: None,
            node: None,
            exit_code: None,
            at,
            started_at,
        };
        // To RUNNING without Slurm's times: started when recorded.
        let running = change(JobState::Running, None, None);
        assert_eq!(times_after(None, &running, t(1)), (Some(t(1)), None));
        // PENDING straight to COMPLETED with Slurm's start: both times from Slurm.
        let done = change(JobState::Completed, Some(t(3)), Some(t(2)));
        assert_eq!(times_after(None, &done, t(4)), (Some(t(2)), Some(t(3))));
        // A known start is kept; a NODE_FAIL ends, and a correction back to RUNNING un-ends.
        let failed = change(JobState::NodeFail, Some(t(5)), Some(t(9)));
        assert_eq!(
            times_after(Some(t(1)), &failed, t(6)),
            (Some(t(1)), Some(t(5)))
        );
        let again = change(JobState::Running, Some(t(7)), None);
        assert_eq!(times_after(Some(t(1)), &again, t(7)), (Some(t(1)), None));
    }

    #[test]
    fn terminal_states_never_change_and_same_state_is_no_change() {
        for from in JobState::ALL {
            for to in JobState::ALL {
                let r = transition(from, to);
                if from == to {
                    assert_eq!(r, Ok(false), "{from}->{to}");
                } else if from == JobState::NodeFail {
                    assert_eq!(r, Ok(true), "NODE_FAIL can be corrected: {from}->{to}");
                } else if from.is_terminal() {
                    assert_eq!(r, Err(JobRuleError::ImpossibleTransition { from, to }));
                } else {
                    assert_eq!(r, Ok(true), "{from}->{to}");
                }
            }
        }
        assert!(
            transition(JobState::Pending, JobState::Completed).unwrap(),
            "a fast job may skip RUNNING between polls"
        );
        assert!(transition(JobState::Completed, JobState::Running).is_err());
        assert!(transition(JobState::Cancelled, JobState::Pending).is_err());
    }

    #[test]
    fn reconcile_verdicts() {
        use JobState::*;
        // No answer never changes a job, whatever it is.
        for recorded in JobState::ALL {
            assert_eq!(
                reconcile_verdict(recorded, Observed::NoAnswer),
                Verdict::Keep
            );
        }
        // Only a positive "unknown" makes an unfinished job vanish; a finished one stays.
        assert_eq!(
            reconcile_verdict(Running, Observed::Unknown),
            Verdict::Vanished
        );
        assert_eq!(
            reconcile_verdict(Pending, Observed::Unknown),
            Verdict::Vanished
        );
        assert_eq!(
            reconcile_verdict(Completed, Observed::Unknown),
            Verdict::Keep
        );
        assert_eq!(
            reconcile_verdict(NodeFail, Observed::Unknown),
            Verdict::Keep
        );
        assert_eq!(
            reconcile_verdict(Pending, Observed::Reported(Running)),
            Verdict::Change {
                to: Running,
                correction: false
            }
        );
        assert_eq!(
            reconcile_verdict(Running, Observed::Reported(Running)),
            Verdict::Keep
        );
        // NODE_FAIL is corrected by what Slurm reports later; other final states are not.
        assert_eq!(
            reconcile_verdict(NodeFail, Observed::Reported(Running)),
            Verdict::Change {
                to: Running,
                correction: true
            }
        );
        assert_eq!(
            reconcile_verdict(NodeFail, Observed::Reported(Completed)),
            Verdict::Change {
                to: Completed,
                correction: true
            }
        );
        assert_eq!(
            reconcile_verdict(NodeFail, Observed::Reported(NodeFail)),
            Verdict::Keep
        );
        assert_eq!(
            reconcile_verdict(Completed, Observed::Reported(Running)),
            Verdict::Keep
        );
        assert_eq!(
            reconcile_verdict(Cancelled, Observed::Reported(Pending)),
            Verdict::Keep
        );
    }

    #[test]
    fn slurm_state_arrays() {
        let s =
            |v: &[&str]| JobState::from_slurm(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["RUNNING", "COMPLETING"]), Some(JobState::Running));
        assert_eq!(s(&["PENDING", "CONFIGURING"]), Some(JobState::Pending));
        assert_eq!(s(&["NODE_FAIL"]), Some(JobState::NodeFail));
        assert_eq!(s(&["REQUEUED"]), Some(JobState::Pending));
        assert_eq!(s(&["SOMETHING_NEW"]), None);
        assert_eq!(
            serde_json::to_string(&JobState::OutOfMemory).unwrap(),
            "\"OUT_OF_MEMORY\""
        );
    }

    fn job_of(owner: &str, state: JobState, cancel_requested: bool) -> JobFacts {
        JobFacts {
            submitted: crate::events::JobSubmitted {
                submission_id: uuid::Uuid::from_u128(7),
                workspace: crate::WorkspaceId::new("lab").unwrap(),
                cluster_id: crate::ClusterId::new("c1").unwrap(),
                job_id: 42,
                name: "j".into(),
                user: Email::new(owner).unwrap(),
                via: crate::events::SubmittedVia::Api,
                template_id: None,
                params: None,
                body: serde_json::json!({}),
                shape: crate::submit::JobShape {
                    cpus: 1,
                    memory_mib: None,
                    nodes: 1,
                    time_limit_minutes: None,
                    gpus: 0,
                    tasks: None,
                },
                warnings: Vec::new(),
                submitted_at: None,
                rate: None,
            },
            state,
            cancel_requested,
        }
    }

    /// Given a job (owner, state, asked before), when `caller` cancels it.
    fn when_cancelled_by(
        facts: &JobFacts,
        caller: &str,
        admin: bool,
    ) -> Result<Cancel, JobRuleError> {
        decide_cancel(
            facts,
            &Email::new(caller).unwrap(),
            admin,
            Some("done with it".into()),
        )
    }

    #[test]
    fn given_a_running_job_when_its_owner_cancels_then_the_request_is_recorded() {
        let job = job_of("ada@lab.org", JobState::Running, false);
        let Ok(Cancel::Record(events)) = when_cancelled_by(&job, "ada@lab.org", false) else {
            panic!("not recorded");
        };
        assert_eq!(
            events,
            vec![crate::DomainEvent::JobCancelRequested(
                crate::events::JobCancelRequested {
                    job_id: 42,
                    by: Email::new("ada@lab.org").unwrap(),
                    why: Some("done with it".into()),
                }
            )]
        );
    }

    #[test]
    fn given_someone_elses_job_when_a_user_cancels_then_refused_and_an_admin_may() {
        let job = job_of("ada@lab.org", JobState::Pending, false);
        assert_eq!(
            when_cancelled_by(&job, "bob@lab.org", false),
            Err(JobRuleError::NotOwner)
        );
        assert!(matches!(
            when_cancelled_by(&job, "bob@lab.org", true),
            Ok(Cancel::Record(_))
        ));
        // Asked before by the owner: a stranger still learns nothing.
        let asked = job_of("ada@lab.org", JobState::Running, true);
        assert_eq!(
            when_cancelled_by(&asked, "bob@lab.org", false),
            Err(JobRuleError::NotOwner)
        );
    }

    #[test]
    fn given_a_finished_job_when_cancelled_then_refused() {
        let job = job_of("ada@lab.org", JobState::Completed, false);
        assert_eq!(
            when_cancelled_by(&job, "ada@lab.org", false),
            Err(JobRuleError::AlreadyFinished(JobState::Completed))
        );
    }

    #[test]
    fn given_a_cancel_asked_before_when_asked_again_then_nothing_new_is_recorded() {
        let running = job_of("ada@lab.org", JobState::Running, true);
        assert_eq!(
            when_cancelled_by(&running, "ada@lab.org", false),
            Ok(Cancel::AlreadyAsked { unfinished: true })
        );
        // It ended meanwhile (cancelled): still the first request's answer, not an error.
        let ended = job_of("ada@lab.org", JobState::Cancelled, true);
        assert_eq!(
            when_cancelled_by(&ended, "ada@lab.org", false),
            Ok(Cancel::AlreadyAsked { unfinished: false })
        );
    }

    #[test]
    fn pending_reasons_read_like_sentences() {
        assert_eq!(
            explain_pending("Resources", 90),
            "waiting for a node to start: about 90 s"
        );
        assert!(explain_pending("AssocGrpBillingMinutes", 90).contains("over your quota"));
        assert_eq!(explain_pending("Weird", 90), "waiting (Weird)");
    }
}

/// What the log says about one job: folded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub submitted: crate::events::JobSubmitted,
    pub state: JobState,
    pub cancel_requested: bool,
}

impl JobFacts {
    /// Folds a job stream's events; `None` if the stream does not start with `JobSubmitted`.
    pub fn fold(events: impl IntoIterator<Item = crate::DomainEvent>) -> Option<JobFacts> {
        use crate::DomainEvent;
        let mut facts: Option<JobFacts> = None;
        for event in events {
            match (event, facts.as_mut()) {
                (DomainEvent::JobSubmitted(s), None) => {
                    facts = Some(JobFacts {
                        submitted: s,
                        state: JobState::Pending,
                        cancel_requested: false,
                    })
                }
                (DomainEvent::JobStateChanged(c), Some(f)) => f.state = c.to,
                (DomainEvent::JobCancelRequested(_), Some(f)) => f.cancel_requested = true,
                _ => {}
            }
        }
        facts
    }
}

/// The file a job's stdout goes to, as the job sees it, when it can be told from the body alone:
/// [`crate::filename::stdout_file`] with what is known at submission (not `%u` nor `%N`, which
/// depend on where it runs). `None` when the body has no `job` or a pattern needs more.
pub fn stdout_path(body: &serde_json::Value, job_id: u64) -> Option<String> {
    let job = body.get("job")?;
    let names = crate::filename::JobNames {
        job_id,
        name: crate::filename::job_name(job),
        user: None,
        array_task: None,
        first_node: None,
    };
    crate::filename::stdout_file(job, &names)
        .ok()
        .map(|e| e.path)
}
