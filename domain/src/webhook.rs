//! Signed webhooks (pure): which log events a user's webhook is told about, the body it gets,
//! how it is signed, when a failed delivery is tried again, and which hosts it may go to.
//!
//! A delivery's body is JSON (`Payload`). It is signed with HMAC-SHA256 under the webhook's
//! secret over `"<timestamp>.<body>"`, where the timestamp is the attempt's Unix time in seconds,
//! and sent with three headers:
//! - `Clusterra-Webhook-Id`: the delivery's id (`<webhook id>:<log position>:<n>`, `n` telling
//!   apart what one event says: a job Slurm saw start and end between two polls), the same on
//!   every attempt: a receiver that has seen it drops the repeat (delivery is at least once);
//! - `Clusterra-Webhook-Timestamp`: the timestamp signed;
//! - `Clusterra-Webhook-Signature`: `v1=<hex HMAC>`.
//!
//! A receiver recomputes the HMAC over the timestamp header, a dot and the raw body, compares it
//! in constant time, and rejects a timestamp more than [`TOLERANCE_SECONDS`] from its clock (a
//! replayed request carries an old timestamp, and changing it breaks the signature).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::job::JobState;
use crate::{ClusterId, DomainEvent, Email, WorkspaceId};

/// How far a receiver should let a signed timestamp be from its clock.
pub const TOLERANCE_SECONDS: i64 = 300;
/// The most webhooks one user may have.
pub const MAX_PER_USER: usize = 10;
/// The longest URL a webhook may have.
pub const MAX_URL_BYTES: usize = 2048;
/// The longest a failing delivery is retried, from its first attempt (then it is given up and
/// the webhook's next event goes).
pub const GIVE_UP_AFTER_HOURS: i64 = 24;
/// The longest wait between two attempts.
pub const MAX_BACKOFF_SECONDS: i64 = 300;

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// One of the user's jobs started running.
    #[serde(rename = "job.started")]
    JobStarted,
    /// One of the user's jobs ended (any final state).
    #[serde(rename = "job.ended")]
    JobEnded,
    /// The user's projected spend reached their quota.
    #[serde(rename = "quota.warning")]
    QuotaWarning,
    /// The user's quota was enforced: new jobs refused, running ones cancelled.
    #[serde(rename = "quota.enforced")]
    QuotaEnforced,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::JobStarted,
        Kind::JobEnded,
        Kind::QuotaWarning,
        Kind::QuotaEnforced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::JobStarted => "job.started",
            Kind::JobEnded => "job.ended",
            Kind::QuotaWarning => "quota.warning",
            Kind::QuotaEnforced => "quota.enforced",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whose job a job stream is, as a webhook needs it (from the stream's `JobSubmitted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOwner {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub job_id: u64,
    pub name: String,
    pub user: Email,
}

/// A log event as webhooks see it: its kind, the workspace and user it is for, and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    /// Which of the event's occurrences this is (0, or 1 for the end of a job whose start the
    /// same event records).
    pub index: u8,
    pub kind: Kind,
    pub workspace: WorkspaceId,
    pub user: Email,
    pub job_id: Option<u64>,
    pub data: serde_json::Value,
}

/// What a log event tells webhooks, in order. Job events need the job's owner (`owner`, from
/// the job's stream). A job "starts" when it leaves PENDING for RUNNING, or for a final state
/// with a start time (it ran between two polls: then the one event tells both, start first),
/// and "ends" when it changes to a final state from one that was not.
pub fn occurrences(event: &DomainEvent, owner: Option<&JobOwner>) -> Vec<Occurrence> {
    match event {
        DomainEvent::JobStateChanged(c) => {
            let Some(o) = owner else {
                return Vec::new();
            };
            let started = c.from == JobState::Pending
                && (matches!(
                    c.to,
                    JobState::Running | JobState::Completing | JobState::Suspended
                ) || (c.to.is_terminal() && c.started_at.is_some()));
            let ended = c.to.is_terminal() && !c.from.is_terminal();
            let mut out = Vec::new();
            for (kind, state, at) in [
                (
                    started.then_some(Kind::JobStarted),
                    JobState::Running,
                    c.started_at.or(c.at),
                ),
                (ended.then_some(Kind::JobEnded), c.to, c.at),
            ] {
                let Some(kind) = kind else { continue };
                out.push(Occurrence {
                    index: out.len() as u8,
                    kind,
                    workspace: o.workspace.clone(),
                    user: o.user.clone(),
                    job_id: Some(o.job_id),
                    data: serde_json::json!({
                        "cluster_id": o.cluster_id,
                        "job_id": o.job_id,
                        "name": o.name,
                        "state": state.as_str(),
                        "exit_code": if kind == Kind::JobEnded { c.exit_code } else { None },
                        "reason": if kind == Kind::JobEnded { c.reason.clone() } else { None },
                        "node": c.node,
                        "at": at,
                    }),
                });
            }
            out
        }
        _ => quota_occurrence(event).into_iter().collect(),
    }
}

