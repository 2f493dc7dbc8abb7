//! Group commit, shared by both backends: one writer per store (PostgreSQL: [`run`], a task;
//! SQLite: the writer thread of `crate::sqlite_writer`) takes every append waiting,
//! writes them in one transaction (a savepoint each, so a conflict undoes only its own append)
//! and commits once. N concurrent appends cost one commit instead of N.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use std::collections::HashMap;

use crate::{
    AppendOutcome, ExpectedVersion, Head, LogError, NewEvent, Position, PreparedRow, StreamId,
    appended, prepare_rows,
};

/// The most appends one transaction takes.
pub(crate) const MAX_GROUP: usize = 256;

/// One caller's append, waiting for the group writer.
pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

/// What a group's transaction produced: each append's result, and the new head if anything was
/// written.
pub(crate) type GroupResult = (Vec<Result<AppendOutcome, LogError>>, Option<Position>);

/// A backend's way of writing one group.
#[async_trait]
pub(crate) trait GroupWrite: Send + Sync + 'static {
    async fn write_group(&self, group: &[AppendRequest]) -> Result<GroupResult, LogError>;

    /// Called after a group moved the head to `head`.
    fn moved(&self, head: Position);
}

/// Sends an append to the writer (as `wrap` makes it that writer's message) and waits for its
/// result.
pub(crate) async fn submit<T>(
    appends: &mpsc::Sender<T>,
    wrap: impl FnOnce(AppendRequest) -> T,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, LogError> {
    if events.is_empty() {
        return Err(LogError::EmptyAppend);
    }
    let (reply, answer) = oneshot::channel();
    let request = AppendRequest {
        stream: stream.clone(),
        expected,
        events: events.to_vec(),
        reply,
    };
    appends.send(wrap(request)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The error of an append whose writer has stopped (the store is closing).
pub(crate) fn stopped() -> LogError {
    LogError::Database(sqlx::Error::PoolClosed)
}

/// A group write this long is logged at debug level.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(20);

/// The writer task: runs until every sender is gone.
pub(crate) async fn run(writer: impl GroupWrite, mut requests: mpsc::Receiver<AppendRequest>) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = writer.write_group(&group).await;
        let took = started.elapsed();
        // What an append waits for: a group that takes long names itself (debug level).
        if took >= SLOW_GROUP {
            tracing::debug!(
                appends = group.len(),
                took_ms = took.as_secs_f64() * 1e3,
                "slow group append"
            );
        }
        deliver(group, result, |head| writer.moved(head));
    }
}

/// Answers every append of a group with its result (`moved` first, with the new head, if the
/// group wrote anything); a failed transaction fails each of them.
pub(crate) fn deliver(
    group: Vec<AppendRequest>,
    result: Result<GroupResult, LogError>,
    moved: impl FnOnce(Position),
) {
    match result {
        Ok((results, head)) => {
            if let Some(head) = head {
                moved(head);
            }
            for (request, result) in group.into_iter().zip(results) {
                let _ = request.reply.send(result);
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(error = %message, appends = group.len(), "group append failed");
            for request in group {
                let _ = request
                    .reply
                    .send(Err(LogError::Database(sqlx::Error::Protocol(format!(
                        "the append's transaction failed: {message}"
                    )))));
            }
        }
    }
}

/// A group's rows, planned in memory by [`plan`]: what to insert, where the head ends, and each
/// append's result.
pub(crate) struct Planned<'a> {
    pub at: Head,
    pub rows: Vec<(&'a str, PreparedRow<'a>)>,
    pub results: Vec<Result<AppendOutcome, LogError>>,
}

/// Checks each append of a group against its stream's version (`versions`: what is stored, per
/// stream) and prepares its rows after `head`, in order; a refused append takes no position.
pub(crate) fn plan<'a>(
    head: Head,
    group: &'a [AppendRequest],
    mut versions: HashMap<String, i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Planned<'a> {
    let mut at = head;
    let mut rows = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let stream = &request.stream;
        let current = versions.get(stream.as_str()).copied().unwrap_or(0);
        let prepared = request
            .expected
            .check(stream, current)
            .and_then(|()| prepare_rows(at, stream, current, &request.events, now));
        match prepared.and_then(|prepared| Ok((appended(&mut at, &prepared)?, prepared))) {
            Ok((outcome, prepared)) => {
                versions.insert(stream.to_string(), outcome.stream_version);
                rows.extend(prepared.into_iter().map(|r| (stream.as_str(), r)));
                results.push(Ok(outcome));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    Planned { at, rows, results }
}
