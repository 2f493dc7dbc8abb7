//! The webhook outbox against a real SQLite log and read store, with a sender that counts (the
//! HTTP sender is tested end to end in `tests/tests/webhooks.rs`): an attempt made at a version
//! of the webhook's stream that another runner has moved past is dropped, not recorded, and the
//! version is caught up from the one known.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use commands::webhooks::{Outbox, OutboxSettings, Sent, WebhookSender};
use domain::webhook::Kind;
use domain::{DomainEvent, Email, MicroUsd, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, StreamId};

mod common;

#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait]
impl WebhookSender for Counting {
    async fn post(&self, _: &str, _: &[(&'static str, String)], _: &[u8]) -> Sent {
        self.0.fetch_add(1, Ordering::SeqCst);
        Sent::Answered(204)
    }
}

fn outbox(store: &eventlog::Store, sender: Arc<Counting>) -> Outbox {
    Outbox::new(
        store.log.clone(),
        store.read.clone(),
        sender,
        OutboxSettings {
            key: Arc::new(b"a key of thirty-two bytes or so!".to_vec()),
            allow: Arc::new(domain::webhook::loopback()),
        },
        Arc::new(eventlog::SystemClock),
    )
}

async fn warn(log: &dyn EventLog, ws: &WorkspaceId, email: &Email) {
    let e = DomainEvent::QuotaWarningRaised(domain::QuotaWarningRaised {
        workspace: ws.clone(),
        email: email.clone(),
        projected: MicroUsd(2),
        pending_bill: MicroUsd(1),
        limit: MicroUsd(1),
        period_start: chrono::Utc::now(),
    });
    log.append(
        &StreamId::new(format!("quota:{ws}:{email}")).unwrap(),
        ExpectedVersion::Any,
        &[commands::encode(&e, commands::system_metadata("test")).unwrap()],
    )
    .await
    .unwrap();
}

/// The outcomes recorded in the webhook's attempt stream, in order.
async fn recorded(log: &dyn EventLog, ws: &WorkspaceId, id: uuid::Uuid) -> Vec<(i64, String)> {
    let stream = commands::webhooks::stream(ws, id).unwrap();
    log.read_stream(&stream, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(
            |e| match DomainEvent::decode(&e.event_type, 1, &e.data).unwrap() {
                Some(DomainEvent::WebhookDeliveryAttempted(a)) => (a.position, a.outcome),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_at_a_stale_version_is_dropped_and_the_version_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let ws = WorkspaceId::new("default").unwrap();
    let ada = Email::new("ada@lab.org").unwrap();
    let (id, _) = commands::webhooks::register(
        store.log.as_ref(),
        &ws,
        &ada,
        "http://127.0.0.1:9/hook",
        vec![Kind::QuotaWarning],
        commands::system_metadata("test"),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let sent = Arc::new(Counting::default());
    let mut ours = outbox(&store, sent.clone());
    ours.pass().await.unwrap();

    // A warning to deliver, and an attempt another runner recorded that this one never saw
    // (a former leader, or this one stopped between an append and its queue change).
    warn(store.log.as_ref(), &ws, &ada).await;
    let theirs = DomainEvent::WebhookDeliveryAttempted(domain::WebhookDeliveryAttempted {
        webhook_id: id,
        workspace: ws.clone(),
        user: ada.clone(),
        delivery_id: format!("{id}:0:0"),
        position: 0,
        event: Kind::QuotaWarning,
        job_id: None,
        attempt: 1,
        outcome: "failed".into(),
        status: Some(503),
        error: None,
        duration_ms: 1,
        at: chrono::Utc::now(),
        next_attempt_at: None,
    });
    let stream = commands::webhooks::stream(&ws, id).unwrap();
    store
        .log
        .append(
            &stream,
            ExpectedVersion::Any,
            &[commands::encode(&theirs, commands::system_metadata("test")).unwrap()],
        )
        .await
        .unwrap();

    // This runner's attempt, made at the version it knew, is not recorded...
    let (pass, _) = ours.pass().await.unwrap();
    assert_eq!((pass.queued, pass.delivered), (1, 0), "{pass:?}");
    assert_eq!(sent.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        recorded(store.log.as_ref(), &ws, id).await,
        [(0, "failed".to_string())]
    );
    // ...and the next pass, at the version caught up, sends it again and records it once.
    let (pass, _) = ours.pass().await.unwrap();
    assert_eq!(pass.delivered, 1, "{pass:?}");
    let all = recorded(store.log.as_ref(), &ws, id).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1].1, "delivered", "{all:?}");
    // A new runner starts from the stored version: nothing is left to send, nothing conflicts.
    let mut next = outbox(&store, sent.clone());
    let (pass, _) = next.pass().await.unwrap();
    assert_eq!(pass, commands::webhooks::Pass::default());
    assert_eq!(sent.0.load(Ordering::SeqCst), 2);
}