fn quota_occurrence(event: &DomainEvent) -> Option<Occurrence> {
    let (kind, workspace, email, projected, bill, limit, hard, period) = match event {
        DomainEvent::QuotaWarningRaised(q) => (
            Kind::QuotaWarning,
            &q.workspace,
            &q.email,
            q.projected,
            q.pending_bill,
            q.limit,
            None,
            q.period_start,
        ),
        DomainEvent::QuotaEnforced(q) => (
            Kind::QuotaEnforced,
            &q.workspace,
            &q.email,
            q.projected,
            q.pending_bill,
            q.limit,
            Some(q.hard_limit),
            q.period_start,
        ),
        _ => return None,
    };
    let mut data = serde_json::json!({
        "projected_usd": projected.decimal(),
        "pending_bill_usd": bill.decimal(),
        "limit_usd": limit.decimal(),
        "period_start": period,
    });
    if let Some(h) = hard {
        data["hard_limit_usd"] = serde_json::Value::String(h.decimal());
    }
    Some(Occurrence {
        index: 0,
        kind,
        workspace: workspace.clone(),
        user: email.clone(),
        job_id: None,
        data,
    })
}

/// The body a webhook receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The delivery's id, the same on every attempt: `<webhook id>:<log position>:<n>`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The log position of the event it tells about.
    pub position: i64,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    pub workspace: WorkspaceId,
    pub user: Email,
    pub data: serde_json::Value,
}

/// The id of a webhook's delivery of the `index`-th occurrence of the event at `position`.
pub fn delivery_id(webhook: uuid::Uuid, position: i64, index: u8) -> String {
    format!("{webhook}:{position}:{index}")
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex_lower(&mac.finalize().into_bytes()))
}

/// HMAC takes keys of any length: `new_from_slice` never fails for it.
fn unreachable_hmac_key() -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
}

/// Why a signed request is refused ([`verify`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the signature header is not v1=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match the body and timestamp")]
    Mismatch,
    #[error("the timestamp is more than {TOLERANCE_SECONDS} s from now: a replay, or a clock off")]
    Stale,
}

/// The documented receiver's check: the signature matches `"<timestamp>.<body>"` (compared in
/// constant time) and the timestamp is within [`TOLERANCE_SECONDS`] of `now` (Unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
) -> Result<(), Rejected> {
    let given = header
        .strip_prefix("v1=")
        .filter(|h| h.len() == 64)
        .and_then(|h| {
            (0..32)
                .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .ok_or(Rejected::Malformed)?;
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| Rejected::Mismatch)?;
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(Rejected::Stale);
    }
    Ok(())
}

