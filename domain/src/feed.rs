//! The per-cluster event feed: which events users see in a cluster's activity, the one-line
//! summary of each, and what other users' job events hide.
//!
//! This is the one place that decides the feed's content (docs/events.md). A new user-facing
//! event type is added to [`FEED_TYPES`] and to [`describe`].

use serde_json::{Map, Value};

use crate::DomainEvent;

/// Every event type that appears in a cluster's feed.
pub const FEED_TYPES: &[&str] = &[
    "ClusterRegistered",
    "JobSubmitted",
    "JobStateChanged",
    "JobCancelRequested",
    "ScaleDecisionMade",
    "NodeLaunched",
    "NodeReady",
    "NodeTerminated",
    "SlurmReachabilityChanged",
    "AgentActionProposed",
    "AgentActionConfirmed",
    "AgentActionRejected",
    "AgentActionExpired",
    "AgentActionInvalidated",
    "AgentActionExecuted",
    "AgentActionFailed",
];

/// The job an event is about, as the feed needs it (state and cancel events name only the job id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    pub job_id: u64,
    pub owner: String,
}

/// What the feed says about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub summary: String,
    /// The job it is about, if any.
    pub job_id: Option<u64>,
    /// Whose job it is: other users see its data redacted.
    pub owner: Option<String>,
}

