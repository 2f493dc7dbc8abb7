//! `jobs`: one view per job, for `GET /v1/clusters/{id}/jobs[/{job_id}]`.
//!
//! Each cluster of each workspace is a collection (`jobs:<workspace>:<cluster>`), keyed by the
//! Slurm job id zero-padded to 12 digits so key order is job order. A second collection
//! (`by-stream`) maps a job's stream to its view, because state events name only the job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::job::{JobState, explain_pending, times_after};
use domain::submit::JobShape;
use domain::{ClusterId, DomainEvent, SubmittedVia, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, ProjectionError, Projector, Reads, ViewTx};

pub const NAME: &str = "jobs";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct JobViews;

/// The name of the per-user copy of the job views ([`UserJobViews`]).
pub const BY_USER_NAME: &str = "jobs-by-user";

/// The same job views, kept per user ([`user_collection`]): a user's page reads their own jobs,
/// not the whole cluster's. A projector of its own (documents and checkpoint under
/// [`BY_USER_NAME`]), so a server that already had the `jobs` view builds it from the log on
/// its first start, like any new projection.
pub struct UserJobViews;

/// The collection of one user's jobs in a cluster.
pub fn user_collection(workspace: &str, cluster: &str, user: &str) -> String {
    format!("jobs:{workspace}:{cluster}:{user}")
}

/// The collection of a cluster's jobs.
pub fn collection(workspace: &WorkspaceId, cluster: &ClusterId) -> String {
    format!("jobs:{workspace}:{cluster}")
}

const BY_STREAM: &str = "by-stream";

/// Where a job stream's view is (`BY_STREAM`, keyed by stream id).
#[derive(Serialize, Deserialize)]
struct Pointer {
    collection: String,
    key: String,
}

/// What the console shows about a node starting; the scaler will refine it per node set.
pub const COLD_START_SECONDS: u32 = 90;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: u64,
    pub cluster_id: ClusterId,
    pub workspace: WorkspaceId,
    pub submission_id: uuid::Uuid,
    pub name: String,
    pub user: String,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub submitted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it is waiting, as a sentence; null unless PENDING.
    pub pending_reason: Option<String>,
    /// Slurm's reason for the last change (e.g. TimeLimit, NonZeroExitCode).
    pub reason: Option<String>,
    pub node: Option<String>,
    pub shape: JobShape,
    pub via: SubmittedVia,
    pub template_id: Option<String>,
    pub cancel_requested_by: Option<String>,
    /// The job's stream in the log, for its history.
    pub stream_id: String,
    /// Where the job's stdout goes, as the job sees it (`/mnt/efs/job_42.out`); `None` when the
    /// body names no file Clusterra can locate. Added with job logs, hence the default.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Its hourly rate as recorded at submission (None for jobs recorded before cost existed).
    #[serde(default)]
    pub rate: Option<domain::MicroUsd>,
    /// What it used, once it ended and its executor said (`JobUsageRecorded`). Added with the
    /// efficiency report, hence the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<domain::efficiency::Usage>,
    /// The log position that last changed this view.
    pub position: i64,
}

/// Every job view of a cluster (live set), in job order; views that do not parse are skipped
/// with a warning.
pub async fn of_cluster(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<Vec<JobView>, eventlog::LogError> {
    let rows = eventlog::list_all(
        read,
        eventlog::ModelSet::Live,
        NAME,
        &collection(workspace, cluster),
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| match serde_json::from_str::<JobView>(&row.doc) {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(key = %row.key, error = %e, "unreadable job view skipped");
                None
            }
        })
        .collect())
}

/// One job of a cluster, by id.
pub async fn get(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    job_id: u64,
) -> Result<Option<JobView>, super::ViewError> {
    super::live(read, NAME, &collection(workspace, cluster), &key(job_id)).await
}

