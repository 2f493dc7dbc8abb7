//! Adapters behind the command ports.
//!
//! - [`local::LocalExecutor`]: the embedded default Slurm — runs each job's script with bash as a
//!   real process, as the job user of [`jobuser`].
//! - [`slurmrestd::SlurmRestd`]: slurmrestd v0.0.44 with Slurm JWT headers.
//! - [`replicas`]: the replica store on the log's database ([`replicas::SqlReplicas`]) or DynamoDB
//!   ([`replicas::DynamoReplicas`]).

mod aws;
pub mod chat;
pub mod jobuser;
pub mod leader;
pub mod local;
pub mod replicas;
pub mod s3;
pub mod slurmrestd;
pub mod webhook;
