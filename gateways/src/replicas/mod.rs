//! The replica-store port ([`commands::replicas::ReplicaStore`]): the desired node count of each
//! node set, where the edge agent reads it.
//!
//! - [`SqlReplicas`]: the embedded default, a `replica_counts` table in the log's own database
//!   (SQLite or PostgreSQL).
//! - [`DynamoReplicas`]: a DynamoDB table (AWS or any DynamoDB-compatible endpoint), one item per
//!   node set.
//!
//! Both make every write conditional on the stored version, so a stale writer gets
//! [`ReplicaError::Conflict`](commands::replicas::ReplicaError::Conflict) with what is stored
//! instead of overwriting a newer decision. See `docs/autoscaling.md`.

mod dynamodb;
mod sql;

pub use dynamodb::{DynamoReplicas, DynamoSettings};
pub use sql::SqlReplicas;

use domain::scaling::{Family, NodeSet, Size};

/// Reads a node set back from its display form (`compute-small`).
pub(crate) fn parse_node_set(s: &str) -> Option<NodeSet> {
    let (family, size) = s.split_once('-')?;
    let family = Family::ALL.into_iter().find(|f| f.as_str() == family)?;
    let size = Size::ALL.into_iter().find(|z| z.as_str() == size)?;
    Some(NodeSet { family, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_set_reads_back_from_its_display_form() {
        for family in Family::ALL {
            for size in Size::ALL {
                let set = NodeSet { family, size };
                assert_eq!(parse_node_set(&set.to_string()), Some(set));
            }
        }
        for bad in [
            "",
            "compute",
            "compute-",
            "-small",
            "compute-huge",
            "gpu-small",
            "compute-small-x",
        ] {
            assert_eq!(parse_node_set(bad), None, "{bad:?}");
        }
    }
}