/// The feed line of an event, or `None` when the event is not in the feed. `actor` is who caused
/// it (the event's metadata); `job` the job a state or cancel event is about.
pub fn describe(event: &DomainEvent, actor: &str, job: Option<&JobContext>) -> Option<Described> {
    let (summary, job_id, owner) = match event {
        DomainEvent::ClusterRegistered(c) => (
            format!(
                "{actor} registered cluster {} ({}, {})",
                c.cluster_id, c.name, c.region
            ),
            None,
            None,
        ),
        DomainEvent::JobSubmitted(j) => {
            let from = j
                .template_id
                .as_deref()
                .map(|t| format!(" from template {t}"))
                .unwrap_or_default();
            (
                format!("{} submitted job {} ({}){from}", j.user, j.job_id, j.name),
                Some(j.job_id),
                Some(j.user.to_string()),
            )
        }
        DomainEvent::JobStateChanged(c) => {
            let job = job?;
            let mut line = format!(
                "job {} of {} {} → {}",
                c.job_id,
                job.owner,
                c.from.as_str(),
                c.to.as_str()
            );
            if let Some(code) = c.exit_code.filter(|_| c.to.is_terminal()) {
                line.push_str(&format!(", exit code {code}"));
            }
            if let Some(reason) = c
                .reason
                .as_deref()
                .filter(|r| !r.is_empty() && *r != "None")
            {
                line.push_str(&format!(" ({reason})"));
            }
            (line, Some(c.job_id), Some(job.owner.clone()))
        }
        DomainEvent::JobCancelRequested(c) => {
            let owner = job.map(|j| j.owner.clone());
            let why = c
                .why
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            (
                format!("{} cancelled job {}{why}", c.by, c.job_id),
                Some(c.job_id),
                owner,
            )
        }
        DomainEvent::ScaleDecisionMade(d) => (
            format!(
                "{} nodes {} → {} ({}): {}",
                d.node_set, d.from, d.to, d.instance_type, d.reason
            ),
            None,
            None,
        ),
        DomainEvent::NodeLaunched(n) => (
            format!(
                "node {} launched ({} {}), ready in about {} s",
                n.node,
                n.node_set,
                n.instance_type,
                (n.ready_expected_at - n.launched_at).num_seconds()
            ),
            None,
            None,
        ),
        DomainEvent::NodeReady(n) => (
            format!(
                "node {} ({}) ready after a {:.1} s cold start",
                n.node,
                n.node_set,
                n.cold_start_ms as f64 / 1000.0
            ),
            None,
            None,
        ),
        DomainEvent::NodeTerminated(n) => (
            format!(
                "node {} ({}) terminated after {:.0} s: {}",
                n.node,
                n.node_set,
                n.up_ms as f64 / 1000.0,
                n.reason
            ),
            None,
            None,
        ),
        DomainEvent::SlurmReachabilityChanged(r) if r.reachable => (
            format!(
                "Slurm of cluster {} answers again; job states follow from here",
                r.cluster_id
            ),
            None,
            None,
        ),
        DomainEvent::SlurmReachabilityChanged(r) => (
            format!(
                "Slurm of cluster {} is unreachable ({}); job states are the last ones seen until it answers",
                r.cluster_id,
                r.cause.as_deref().unwrap_or("no answer")
            ),
            None,
            None,
        ),
        // The agent's proposals and what became of them: the user's own (others see the line,
        // not the arguments or the preview).
        DomainEvent::AgentActionProposed(p) => (
            format!(
                "the agent proposed {} for {} (proposal {}), waiting for confirmation",
                p.tool.name(),
                p.user,
                short(&p.proposal_id)
            ),
            None,
            Some(p.user.to_string()),
        ),
        DomainEvent::AgentActionConfirmed(c) => (
            format!("{} confirmed proposal {}", c.by, short(&c.proposal_id)),
            None,
            Some(c.user.to_string()),
        ),
        DomainEvent::AgentActionRejected(r) => (
            format!("{} rejected proposal {}", r.by, short(&r.proposal_id)),
            None,
            Some(r.user.to_string()),
        ),
        DomainEvent::AgentActionExpired(e) => (
            format!("proposal {} expired unconfirmed", short(&e.proposal_id)),
            None,
            Some(e.user.to_string()),
        ),
        // What a proposal was about (a file's key, a quota, a rejection's words) is its owner's:
        // the line names the proposal and, for jobs, their ids, which the feed shows anyway.
        DomainEvent::AgentActionInvalidated(i) => (
            format!(
                "proposal {} of {} no longer holds: what it acts on changed",
                short(&i.proposal_id),
                i.user
            ),
            None,
            Some(i.user.to_string()),
        ),
        DomainEvent::AgentActionExecuted(e) => {
            let jobs = if e.outcome.job_ids.is_empty() {
                String::new()
            } else {
                format!(
                    " (job {})",
                    e.outcome
                        .job_ids
                        .iter()
                        .take(8)
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            (
                format!("proposal {} of {} ran{jobs}", short(&e.proposal_id), e.user),
                None,
                Some(e.user.to_string()),
            )
        }
        DomainEvent::AgentActionFailed(f) => (
            format!(
                "proposal {} of {} failed: {}",
                short(&f.proposal_id),
                f.user,
                f.code
            ),
            None,
            Some(f.user.to_string()),
        ),
        // A conversation is the user's own; what it changes enters the feed as proposals.
        DomainEvent::AgentConversationStarted(_)
        | DomainEvent::AgentMessageAdded(_)
        | DomainEvent::AgentToolCalled(_) => return None,
        // File grants and deletes are per-user audit records, not cluster activity; quotas
        // belong to a workspace, not a cluster (the cancels they cause are in the feed).
        // The write-ahead record of a submission and its failure stay in the job's own stream:
        // a job enters the feed when Slurm has accepted it (`JobSubmitted`).
        DomainEvent::JobSubmissionRequested(_)
        | DomainEvent::JobSubmissionFailed(_)
        | DomainEvent::FileAccessGranted(_)
        | DomainEvent::FileDeleted(_)
        | DomainEvent::QuotaSet(_)
        | DomainEvent::QuotaRemoved(_)
        | DomainEvent::QuotaWarningRaised(_)
        | DomainEvent::QuotaEnforced(_)
        // What a job used is in its view; webhooks are their user's own, not cluster activity.
        | DomainEvent::JobUsageRecorded(_)
        | DomainEvent::WebhookRegistered(_)
        | DomainEvent::WebhookRemoved(_)
        | DomainEvent::WebhookDeliveryAttempted(_)
        // A console sign-in is the user's own record, not cluster activity.
        | DomainEvent::SignInLinkUsed(_) => return None,
    };
    Some(Described {
        summary: clip(&summary, MAX_SUMMARY_BYTES),
        job_id,
        owner,
    })
}

/// The last eight hex digits of a proposal id (its random part: a uuid v7 begins with the time,
/// which proposals made in the same minute share), as the feed names it.
fn short(id: &uuid::Uuid) -> String {
    id.simple().to_string()[24..].to_string()
}

/// The fields of a job event another workspace member may see: that the job exists, whose it
/// is, its shape and state changes — never its script, environment, template params or the
/// body sent to Slurm.
const VISIBLE_TO_OTHERS: &[&str] = &[
    "job_id",
    "workspace",
    "cluster_id",
    "name",
    "user",
    "via",
    "template_id",
    "shape",
    "submitted_at",
    "from",
    "to",
    "reason",
    "node",
    "exit_code",
    "at",
    "started_at",
    "by",
    "why",
    "proposal_id",
    "tool",
];

/// The fields a feed entry's `data` keeps: the job's summary ([`VISIBLE_TO_OTHERS`]: never its
/// body, params, warnings or submission id — those stay in the job's own stream, read through the
/// job route) and these, the cluster and node events' own fields.
const CLUSTER_FIELDS: &[&str] = &[
    "region",
    "bucket",
    "registered_by",
    "slurm",
    "node_set",
    "instance_type",
    "jobs",
    "launched_at",
    "ready_expected_at",
    "cold_start_ms",
    "up_ms",
    "reachable",
    "since",
    "cause",
];

/// Whether a feed entry's `data` keeps the field `name`.
fn summary_field(name: &str) -> bool {
    VISIBLE_TO_OTHERS.contains(&name) || CLUSTER_FIELDS.contains(&name)
}

/// The longest text kept in a feed entry (the summary line, and each text of `data`), in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// The most items of a list kept in a feed entry's `data` (a scale decision's jobs).
pub const MAX_LIST_ITEMS: usize = 32;
/// The most bytes of a feed entry's `data` as JSON; past it only the ids are kept.
pub const MAX_DATA_BYTES: usize = 4 * 1024;
/// The longest summary line, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 512;

/// `text` cut at a character boundary to at most `max` bytes, with `…` when it was cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A feed entry's `data`: a bounded summary of the event's data. Only [`summary_field`]s are
/// kept, texts are clipped to [`MAX_TEXT_BYTES`], lists to [`MAX_LIST_ITEMS`] (with
/// `"truncated": true`), and the whole is at most [`MAX_DATA_BYTES`] of JSON. Idempotent, so an
/// entry stored before summaries existed reads the same as a new one.
pub fn summarize(data: &Value) -> Value {
    let Value::Object(map) = data else {
        return Value::Null;
    };
    let mut truncated = false;
    let mut out: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| summary_field(k))
        .map(|(k, v)| (k.clone(), bound(v, 0, &mut truncated)))
        .collect();
    if truncated || map.get("truncated") == Some(&Value::Bool(true)) {
        out.insert("truncated".into(), Value::Bool(true));
    }
    if serde_json::to_string(&out).map_or(0, |t| t.len()) > MAX_DATA_BYTES {
        out.retain(|k, _| matches!(k.as_str(), "job_id" | "workspace" | "cluster_id" | "user"));
        out.insert("truncated".into(), Value::Bool(true));
    }
    Value::Object(out)
}

fn bound(v: &Value, depth: usize, truncated: &mut bool) -> Value {
    match v {
        Value::String(s) if s.len() > MAX_TEXT_BYTES => {
            *truncated = true;
            Value::String(clip(s, MAX_TEXT_BYTES))
        }
        Value::Array(items) => {
            if items.len() > MAX_LIST_ITEMS {
                *truncated = true;
            }
            Value::Array(
                items
                    .iter()
                    .take(MAX_LIST_ITEMS)
                    .map(|i| bound(i, depth + 1, truncated))
                    .collect(),
            )
        }
        Value::Object(m) if depth >= 2 => {
            if !m.is_empty() {
                *truncated = true;
            }
            Value::Object(Map::new())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .take(MAX_LIST_ITEMS)
                .map(|(k, v)| (clip(k, MAX_TEXT_BYTES), bound(v, depth + 1, truncated)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// An event's data as a member who is neither the job's owner nor an admin sees it.
pub fn redact(data: &Value) -> Value {
    match data {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| VISIBLE_TO_OTHERS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;
    use crate::{JobCancelRequested, JobStateChanged};
    use serde_json::json;

    #[test]
    fn scale_decisions_are_one_line() {
        use crate::scaling::{Family, NodeSet, Size};
        let d = DomainEvent::ScaleDecisionMade(crate::ScaleDecisionMade {
            workspace: crate::WorkspaceId::new("default").unwrap(),
            cluster_id: crate::ClusterId::new("local").unwrap(),
            node_set: NodeSet {
                family: Family::Compute,
                size: Size::Small,
            },
            instance_type: "c7g.large".into(),
            from: 0,
            to: 3,
            jobs: vec![7, 8, 9],
            reason: "3 pending jobs need 3 more compute-small nodes".into(),
        });
        let line = describe(&d, "system", None).unwrap();
        assert_eq!(
            line.summary,
            "compute-small nodes 0 → 3 (c7g.large): 3 pending jobs need 3 more compute-small nodes"
        );
        let data = serde_json::to_string(&d.data().unwrap()).unwrap();
        assert_eq!(
            DomainEvent::decode("ScaleDecisionMade", 1, &data).unwrap(),
            Some(d)
        );
    }

    fn ctx() -> JobContext {
        JobContext {
            job_id: 42,
            owner: "alice@x.org".into(),
        }
    }

    #[test]
    fn cancels_and_state_changes_read_as_sentences() {
        let cancel = DomainEvent::JobCancelRequested(JobCancelRequested {
            job_id: 42,
            by: crate::Email::new("alice@x.org").unwrap(),
            why: None,
        });
        let d = describe(&cancel, "alice@x.org", Some(&ctx())).unwrap();
        assert_eq!(d.summary, "alice@x.org cancelled job 42");
        assert_eq!(d.owner.as_deref(), Some("alice@x.org"));
        let done = DomainEvent::JobStateChanged(JobStateChanged {
            job_id: 42,
            from: JobState::Running,
            to: JobState::Failed,
            reason: Some("NonZeroExitCode".into()),
            node: None,
            exit_code: Some(3),
            at: None,
            started_at: None,
        });
        let d = describe(&done, "system", Some(&ctx())).unwrap();
        assert_eq!(
            d.summary,
            "job 42 of alice@x.org RUNNING → FAILED, exit code 3 (NonZeroExitCode)"
        );
        // Without knowing the job, a state change cannot be placed.
        assert_eq!(describe(&done, "system", None), None);
    }

    #[test]
    fn entries_carry_a_bounded_summary_not_the_body() {
        let big = "x".repeat(1024 * 1024);
        let data = json!({"job_id": 7, "workspace": "default", "cluster_id": "local",
            "user": "alice@x.org", "name": "n".repeat(5_000), "template_id": "shell",
            "shape": {"nodes": 1, "cpus": 2}, "via": "api",
            "body": {"job": {"script": big, "environment": ["TOKEN=s3cr3t"]}},
            "params": {"command": big}, "warnings": [big], "submission_id": "x", "rate": 5});
        let s = summarize(&data);
        let text = s.to_string();
        assert!(text.len() <= MAX_DATA_BYTES, "{}", text.len());
        assert!(!text.contains("s3cr3t"));
        for gone in ["body", "params", "warnings", "submission_id", "rate"] {
            assert!(s.get(gone).is_none(), "{gone}");
        }
        assert_eq!(s["shape"], json!({"nodes": 1, "cpus": 2}));
        assert_eq!(s["template_id"], "shell");
        assert!(s["name"].as_str().unwrap().len() <= MAX_TEXT_BYTES);
        assert_eq!(s["truncated"], true);
        // Idempotent: what is stored summarizes to itself.
        assert_eq!(summarize(&s), s);
        // Long lists are cut.
        let jobs: Vec<u64> = (0..10_000).collect();
        let s = summarize(&json!({"jobs": jobs, "reason": "r"}));
        assert_eq!(s["jobs"].as_array().unwrap().len(), MAX_LIST_ITEMS);
        assert_eq!(s["truncated"], true);
        // Small data passes whole.
        let small = json!({"job_id": 1, "from": "PENDING", "to": "RUNNING"});
        assert_eq!(summarize(&small), small);
        // A cluster's reachability keeps what it says (the feed shows whether Slurm answers).
        let reach = json!({"workspace": "w", "cluster_id": "c", "reachable": false,
            "since": "2026-11-29T00:00:00Z", "cause": "slurmrestd did not answer within 5000 ms"});
        assert_eq!(summarize(&reach), reach);
        // Many long multi-byte texts still fit the byte bound.
        let mut wide = serde_json::Map::new();
        for f in VISIBLE_TO_OTHERS.iter().chain(CLUSTER_FIELDS) {
            wide.insert((*f).into(), json!("é".repeat(1_000)));
        }
        let s = summarize(&Value::Object(wide));
        assert!(s.to_string().len() <= MAX_DATA_BYTES);
        assert_eq!(s["truncated"], true);
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        let cut = clip(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn others_never_see_script_or_environment() {
        let data = json!({"job_id": 7, "user": "alice@x.org", "name": "fit",
            "body": {"job": {"script": "#!/bin/bash\nsecret", "environment": ["TOKEN=s3cr3t"]}},
            "params": {"command": "secret"}, "warnings": [], "submission_id": "x"});
        let seen = redact(&data);
        assert_eq!(
            seen,
            json!({"job_id": 7, "user": "alice@x.org", "name": "fit"})
        );
        assert!(!seen.to_string().contains("secret"));
    }
}
