//! Rebuild a read model from position 0, and compare a rebuild with the live tables.

use std::collections::BTreeMap;

use eventlog::{EventLog, ModelSet, Position, ReadStore};
use serde::Serialize;

use crate::runner::{Target, catch_up};
use crate::{ProjectionError, Projector};

/// Events per transaction during a rebuild: bigger than the live runner's, for throughput.
pub const REBUILD_BATCH: usize = 5_000;

/// Rebuilds `projector` into the rebuild tables up to the current head, then swaps it in for
/// the live read model atomically. `progress(position, head)` is called after every batch.
pub async fn rebuild_and_promote(
    log: &dyn EventLog,
    store: &dyn ReadStore,
    projector: &dyn Projector,
    mut progress: impl FnMut(Position, Position),
) -> Result<Position, ProjectionError> {
    let name = projector.name();
    store.clear(ModelSet::Rebuild, name).await?;
    let head = log.head().await?.position;
    let reached = catch_up(
        log,
        store,
        projector,
        Target {
            set: ModelSet::Rebuild,
            until: Some(head),
            batch: REBUILD_BATCH,
        },
        None,
        |p, _| progress(p, head),
    )
    .await?;
    store.promote(name).await?;
    Ok(reached)
}

/// One way a live read model differs from its rebuild.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The rebuild has a document the live model lacks.
    MissingFromLive {
        collection: String,
        key: String,
        rebuilt: serde_json::Value,
    },
    /// The live model has a document the rebuild does not.
    NotInRebuild {
        collection: String,
        key: String,
        live: serde_json::Value,
    },
    /// Both have the document, with different contents.
    Changed {
        collection: String,
        key: String,
        live: serde_json::Value,
        rebuilt: serde_json::Value,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::MissingFromLive {
                collection,
                key,
                rebuilt,
            } => {
                write!(
                    f,
                    "{collection}/{key}: missing from live; rebuild has {rebuilt}"
                )
            }
            Difference::NotInRebuild {
                collection,
                key,
                live,
            } => {
                write!(
                    f,
                    "{collection}/{key}: only in live ({live}); the log does not produce it"
                )
            }
            Difference::Changed {
                collection,
                key,
                live,
                rebuilt,
            } => {
                write!(
                    f,
                    "{collection}/{key}: live has {live}, rebuild has {rebuilt}"
                )
            }
        }
    }
}

/// The result of comparing one projection's live model with a rebuild at the same position.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub projection: String,
    pub position: Position,
    pub documents: usize,
    pub differences: Vec<Difference>,
}

/// Rebuilds `projector` from position 0 up to exactly the live checkpoint (read in one snapshot
/// with the live documents) and lists every difference. The live tables are not touched.
pub async fn verify(
    log: &dyn EventLog,
    store: &dyn ReadStore,
    projector: &dyn Projector,
    mut progress: impl FnMut(Position, Position),
) -> Result<VerifyReport, ProjectionError> {
    let name = projector.name();
    let (live_position, live_docs) = store.dump(ModelSet::Live, name).await?;
    store.clear(ModelSet::Rebuild, name).await?;
    catch_up(
        log,
        store,
        projector,
        Target {
            set: ModelSet::Rebuild,
            until: Some(live_position),
            batch: REBUILD_BATCH,
        },
        None,
        |p, _| progress(p, live_position),
    )
    .await?;
    let (rebuilt_position, rebuilt_docs) = store.dump(ModelSet::Rebuild, name).await?;
    store.clear(ModelSet::Rebuild, name).await?;

    let parse = |doc: &str| {
        serde_json::from_str::<serde_json::Value>(doc)
            .unwrap_or_else(|_| serde_json::Value::String(doc.to_string()))
    };
    let mut live: BTreeMap<(String, String), serde_json::Value> = live_docs
        .into_iter()
        .map(|d| ((d.collection, d.key), parse(&d.doc)))
        .collect();
    let documents = live.len();
    let mut differences = Vec::new();
    if rebuilt_position != live_position {
        // The log ends before the live checkpoint: events the live model applied are gone.
        return Err(ProjectionError::Store(eventlog::LogError::Corrupt(
            format!(
                "projection {name} is at position {live_position}, but the log only reaches {rebuilt_position}"
            ),
        )));
    }
    for d in rebuilt_docs {
        let rebuilt = parse(&d.doc);
        match live.remove(&(d.collection.clone(), d.key.clone())) {
            None => differences.push(Difference::MissingFromLive {
                collection: d.collection,
                key: d.key,
                rebuilt,
            }),
            Some(l) if l != rebuilt => differences.push(Difference::Changed {
                collection: d.collection,
                key: d.key,
                live: l,
                rebuilt,
            }),
            Some(_) => {}
        }
    }
    for ((collection, key), l) in live {
        differences.push(Difference::NotInRebuild {
            collection,
            key,
            live: l,
        });
    }
    Ok(VerifyReport {
        projection: name.to_string(),
        position: live_position,
        documents,
        differences,
    })
}
