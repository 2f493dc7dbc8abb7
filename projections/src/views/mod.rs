//! The read models this build ships.

pub mod clusters;
pub mod event_counts;
pub mod feed;
pub mod jobs;
pub mod quotas;
pub mod streams;