/// What a page of a cluster's jobs holds: every filter that is set must match.
#[derive(Debug, Clone, Default)]
pub struct JobQuery<'a> {
    pub state: Option<JobState>,
    /// Jobs of this user (an email, in any case).
    pub user: Option<&'a str>,
    pub template: Option<&'a str>,
    /// Only jobs this user may see (`None`: every job, for an admin).
    pub visible_to: Option<&'a str>,
    /// Jobs after this job id (a previous page's last).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

impl JobQuery<'_> {
    fn matches(&self, view: &JobView) -> bool {
        self.visible_to.is_none_or(|u| view.user == u)
            && self.state.is_none_or(|s| view.state == s)
            && self.user.is_none_or(|u| view.user.eq_ignore_ascii_case(u))
            && self
                .template
                .is_none_or(|t| view.template_id.as_deref() == Some(t))
    }
}

/// A page of a cluster's jobs in job order, and whether more match after it.
pub async fn page(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    query: &JobQuery<'_>,
) -> Result<(Vec<JobView>, bool), super::ViewError> {
    // A user's jobs are read from their own collection of the per-user view: a page costs
    // what that user has, not what the cluster has.
    let (projection, collection) = match query.visible_to.or(query.user) {
        Some(user) => (
            BY_USER_NAME,
            user_collection(
                workspace.as_str(),
                cluster.as_str(),
                &user.to_ascii_lowercase(),
            ),
        ),
        None => (NAME, collection(workspace, cluster)),
    };
    let mut after = query.after.map(key);
    let mut out = Vec::new();
    loop {
        let rows = read
            .list_docs(
                eventlog::ModelSet::Live,
                projection,
                &collection,
                after.as_deref(),
                500,
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok((out, false));
        };
        after = Some(last.key.clone());
        for row in &rows {
            let view: JobView = super::decode(projection, &row.key, &row.doc)?;
            if query.matches(&view) {
                if out.len() == query.limit {
                    return Ok((out, true));
                }
                out.push(view);
            }
        }
    }
}

/// The collection of a cluster's submissions whose request is recorded but whose outcome is not
/// (`JobSubmissionRequested` without `JobSubmitted` or `JobSubmissionFailed` yet), keyed by
/// submission id. They are not jobs yet (Slurm has given no id): the job list does not show
/// them; the poll cycle reads them to settle requests whose submitter stopped halfway.
pub fn submitting_collection(workspace: &WorkspaceId, cluster: &ClusterId) -> String {
    format!("submitting:{workspace}:{cluster}")
}

/// A submission recorded but not yet settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSubmission {
    pub submission_id: uuid::Uuid,
    pub user: String,
    /// When the request was recorded (before Slurm was called).
    pub requested_at: DateTime<Utc>,
    pub stream_id: String,
    pub position: i64,
}

/// Every unsettled submission of a cluster (live set).
pub async fn submitting(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<Vec<PendingSubmission>, eventlog::LogError> {
    let rows = eventlog::list_all(
        read,
        eventlog::ModelSet::Live,
        NAME,
        &submitting_collection(workspace, cluster),
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| serde_json::from_str(&row.doc).ok())
        .collect())
}

/// The key of a job within its collection.
pub fn key(job_id: u64) -> String {
    format!("{job_id:012}")
}

#[async_trait]
impl Projector for JobViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(event_type.starts_with("Job"))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        apply(view, event, Layout::ByCluster).await
    }
}

#[async_trait]
impl Projector for UserJobViews {
    fn name(&self) -> &'static str {
        BY_USER_NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(matches!(
            event_type,
            "JobSubmitted" | "JobStateChanged" | "JobUsageRecorded" | "JobCancelRequested"
        ))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        apply(view, event, Layout::ByUser).await
    }
}

/// Where [`apply`] keeps a job's view.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// In its cluster's collection, with the cluster's unsettled submissions.
    ByCluster,
    /// In its user's collection of the cluster.
    ByUser,
}

