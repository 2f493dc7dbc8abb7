//! The replica-store contract: one suite, run unchanged against every adapter.
//!
//! - SQLite: a temp dir per case.
//! - PostgreSQL: `DATABASE_URL` (scripts/test sets it); each case gets its own schema.
//! - DynamoDB: `CLUSTERRA_DYNAMODB_ENDPOINT`, a DynamoDB-compatible server (scripts/test starts
//!   moto_server with `scripts/moto start`); each case gets its own table. `SKIP_DYNAMODB=1
//!   scripts/test` skips these cases, saying so.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commands::replicas::{ReplicaError, ReplicaStore, ReplicaWrite, Replicas};
use domain::scaling::{Family, NodeSet, Size};
use domain::{ClusterId, WorkspaceId};
use eventlog::{OpenOptions, SystemClock};
use gateways::replicas::{DynamoReplicas, DynamoSettings, SqlReplicas};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
    Dynamo,
}

struct Ctx {
    store: Arc<dyn ReplicaStore>,
    _dir: Option<tempfile::TempDir>,
}

fn skip_dynamodb() -> bool {
    if std::env::var("CLUSTERRA_SKIP_DYNAMODB").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CLUSTERRA_SKIP_DYNAMODB=1 (no DynamoDB server in this run)");
        return true;
    }
    false
}

fn dynamodb_endpoint() -> String {
    std::env::var("CLUSTERRA_DYNAMODB_ENDPOINT").expect(
        "the DynamoDB contract cases need CLUSTERRA_DYNAMODB_ENDPOINT; run scripts/test, which starts \
         moto_server, or `scripts/moto start` and export its output",
    )
}

fn dynamo_settings(endpoint: String, table: String, create_table: bool) -> DynamoSettings {
    DynamoSettings {
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        credentials: Some(("clusterra-test".into(), "clusterra-test-secret".into())),
        table,
        create_table,
        timeout: Duration::from_secs(5),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Ctx {
    /// None: this backend is skipped in this run (it said so).
    async fn new(backend: Backend) -> Option<Self> {
        let log_options = |options: OpenOptions| async move {
            eventlog::open(&options, Arc::new(SystemClock))
                .await
                .expect("open the log's database")
        };
        Some(match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("log.db").display());
                let log = log_options(OpenOptions::new(url)).await;
                Ctx {
                    store: Arc::new(SqlReplicas::new(log.db).await.expect("sql replicas")),
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let url = std::env::var("DATABASE_URL").expect(
                    "the PostgreSQL contract cases need DATABASE_URL; run scripts/test, which finds or starts a PostgreSQL",
                );
                let mut options = OpenOptions::new(url);
                options.pg_schema = Some(unique("t_"));
                options.max_connections = 16;
                let log = log_options(options).await;
                Ctx {
                    store: Arc::new(SqlReplicas::new(log.db).await.expect("sql replicas")),
                    _dir: None,
                }
            }
            Backend::Dynamo => {
                if skip_dynamodb() {
                    return None;
                }
                let settings = dynamo_settings(dynamodb_endpoint(), unique("replicas-"), true);
                Ctx {
                    store: Arc::new(
                        DynamoReplicas::connect(&settings)
                            .await
                            .expect("dynamodb replicas"),
                    ),
                    _dir: None,
                }
            }
        })
    }

    /// What the store holds for `set` of workspace `acme`'s `cluster`.
    async fn stored(&self, cluster: &str, set: NodeSet) -> Option<Replicas> {
        self.store
            .get(&ws("acme"), &cl(cluster), set)
            .await
            .unwrap()
    }
}

fn ws(s: &str) -> WorkspaceId {
    WorkspaceId::new(s).expect("workspace id")
}

fn cl(s: &str) -> ClusterId {
    ClusterId::new(s).expect("cluster id")
}

fn set(family: Family, size: Size) -> NodeSet {
    NodeSet { family, size }
}

/// A time the databases keep exactly (PostgreSQL keeps microseconds).
fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + seconds, 123_456_000).expect("time")
}

fn write(node_set: NodeSet, desired: u32, expected_version: u64, decided_at: i64) -> ReplicaWrite {
    ReplicaWrite {
        workspace: ws("acme"),
        cluster_id: cl("main"),
        node_set,
        desired,
        expected_version,
        decided_at,
        now: at(decided_at),
    }
}

