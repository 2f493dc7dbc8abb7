//! The edge agent and the replica sync against real SQLite (log and embedded replica store) and
//! real local executors: node events follow the desired counts, a restarted agent records only
//! its own lost nodes, and the sync never lets an older decision overwrite a newer one.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use commands::fleet::{EdgeAgent, NodeChange, live_nodes};
use commands::replicas::{ReplicaStore, ReplicaWrite, Replicas};
use commands::scaling::{Scaler, ScalingJob};
use domain::scaling::{Catalog, Family, NodeSet, Size};
use domain::{ClusterId, WorkspaceId};
use eventlog::EventLog;
use gateways::local::{LocalExecutor, LocalSettings, NodeSettings};
use gateways::replicas::SqlReplicas;

mod common;

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).unwrap())
}

fn ids() -> (WorkspaceId, ClusterId) {
    (
        WorkspaceId::new("default").unwrap(),
        ClusterId::new("local").unwrap(),
    )
}

/// Where a 1-vCPU job at 2 GiB goes: an m7g.medium (a c7g.medium keeps 1.5 GiB; a c7g.large
/// costs more).
const ONE_VCPU: NodeSet = NodeSet {
    family: Family::General,
    size: Size::Xs,
};

fn executor(dir: &std::path::Path, name: &str) -> Arc<LocalExecutor> {
    executor_capped(dir, name, 100)
}

fn executor_capped(dir: &std::path::Path, name: &str, max_launch: u32) -> Arc<LocalExecutor> {
    Arc::new(
        LocalExecutor::open(
            LocalSettings {
                state_dir: dir.join(name),
                efs_root: dir.join("efs"),
                grace: Duration::from_millis(200),
                minute: Duration::from_secs(60),
                slots: 0,
                nodes: Some(NodeSettings {
                    catalog: catalog(),
                    default_mib_per_cpu: 2048,
                    cold_start: Duration::ZERO,
                    max_launch_per_step: max_launch,
                }),
                user: gateways::jobuser::JobUser::current(),
            },
            chrono::Utc::now(),
        )
        .unwrap(),
    )
}

/// A temporary folder with a fresh SQLite log and the replica store embedded in it.
async fn store() -> (tempfile::TempDir, eventlog::Store, Arc<dyn ReplicaStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let replicas = Arc::new(SqlReplicas::new(store.db.clone()).await.unwrap());
    (dir, store, replicas)
}

/// Stores a decision of `desired` one-vCPU nodes for the `ids()` cluster.
async fn put_small(
    replicas: &dyn ReplicaStore,
    desired: u32,
    expected_version: u64,
    decided_at: i64,
    now: chrono::DateTime<chrono::Utc>,
) {
    let (workspace, cluster_id) = ids();
    replicas
        .put(&ReplicaWrite {
            workspace,
            cluster_id,
            node_set: ONE_VCPU,
            desired,
            expected_version,
            decided_at,
            now,
        })
        .await
        .unwrap();
}

/// The stored one-vCPU-node item of the `ids()` cluster.
async fn stored_small(replicas: &dyn ReplicaStore) -> Replicas {
    let (workspace, cluster) = ids();
    replicas
        .get(&workspace, &cluster, ONE_VCPU)
        .await
        .unwrap()
        .unwrap()
}

/// Copies the scaler's decisions for the `ids()` cluster into `replicas`; how many it wrote.
async fn sync(
    scaler: &Scaler,
    log: &dyn EventLog,
    replicas: &dyn ReplicaStore,
    now: chrono::DateTime<chrono::Utc>,
) -> usize {
    let (workspace, cluster) = ids();
    scaler
        .sync_replicas(log, replicas, &workspace, &cluster, now)
        .await
        .unwrap()
}

/// The live nodes the log knows of in the `ids()` cluster, by name: (node set, ready).
async fn cluster_live_nodes(log: &dyn EventLog) -> BTreeMap<String, (NodeSet, bool)> {
    let (workspace, cluster) = ids();
    live_nodes(log, &workspace, &cluster).await.unwrap()
}