async fn apply(view: &mut ViewTx<'_>, event: Event<'_>, layout: Layout) -> Applied {
    let Event {
        recorded: event,
        domain,
    } = event;
    match domain {
        Some(DomainEvent::JobSubmissionRequested(r)) if layout == Layout::ByCluster => {
            view.put(
                &submitting_collection(&r.workspace, &r.cluster_id),
                &r.submission_id.to_string(),
                &PendingSubmission {
                    submission_id: r.submission_id,
                    user: r.user.to_string(),
                    requested_at: event.recorded_at,
                    stream_id: event.stream_id.clone(),
                    position: event.position,
                },
            )?;
        }
        Some(DomainEvent::JobSubmissionFailed(f)) if layout == Layout::ByCluster => {
            view.delete(
                &submitting_collection(&f.workspace, &f.cluster_id),
                &f.submission_id.to_string(),
            );
        }
        Some(DomainEvent::JobSubmitted(j)) => {
            // Only the by-cluster layout keeps unsettled submissions.
            if layout == Layout::ByCluster {
                view.delete(
                    &submitting_collection(&j.workspace, &j.cluster_id),
                    &j.submission_id.to_string(),
                );
            }
            let pointer = Pointer {
                collection: match layout {
                    Layout::ByCluster => collection(&j.workspace, &j.cluster_id),
                    Layout::ByUser => user_collection(
                        j.workspace.as_str(),
                        j.cluster_id.as_str(),
                        j.user.as_str(),
                    ),
                },
                key: key(j.job_id),
            };
            let doc = JobView {
                job_id: j.job_id,
                cluster_id: j.cluster_id,
                workspace: j.workspace,
                submission_id: j.submission_id,
                name: j.name,
                user: j.user.to_string(),
                state: JobState::Pending,
                exit_code: None,
                submitted_at: j.submitted_at.unwrap_or(event.recorded_at),
                started_at: None,
                ended_at: None,
                pending_reason: Some(explain_pending("None", COLD_START_SECONDS)),
                reason: None,
                node: None,
                shape: j.shape,
                via: j.via,
                template_id: j.template_id,
                cancel_requested_by: None,
                stream_id: event.stream_id.clone(),
                stdout: domain::job::stdout_path(&j.body, j.job_id),
                rate: j.rate,
                usage: None,
                position: event.position,
            };
            view.put(&pointer.collection, &pointer.key, &doc)?;
            view.put(BY_STREAM, &event.stream_id, &pointer)?;
        }
        Some(DomainEvent::JobStateChanged(c)) => {
            let Some((pointer, mut doc)) = find(view, &event.stream_id).await? else {
                return Ok(());
            };
            (doc.started_at, doc.ended_at) = times_after(doc.started_at, &c, event.recorded_at);
            doc.state = c.to;
            doc.reason = c.reason.clone();
            doc.node = c.node.or(doc.node);
            doc.exit_code = c.exit_code.or(doc.exit_code);
            doc.pending_reason = (c.to == JobState::Pending).then(|| {
                explain_pending(c.reason.as_deref().unwrap_or("None"), COLD_START_SECONDS)
            });
            doc.position = event.position;
            view.put(&pointer.collection, &pointer.key, &doc)?;
        }
        Some(DomainEvent::JobUsageRecorded(u)) => {
            let Some((pointer, mut doc)) = find(view, &event.stream_id).await? else {
                return Ok(());
            };
            doc.usage = Some(u.usage);
            doc.position = event.position;
            view.put(&pointer.collection, &pointer.key, &doc)?;
        }
        Some(DomainEvent::JobCancelRequested(c)) => {
            let Some((pointer, mut doc)) = find(view, &event.stream_id).await? else {
                return Ok(());
            };
            doc.cancel_requested_by = Some(c.by.to_string());
            doc.position = event.position;
            view.put(&pointer.collection, &pointer.key, &doc)?;
        }
        _ => {}
    }
    Ok(())
}

async fn find(
    view: &mut ViewTx<'_>,
    stream: &str,
) -> Result<Option<(Pointer, JobView)>, ProjectionError> {
    let Some(pointer) = view.get::<Pointer>(BY_STREAM, stream).await? else {
        return Ok(None);
    };
    Ok(view
        .get::<JobView>(&pointer.collection, &pointer.key)
        .await?
        .map(|doc| (pointer, doc)))
}
