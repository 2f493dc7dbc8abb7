//! Adapters behind the command ports (slurmrestd, the local executor, DynamoDB, S3).
//!
//! Empty for now: the first ports (Slurm) arrive with the jobs feature. The crate exists so the
//! workspace has the shape of `docs/architecture.md` from the start.