fn agent(replicas: &Arc<dyn ReplicaStore>, fleet: Arc<LocalExecutor>) -> EdgeAgent {
    let (workspace, cluster) = ids();
    EdgeAgent {
        workspace,
        cluster,
        replicas: replicas.clone(),
        fleet,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_counts_and_a_restart_records_only_its_own_lost_nodes() {
    let (dir, store, replicas) = store().await;
    let now = chrono::Utc::now();
    put_small(replicas.as_ref(), 1, 0, 1, now).await;

    // Two executors (two processes' data directories) each bring one node up.
    let a = agent(&replicas, executor(dir.path(), "a"));
    let b = agent(&replicas, executor(dir.path(), "b"));
    let changes = a.step(store.log.as_ref(), now).await.unwrap();
    assert!(
        matches!(
            &changes[..],
            [NodeChange::Launched { .. }, NodeChange::Ready { .. }]
        ),
        "{changes:?}"
    );
    assert!(b.step(store.log.as_ref(), now).await.unwrap().len() == 2);
    // Nothing to do a second time.
    assert!(a.step(store.log.as_ref(), now).await.unwrap().is_empty());
    let live = cluster_live_nodes(store.log.as_ref()).await;
    assert_eq!(live.len(), 2, "{live:?}");

    // A restarts (same data directory, new process state): only its own node is lost.
    let a2 = agent(&replicas, executor(dir.path(), "a"));
    assert_eq!(a2.recover(store.log.as_ref()).await.unwrap(), 1);
    let after = cluster_live_nodes(store.log.as_ref()).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(b.fleet.nodes().await.iter().all(|n| after.contains_key(n)));
    // B's restart check finds nothing of its own lost.
    assert_eq!(b.recover(store.log.as_ref()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_launches_at_most_its_step_limit_at_once() {
    let (dir, store, replicas) = store().await;
    let now = chrono::Utc::now();
    put_small(replicas.as_ref(), 7, 0, 1, now).await;
    let a = agent(&replicas, executor_capped(dir.path(), "a", 3));
    let launched = |changes: &[NodeChange]| {
        changes
            .iter()
            .filter(|c| matches!(c, NodeChange::Launched { .. }))
            .count()
    };
    let mut steps = Vec::new();
    for _ in 0..4 {
        steps.push(launched(&a.step(store.log.as_ref(), now).await.unwrap()));
    }
    assert_eq!(steps, [3, 3, 1, 0]);
    assert_eq!(a.fleet.nodes().await.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_copies_decisions_and_never_lets_an_older_one_win() {
    let (_dir, store, replicas) = store().await;
    let (workspace, cluster) = ids();
    let now = chrono::Utc::now();
    let scaler = Scaler::new(catalog(), 2048, chrono::Duration::minutes(5), now);
    let made = scaler
        .cycle(store.log.as_ref(), &workspace, &cluster, &pending(2), now)
        .await
        .unwrap();
    assert_eq!(made.len(), 1);
    let written = sync(&scaler, store.log.as_ref(), replicas.as_ref(), now).await;
    assert_eq!(written, 1);
    let stored = stored_small(replicas.as_ref()).await;
    assert_eq!((stored.desired, stored.version), (2, 1));
    // Idempotent: nothing new, nothing written.
    let again = sync(&scaler, store.log.as_ref(), replicas.as_ref(), now).await;
    assert_eq!(again, 0);

    // Another writer stored a newer decision (a later log position): the sync leaves it.
    put_small(replicas.as_ref(), 7, 1, stored.decided_at + 1_000, now).await;
    let written = sync(&scaler, store.log.as_ref(), replicas.as_ref(), now).await;
    assert_eq!(written, 0);
    let kept = stored_small(replicas.as_ref()).await;
    assert_eq!(kept.desired, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_stands_while_neither_the_jobs_nor_the_nodes_move() {
    let (_dir, store, _replicas) = store().await;
    let now = chrono::Utc::now();
    let scaler = Scaler::new(catalog(), 2048, chrono::Duration::minutes(5), now);
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let cycle = |generation: u64, n: u64| {
        let asked = &asked;
        let scaler = &scaler;
        let log = store.log.clone();
        let (workspace, cluster) = ids();
        async move {
            scaler
                .cycle_with(
                    log.as_ref(),
                    &workspace,
                    &cluster,
                    Some(generation),
                    |each| {
                        asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        each(&pending(n).as_slice())
                    },
                    now,
                )
                .await
                .unwrap()
        }
    };
    // Planned once: two jobs, one decision.
    assert_eq!(cycle(1, 2).await.len(), 1);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Same generation: the jobs are not asked for, and the kept plan decides nothing new.
    assert!(cycle(1, 2).await.is_empty());
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The generation moves (more jobs): planned again, and the count follows.
    let made = cycle(2, 9).await;
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(made.len(), 1);
    assert!(made[0].to > made[0].from, "{made:?}");
}

/// `n` pending one-vCPU jobs, ids 1..=n.
fn pending(n: u64) -> Vec<ScalingJob> {
    (1..=n)
        .map(|job_id| ScalingJob {
            job_id,
            running: false,
            shape: common::one_cpu(),
            nodes: None,
        })
        .collect()
}