fn conflict(result: Result<Replicas, ReplicaError>) -> Option<Replicas> {
    match result {
        Err(ReplicaError::Conflict { current }) => current.map(|c| *c),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

const SMALL: NodeSet = NodeSet {
    family: Family::Compute,
    size: Size::Small,
};

async fn first_put_creates_version_1(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    let stored = ctx.store.put(&write(SMALL, 3, 0, 10)).await.unwrap();
    assert_eq!(
        stored,
        Replicas {
            workspace: ws("acme"),
            cluster_id: cl("main"),
            node_set: SMALL,
            desired: 3,
            version: 1,
            updated_at: at(10),
            decided_at: 10,
        }
    );
    let got = ctx.stored("main", SMALL).await;
    assert_eq!(got, Some(stored));
    assert!(["sql", "dynamodb"].contains(&ctx.store.backend()));
}

async fn second_create_conflicts_and_returns_the_stored_item(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    let first = ctx.store.put(&write(SMALL, 3, 0, 10)).await.unwrap();
    let current = conflict(ctx.store.put(&write(SMALL, 9, 0, 11)).await);
    assert_eq!(current, Some(first.clone()));
    assert_eq!(ctx.stored("main", SMALL).await, Some(first));
}

async fn put_with_the_right_version_bumps_it(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    ctx.store.put(&write(SMALL, 3, 0, 10)).await.unwrap();
    let second = ctx.store.put(&write(SMALL, 5, 1, 20)).await.unwrap();
    assert_eq!(
        (
            second.desired,
            second.version,
            second.decided_at,
            second.updated_at
        ),
        (5, 2, 20, at(20))
    );
    let third = ctx.store.put(&write(SMALL, 0, 2, 30)).await.unwrap();
    assert_eq!((third.desired, third.version), (0, 3));
    assert_eq!(ctx.stored("main", SMALL).await, Some(third));
}

/// A stale leader read version 1, a newer leader already wrote version 2: the stale write is
/// refused and the newer decision stays.
async fn stale_leader_cannot_overwrite_a_newer_decision(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    ctx.store.put(&write(SMALL, 3, 0, 10)).await.unwrap();
    let newer = ctx.store.put(&write(SMALL, 8, 1, 30)).await.unwrap();
    let current = conflict(ctx.store.put(&write(SMALL, 1, 1, 20)).await);
    assert_eq!(current, Some(newer.clone()));
    // A version from the future conflicts too.
    let current = conflict(ctx.store.put(&write(SMALL, 1, 7, 40)).await);
    assert_eq!(current, Some(newer.clone()));
    assert_eq!(ctx.stored("main", SMALL).await, Some(newer));
    // Expecting an item that does not exist: conflict, nothing stored.
    let other = set(Family::Memory, Size::Large);
    assert_eq!(conflict(ctx.store.put(&write(other, 2, 1, 50)).await), None);
    assert_eq!(ctx.stored("main", other).await, None);
}

async fn get_of_a_missing_set_is_none(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    assert_eq!(ctx.stored("main", SMALL).await, None);
    ctx.store.put(&write(SMALL, 3, 0, 10)).await.unwrap();
    let missing = set(Family::Compute, Size::Medium);
    assert_eq!(ctx.stored("main", missing).await, None);
    assert_eq!(ctx.stored("other", SMALL).await, None);
}

async fn list_returns_one_clusters_sets_in_node_set_order(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    // Alphabetically: compute-large < compute-small < compute-xs < general-medium < memory-xlarge.
    let sets = [
        set(Family::Memory, Size::Xlarge),
        set(Family::Compute, Size::Small),
        set(Family::General, Size::Medium),
        set(Family::Compute, Size::Xs),
        set(Family::Compute, Size::Large),
    ];
    for (i, s) in sets.iter().enumerate() {
        ctx.store
            .put(&write(*s, i as u32 + 1, 0, i as i64 + 1))
            .await
            .unwrap();
    }
    // The same set names in another cluster of the workspace and in another workspace.
    for (workspace, cluster) in [("acme", "other"), ("zeta", "main"), ("acme", "mai")] {
        for s in &sets[..2] {
            let mut w = write(*s, 99, 0, 99);
            w.workspace = ws(workspace);
            w.cluster_id = cl(cluster);
            ctx.store.put(&w).await.unwrap();
        }
    }
    let listed = ctx.store.list(&ws("acme"), &cl("main")).await.unwrap();
    let mut expected = sets.to_vec();
    expected.sort();
    assert_eq!(
        listed.iter().map(|r| r.node_set).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        listed
            .iter()
            .map(|r| r.node_set.to_string())
            .collect::<Vec<_>>(),
        [
            "compute-xs",
            "compute-small",
            "compute-large",
            "general-medium",
            "memory-xlarge"
        ]
    );
    assert!(
        listed
            .iter()
            .all(|r| r.workspace == ws("acme") && r.cluster_id == cl("main") && r.desired != 99)
    );
    assert_eq!(
        ctx.store
            .list(&ws("acme"), &cl("other"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        ctx.store
            .list(&ws("nobody"), &cl("main"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_puts_expecting_the_same_version_have_one_winner(b: Backend) {
    let Some(ctx) = Ctx::new(b).await else { return };
    for round in 0..2u64 {
        // Round 0 races on creation (expected 0), round 1 on an update (expected 1).
        let tasks: Vec<_> = (0..32u32)
            .map(|i| {
                let store = ctx.store.clone();
                tokio::spawn(async move {
                    store
                        .put(&write(SMALL, 100 + i, round, i64::from(i) + 1))
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(stored) => winners.push(stored),
                Err(ReplicaError::Conflict { current }) => losers.push(current),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(losers.len(), 31);
        let winner = winners.pop().unwrap();
        assert_eq!(winner.version, round + 1);
        assert!(losers.iter().all(|c| c.is_some()));
        assert_eq!(ctx.stored("main", SMALL).await, Some(winner));
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::Dynamo).await;
                }
            )*
        }
    };
}

contract!(
    first_put_creates_version_1,
    second_create_conflicts_and_returns_the_stored_item,
    put_with_the_right_version_bumps_it,
    stale_leader_cannot_overwrite_a_newer_decision,
    get_of_a_missing_set_is_none,
    list_returns_one_clusters_sets_in_node_set_order,
    concurrent_puts_expecting_the_same_version_have_one_winner,
);

/// DynamoDB only: what an operator sees when the table or the server is not there.
mod dynamodb_failures {
    use super::*;

    fn unavailable(result: Result<Option<Replicas>, ReplicaError>) -> String {
        match result {
            Err(ReplicaError::Unavailable(m)) => m,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_table_without_create_table_is_unavailable_with_a_clear_message() {
        if skip_dynamodb() {
            return;
        }
        let endpoint = dynamodb_endpoint();
        let table = unique("missing-");
        let store =
            DynamoReplicas::connect(&dynamo_settings(endpoint.clone(), table.clone(), false))
                .await
                .expect("connect calls nothing without create_table");
        let message = unavailable(store.get(&ws("acme"), &cl("main"), SMALL).await);
        assert!(message.contains(&table), "{message}");
        assert!(message.contains(&endpoint), "{message}");
        assert!(message.contains("does not exist"), "{message}");
        let message = match store.put(&write(SMALL, 1, 0, 1)).await {
            Err(ReplicaError::Unavailable(m)) => m,
            other => panic!("expected Unavailable, got {other:?}"),
        };
        assert!(message.contains("does not exist"), "{message}");
        match store.list(&ws("acme"), &cl("main")).await {
            Err(ReplicaError::Unavailable(m)) => assert!(m.contains(&table), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_not_a_hang() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut settings = dynamo_settings(endpoint.clone(), "replicas".into(), false);
        settings.timeout = Duration::from_secs(2);
        let started = Instant::now();
        let store = DynamoReplicas::connect(&settings).await.expect("connect");
        let message = unavailable(store.get(&ws("acme"), &cl("main"), SMALL).await);
        assert!(message.contains(&endpoint), "{message}");
        settings.create_table = true;
        match DynamoReplicas::connect(&settings).await {
            Err(ReplicaError::Unavailable(m)) => assert!(m.contains(&endpoint), "{m}"),
            Err(e) => panic!("expected Unavailable, got {e:?}"),
            Ok(_) => panic!("expected Unavailable, got a store"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }
}
