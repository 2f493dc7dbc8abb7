//! The `costs` projection gives the figures the jobs view gives: for every user, period and
//! instant, the jobs it hands back price to the same usage and series as every job of the
//! workspace read from the jobs view — across months, with jobs that never start, ended jobs,
//! a NODE_FAIL that Slurm corrects, and a rebuilt projection.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::cost::{CostJob, Period, PricedJob, Pricing, series, usage, usage_by_user};
use domain::job::JobState;
use domain::submit::JobShape;
use domain::{
    ClusterId, DomainEvent, Email, JobStateChanged, JobSubmitted, MicroUsd, SubmittedVia,
    WorkspaceId,
};
use eventlog::{ExpectedVersion, ModelSet, NewEvent, OpenOptions, StreamId, SystemClock};
use projections::views::{costs, jobs};
use projections::{Target, catch_up};

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    // Day 0 is 2026-10-31: the jobs run across the end of October into November.
    Utc.with_ymd_and_hms(2026, 10, 31, 0, 0, 0).unwrap()
        + Duration::days(i64::from(day))
        + Duration::hours(i64::from(hour))
}

fn shape(cpus: u32, minutes: Option<u32>) -> JobShape {
    serde_json::from_value(
        serde_json::json!({"cpus": cpus, "memory_mib": null, "nodes": 1,
        "time_limit_minutes": minutes, "gpus": 0}),
    )
    .unwrap()
}

fn pricing() -> Pricing {
    Pricing {
        catalog: Arc::new(
            domain::scaling::Catalog::parse(
                include_str!("../../fixtures/catalog/shapes.json"),
                512,
            )
            .unwrap(),
        ),
        default_mib_per_cpu: 2048,
    }
}

struct Log {
    store: eventlog::Store,
    _dir: tempfile::TempDir,
    ws: WorkspaceId,
}

impl Log {
    async fn append(&self, stream: &str, event: DomainEvent) {
        let new = NewEvent {
            schema_version: event.schema_version(),
            ..NewEvent::new(event.event_type(), event.data().unwrap())
        };
        self.store
            .log
            .append(
                &StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                &[new],
            )
            .await
            .unwrap();
    }

    async fn submit(&self, cluster: &str, id: u64, user: &str, cpus: u32, rate: Option<i64>) {
        let submitted = JobSubmitted {
            submission_id: uuid::Uuid::from_u128(u128::from(id) + 1_000 * cpus as u128),
            workspace: self.ws.clone(),
            cluster_id: ClusterId::new(cluster).unwrap(),
            job_id: id,
            name: format!("j{id}"),
            user: Email::new(user).unwrap(),
            via: SubmittedVia::Api,
            template_id: None,
            params: None,
            body: serde_json::json!({}),
            shape: shape(cpus, id.is_multiple_of(2).then_some(90)),
            warnings: Vec::new(),
            submitted_at: Some(at(0, 0)),
            rate: rate.map(MicroUsd),
        };
        let stream = format!("job-{cluster}-{id}");
        self.append(&stream, DomainEvent::JobSubmitted(submitted))
            .await;
    }

    async fn change(&self, cluster: &str, id: u64, to: JobState, when: DateTime<Utc>) {
        let change = JobStateChanged {
            job_id: id,
            from: JobState::Pending,
            to,
            reason: None,
            node: None,
            exit_code: None,
            at: Some(when),
            started_at: None,
        };
        let stream = format!("job-{cluster}-{id}");
        self.append(&stream, DomainEvent::JobStateChanged(change))
            .await;
    }
}

/// Every started job of the workspace from the jobs view, priced as the API used to.
async fn from_jobs_view(log: &Log) -> Vec<CostJob> {
    let mut views = Vec::new();
    for cluster in ["c1", "c2"] {
        let cluster = ClusterId::new(cluster).unwrap();
        let read = log.store.read.as_ref();
        views.extend(jobs::of_cluster(read, &log.ws, &cluster).await.unwrap());
    }
    let p = pricing();
    views
        .iter()
        .filter_map(|v| {
            p.job(PricedJob {
                user: &v.user,
                job_id: v.job_id,
                shape: &v.shape,
                started_at: v.started_at,
                ended_at: v.ended_at,
                recorded_rate: v.rate,
            })
        })
        .collect()
}

