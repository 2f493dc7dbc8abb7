//! The read models this build ships, and the typed queries the API reads them with (the API
//! names no read store call of its own).

pub mod agent;
pub mod clusters;
pub mod costs;
pub mod event_counts;
pub mod feed;
pub mod jobs;
pub mod quotas;
pub mod streams;
pub mod webhooks;

/// Why a typed query over a view failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The read store could not be reached.
    #[error(transparent)]
    Log(#[from] eventlog::LogError),
    /// A stored document does not parse as its view (a bug or a hand edit; a rebuild fixes it).
    #[error("a stored {view} view ({key}) is unreadable: {reason}")]
    Unreadable {
        view: &'static str,
        key: String,
        reason: String,
    },
}

/// One stored document as its view.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    view: &'static str,
    key: &str,
    doc: &str,
) -> Result<T, ViewError> {
    serde_json::from_str(doc).map_err(|e| ViewError::Unreadable {
        view,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// One live document of `view` as its type, if present.
pub(crate) async fn live<T: serde::de::DeserializeOwned>(
    read: &dyn eventlog::ReadStore,
    view: &'static str,
    collection: &str,
    key: &str,
) -> Result<Option<T>, ViewError> {
    read.get_doc(eventlog::ModelSet::Live, view, collection, key)
        .await?
        .map(|doc| decode(view, key, &doc))
        .transpose()
}