/// A webhook's secret: HMAC-SHA256 of its id under the server's webhook key, so no secret is
/// ever stored, in the log or elsewhere: the server works it out again for each delivery.
/// `whsec_<64 hex digits>`.
pub fn secret_of(server_key: &[u8], webhook: uuid::Uuid) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(server_key)
        .unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(b"clusterra-webhook-secret:");
    mac.update(webhook.to_string().as_bytes());
    format!("whsec_{}", hex_lower(&mac.finalize().into_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long to wait after the `attempt`-th failed attempt (1-based): 1 s, 2 s, 4 s, … up to
/// [`MAX_BACKOFF_SECONDS`].
pub fn backoff(attempt: u32) -> chrono::Duration {
    let secs = 1i64
        .checked_shl(attempt.saturating_sub(1).min(30))
        .unwrap_or(MAX_BACKOFF_SECONDS)
        .min(MAX_BACKOFF_SECONDS);
    chrono::Duration::seconds(secs)
}

/// Whether a host may receive webhooks under the operator's `webhook_allow` list: an entry is a
/// host name or IP literal (`127.0.0.1`, `[::1]` or `::1`, `hooks.lab.org`), a suffix wildcard
/// (`*.lab.org`: any name under lab.org, not lab.org itself), or `*` (anywhere). Names compare
/// without case.
pub fn host_allowed(allow: &[String], host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    allow.iter().any(|entry| {
        let entry = entry
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            _ if entry == "*" => true,
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => entry == host,
        }
    })
}

/// The default `webhook_allow` of the embedded default: loopback only.
pub fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_forged_or_replayed_one_does_not() {
        let secret = secret_of(b"server key of at least 32 bytes!", uuid::Uuid::nil());
        assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
        let body = br#"{"id":"x:1"}"#;
        let sig = signature(secret.as_bytes(), 1_700_000_000, body);
        assert_eq!(
            verify(secret.as_bytes(), 1_700_000_000, body, &sig, 1_700_000_100),
            Ok(())
        );
        // Another body, another timestamp, another secret: refused.
        assert_eq!(
            verify(
                secret.as_bytes(),
                1_700_000_000,
                br#"{"id":"x:2"}"#,
                &sig,
                1_700_000_000
            ),
            Err(Rejected::Mismatch)
        );
        assert_eq!(
            verify(secret.as_bytes(), 1_700_000_001, body, &sig, 1_700_000_001),
            Err(Rejected::Mismatch)
        );
        assert_eq!(
            verify(b"whsec_other", 1_700_000_000, body, &sig, 1_700_000_000),
            Err(Rejected::Mismatch)
        );
        // The same request an hour later: a replay.
        assert_eq!(
            verify(secret.as_bytes(), 1_700_000_000, body, &sig, 1_700_003_600),
            Err(Rejected::Stale)
        );
        assert_eq!(
            verify(secret.as_bytes(), 1, body, "v1=zz", 1),
            Err(Rejected::Malformed)
        );
        // What any HMAC library gives: Python's hmac.new(b"key", b"1.body", sha256).
        assert_eq!(
            signature(b"key", 1, b"body"),
            "v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }

    #[test]
    fn a_job_tells_its_start_and_end_and_a_quota_its_warning_and_enforcement() {
        let owner = JobOwner {
            workspace: WorkspaceId::new("default").unwrap(),
            cluster_id: ClusterId::new("local").unwrap(),
            job_id: 7,
            name: "fold".into(),
            user: Email::new("ada@lab.org").unwrap(),
        };
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0);
        let change = |from, to, started_at| {
            DomainEvent::JobStateChanged(crate::JobStateChanged {
                job_id: 7,
                from,
                to,
                reason: None,
                node: None,
                exit_code: Some(0),
                at,
                started_at,
            })
        };
        let kinds = |e: &DomainEvent| -> Vec<(u8, Kind)> {
            occurrences(e, Some(&owner))
                .iter()
                .map(|o| (o.index, o.kind))
                .collect()
        };
        use JobState::*;
        assert_eq!(
            kinds(&change(Pending, Running, at)),
            [(0, Kind::JobStarted)]
        );
        assert_eq!(
            kinds(&change(Running, Completed, at)),
            [(0, Kind::JobEnded)]
        );
        // Seen only once it had ended: both, the start first.
        assert_eq!(
            kinds(&change(Pending, Completed, at)),
            [(0, Kind::JobStarted), (1, Kind::JobEnded)]
        );
        // Cancelled while it waited: it never started.
        assert_eq!(
            kinds(&change(Pending, Cancelled, None)),
            [(0, Kind::JobEnded)]
        );
        assert_eq!(kinds(&change(Running, Suspended, at)), []);
        assert!(occurrences(&change(Pending, Running, at), None).is_empty());

        let enforced = DomainEvent::QuotaEnforced(crate::QuotaEnforced {
            workspace: owner.workspace.clone(),
            email: owner.user.clone(),
            projected: crate::MicroUsd(120_000_000),
            pending_bill: crate::MicroUsd(90_000_000),
            limit: crate::MicroUsd(100_000_000),
            hard_limit: crate::MicroUsd(110_000_000),
            period_start: at.unwrap(),
        });
        let o = occurrences(&enforced, None);
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].kind, o[0].user.as_str()),
            (Kind::QuotaEnforced, "ada@lab.org")
        );
        assert_eq!(o[0].data["hard_limit_usd"], "110.000000");
        assert_eq!(o[0].data["limit_usd"], "100.000000");
    }

    #[test]
    fn hosts_are_allowed_by_name_wildcard_or_everything() {
        let allow = vec!["127.0.0.1".to_string(), "*.lab.org".into(), "[::1]".into()];
        assert!(host_allowed(&allow, "127.0.0.1"));
        assert!(host_allowed(&allow, "[::1]"));
        assert!(host_allowed(&allow, "Hooks.LAB.org"));
        assert!(!host_allowed(&allow, "lab.org"));
        assert!(!host_allowed(&allow, "evil-lab.org"));
        assert!(!host_allowed(&allow, "169.254.169.254"));
        assert!(host_allowed(&["*".into()], "anything.example"));
        assert!(!host_allowed(&[], "127.0.0.1"));
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(backoff(1).num_seconds(), 1);
        assert_eq!(backoff(4).num_seconds(), 8);
        assert_eq!(backoff(20).num_seconds(), MAX_BACKOFF_SECONDS);
        assert_eq!(backoff(u32::MAX).num_seconds(), MAX_BACKOFF_SECONDS);
    }
}