async fn project(log: &Log, set: ModelSet) {
    for p in [
        &projections::views::clusters::ClusterViews as &dyn projections::Projector,
        &jobs::JobViews,
        &costs::CostViews,
    ] {
        let target = Target {
            set,
            until: None,
            batch: 7,
        };
        catch_up(
            log.store.log.as_ref(),
            log.store.read.as_ref(),
            p,
            target,
            None,
            |_, _| {},
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_costs_projection_prices_like_every_job_of_the_jobs_view() {
    let dir = tempfile::tempdir().unwrap();
    let o = OpenOptions::new(format!("sqlite://{}", dir.path().join("c.db").display()));
    let log = Log {
        store: eventlog::open(&o, Arc::new(SystemClock)).await.unwrap(),
        _dir: dir,
        ws: WorkspaceId::new("ws").unwrap(),
    };
    // The clusters the jobs view lists the workspace's jobs by.
    for c in ["c1", "c2"] {
        let registered = domain::ClusterRegistered {
            workspace: log.ws.clone(),
            cluster_id: ClusterId::new(c).unwrap(),
            name: c.into(),
            region: "local".into(),
            bucket: format!("b-{c}"),
            registered_by: Email::new("admin@x.org").unwrap(),
            slurm: None,
        };
        log.append(
            &format!("cluster-{c}"),
            DomainEvent::ClusterRegistered(registered),
        )
        .await;
    }
    let (a, b) = ("a@x.org", "b@x.org");
    // Job 1 (both clusters: ids repeat across clusters): ran in October, ended in November.
    for c in ["c1", "c2"] {
        log.submit(c, 1, a, 2, Some(100_000)).await;
        log.change(c, 1, JobState::Running, at(0, 20)).await;
        log.change(c, 1, JobState::Completed, at(1, 3)).await;
    }
    // Job 2: never started (cancelled while pending). Job 3: runs on, priced from the catalog.
    log.submit("c1", 2, b, 1, Some(50_000)).await;
    log.change("c1", 2, JobState::Cancelled, at(1, 0)).await;
    log.submit("c1", 3, b, 4, None).await;
    log.change("c1", 3, JobState::Running, at(1, 1)).await;
    // Job 4: a NODE_FAIL that Slurm corrects: running again, then done in mid-November.
    log.submit("c2", 4, a, 1, Some(30_000)).await;
    log.change("c2", 4, JobState::Running, at(1, 2)).await;
    log.change("c2", 4, JobState::NodeFail, at(1, 4)).await;
    log.change("c2", 4, JobState::Running, at(1, 5)).await;
    log.change("c2", 4, JobState::Completed, at(15, 0)).await;
    // Job 5: ended in October, before every period asked about below but the first.
    log.submit("c2", 5, b, 8, Some(400_000)).await;
    log.change("c2", 5, JobState::Running, at(0, 1)).await;
    log.change("c2", 5, JobState::Failed, at(0, 2)).await;

    // Job 6: Slurm dates its end an hour past the end of November, ahead of an instant asked
    // about (a clock ahead of the server's): still counted up to that instant.
    log.submit("c1", 6, a, 2, Some(60_000)).await;
    log.change("c1", 6, JobState::Running, at(30, 0)).await;
    log.change("c1", 6, JobState::Completed, at(31, 1)).await;

    project(&log, ModelSet::Live).await;
    let all = from_jobs_view(&log).await;
    assert_eq!(all.len(), 6, "{all:?}");
    let p = pricing();
    let read = log.store.read.as_ref();
    let periods = [
        Period::month_of(at(0, 0)),
        Period::month_of(at(2, 0)),
        Period::of(domain::cost::PeriodKind::Day, at(1, 0)),
        Period::of(domain::cost::PeriodKind::Week, at(3, 0)),
    ];
    for period in periods {
        for now in [at(1, 4), at(2, 0), at(20, 0), at(30, 23)] {
            if now < period.start {
                continue;
            }
            for user in [a, b] {
                let email = Email::new(user).unwrap();
                let window = (period.start, now);
                let mine = costs::priced_jobs(read, &log.ws, Some(&email), window, &p)
                    .await
                    .unwrap();
                let theirs: Vec<&CostJob> = all.iter().filter(|j| j.user == user).collect();
                assert_eq!(
                    usage(&mine, period, now),
                    usage(theirs.iter().copied(), period, now),
                    "{user} in {period:?} at {now}"
                );
                let mine: Vec<&CostJob> = mine.iter().collect();
                assert_eq!(
                    series(&mine, period.start, now, Duration::hours(6), now),
                    series(&theirs, period.start, now, Duration::hours(6), now),
                    "{user}'s series in {period:?} at {now}"
                );
            }
            let window = (period.start, now);
            let everyone = costs::priced_jobs(read, &log.ws, None, window, &p)
                .await
                .unwrap();
            assert_eq!(
                usage_by_user(&everyone, period, now),
                usage_by_user(&all, period, now),
                "{period:?} at {now}"
            );
        }
    }
    // A job that ended before the period is not read at all.
    let b_email = Email::new(b).unwrap();
    let november = costs::priced_jobs(read, &log.ws, Some(&b_email), (at(1, 0), at(20, 0)), &p)
        .await
        .unwrap();
    assert!(november.iter().all(|j| j.job_id != 5), "{november:?}");

    // A rebuild gives the same documents.
    let report = projections::verify(log.store.log.as_ref(), read, &costs::CostViews, |_, _| {})
        .await
        .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}
