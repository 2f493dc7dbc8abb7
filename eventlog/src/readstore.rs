//! Storage for projections: JSON documents and checkpoints, in the log's own database.

use async_trait::async_trait;

use crate::{LogError, Position};

/// Which set of read-model tables: the live ones the API reads, or the scratch ones a rebuild
/// fills from position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSet {
    Live,
    Rebuild,
}

impl ModelSet {
    /// Table names are fixed strings, never user input.
    pub(crate) fn docs_table(self) -> &'static str {
        match self {
            ModelSet::Live => "rm_live_docs",
            ModelSet::Rebuild => "rm_rebuild_docs",
        }
    }

    pub(crate) fn checkpoints_table(self) -> &'static str {
        match self {
            ModelSet::Live => "rm_live_checkpoints",
            ModelSet::Rebuild => "rm_rebuild_checkpoints",
        }
    }
}

/// One change a projector makes to its read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocChange {
    Put {
        collection: String,
        key: String,
        doc: String,
    },
    Delete {
        collection: String,
        key: String,
    },
}

/// One projection's part of [`ReadStore::commit_many`]: its changes, and its checkpoint moving
/// from `from` to `to`.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionCommit<'a> {
    pub projection: &'a str,
    pub from: Position,
    pub to: Position,
    pub changes: &'a [DocChange],
}

/// One stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRow {
    pub collection: String,
    pub key: String,
    pub doc: String,
}

/// Read-model storage shared by every projection. Each projection owns its documents
/// (`projection`, `collection`, `key`) and one checkpoint per model set.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// The last position this projection applied (0 if none).
    async fn checkpoint(&self, set: ModelSet, projection: &str) -> Result<Position, LogError>;

    async fn get_doc(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<String>, LogError>;

    /// Writes `changes` and moves the checkpoint from `from` to `to` in one transaction. If the
    /// stored checkpoint is not `from` (another runner, or a rebuild was promoted), nothing is
    /// written and [`LogError::CheckpointMoved`] is returned.
    async fn commit(
        &self,
        set: ModelSet,
        projection: &str,
        from: Position,
        to: Position,
        changes: &[DocChange],
    ) -> Result<(), LogError> {
        let one = ProjectionCommit {
            projection,
            from,
            to,
            changes,
        };
        self.commit_many(set, &[one]).await
    }

    /// Commits several projections' changes and checkpoints, as [`ReadStore::commit`] does for
    /// one, all in one transaction (a few statements whatever the number of projections): if any
    /// stored checkpoint is not its `from`, nothing is written and [`LogError::CheckpointMoved`]
    /// names that projection.
    async fn commit_many(
        &self,
        set: ModelSet,
        commits: &[ProjectionCommit<'_>],
    ) -> Result<(), LogError>;

    /// Documents of one collection in key order, after `after_key`, at most `limit`.
    async fn list_docs(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocRow>, LogError>;

    /// Documents of one collection within `range`.
    async fn list_docs_between(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        range: KeyRange<'_>,
    ) -> Result<Vec<DocRow>, LogError>;

    /// Every document of a projection, ordered by collection and key, with its checkpoint, read
    /// in one snapshot.
    async fn dump(
        &self,
        set: ModelSet,
        projection: &str,
    ) -> Result<(Position, Vec<DocRow>), LogError>;

    /// Removes a projection's documents and checkpoint from a set.
    async fn clear(&self, set: ModelSet, projection: &str) -> Result<(), LogError>;

    /// Replaces the live documents and checkpoint of a projection by the rebuilt ones, atomically,
    /// and clears the rebuild.
    async fn promote(&self, projection: &str) -> Result<(), LogError>;
}

/// Keys `after < key < before` (either bound optional), at most `limit`, in key order or, with
/// `descending`, in reverse key order.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyRange<'a> {
    pub after: Option<&'a str>,
    pub before: Option<&'a str>,
    pub descending: bool,
    pub limit: usize,
}

/// Every document of one collection, in key order, read page by page.
pub async fn list_all(
    store: &dyn ReadStore,
    set: ModelSet,
    projection: &str,
    collection: &str,
) -> Result<Vec<DocRow>, LogError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_docs(set, projection, collection, after.as_deref(), 1_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        all.extend(page);
    }
    Ok(all)
}

/// Refuses a commit any of whose parts starts elsewhere than its stored checkpoint (`found`, by
/// projection; a projection without one is at 0).
pub(crate) fn check_checkpoints(
    commits: &[ProjectionCommit<'_>],
    found: &std::collections::HashMap<String, i64>,
) -> Result<(), LogError> {
    for c in commits {
        let at = found.get(c.projection).copied().unwrap_or(0);
        if at != c.from {
            return Err(LogError::CheckpointMoved {
                projection: c.projection.to_string(),
                expected: c.from,
                found: at,
            });
        }
    }
    Ok(())
}
