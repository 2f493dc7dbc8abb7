//! Adapters behind the command ports.
//!
//! - [`local::LocalExecutor`]: the embedded default Slurm — runs each job's script with bash as a
//!   real process.
//! - slurmrestd (v0.0.44): not yet; see the notes of the jobs issue.

pub mod local;
