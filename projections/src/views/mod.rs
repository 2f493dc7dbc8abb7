//! The read models this build ships.

pub mod clusters;
pub mod event_counts;
pub mod streams;
