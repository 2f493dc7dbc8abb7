//! `clusterra`: the control plane's one binary.

mod ask;
mod client;
mod files;
mod ops;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use server::{Config, Overrides};

#[derive(Parser)]
#[command(name = "clusterra", version, about = "Clusterra control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand that touches local state takes.
#[derive(Args, Clone)]
struct StateArgs {
    /// Data directory of the embedded defaults [default: ./.clusterra]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (postgres://…); default: SQLite in the data directory
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// TOML configuration file [default: ./clusterra.toml if present]
    #[arg(long, value_name = "FILE", env = "CLUSTERRA_CONFIG")]
    config: Option<PathBuf>,
}

impl StateArgs {
    fn load(&self, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
        Config::load(
            self.config.as_deref(),
            &Overrides {
                data_dir: self.data_dir.clone(),
                listen,
                database_url: self.database_url.clone(),
            },
        )
        .map_err(Into::into)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP server (embedded defaults: SQLite in the data directory)
    Serve {
        #[command(flatten)]
        state: StateArgs,
        /// Listen address [default: 127.0.0.1:8080]; port 0 picks a free port
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Rebuild read models from position 0 (or, with --verify, compare a rebuild with them)
    Replay {
        #[command(flatten)]
        state: StateArgs,
        /// Projection to rebuild, or "all"
        #[arg(long, value_name = "NAME|all")]
        projection: String,
        /// Compare a rebuild with the live tables, print every difference, change nothing;
        /// exits 1 if anything differs
        #[arg(long)]
        verify: bool,
    },
    /// Check and read the event log
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Submit a job: a v0.0.44 body file, or --template ID --param k=v …
    Submit {
        #[command(flatten)]
        target: client::Target,
        /// A JSON file with a slurmrestd v0.0.44 submit body
        file: Option<PathBuf>,
        /// Submit from this template instead
        #[arg(long, value_name = "ID")]
        template: Option<String>,
        /// A template parameter, name=value (value parsed as JSON when it is JSON)
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Makes retries safe: the same key returns the first answer
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Submit nothing: print where it would run, what it would cost and when it would start
        #[arg(long, conflicts_with = "idempotency_key")]
        dry_run: bool,
    },
    /// List jobs (yours; all of them for admins)
    Jobs {
        #[command(flatten)]
        target: client::Target,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        template: Option<String>,
    },
    /// Show one job: its state, cost and, once it ended, its efficiency report
    Job {
        #[command(flatten)]
        target: client::Target,
        job_id: u64,
        /// The server's JSON answer as is (with the job's event history)
        #[arg(long)]
        json: bool,
    },
    /// Your profile: burn rate, pending bill, projected spend, quota and status
    Me {
        #[command(flatten)]
        target: client::Target,
        /// The server's JSON answer as is
        #[arg(long)]
        json: bool,
    },
    /// Ask AI: print its reply; each action it proposes runs only if you answer y
    Ask {
        #[command(flatten)]
        target: client::Target,
        /// What to ask, e.g. "why is job 42 pending?"
        text: String,
        /// Go on with this conversation (its id, printed after each answer)
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
    },
    /// Cancel a job
    Cancel {
        #[command(flatten)]
        target: client::Target,
        job_id: u64,
    },
    /// Print a job's output; -f follows it live until the job ends
    Logs {
        #[command(flatten)]
        target: client::Target,
        job_id: u64,
        /// Follow: keep printing as the job writes, until it ends (reconnects without losing a byte)
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (without -f)
        #[arg(long, value_name = "N", conflicts_with = "follow")]
        tail: Option<u64>,
    },
    /// A cluster's event feed (newest last); -f follows it live
    Events {
        #[command(flatten)]
        target: client::Target,
        /// The cluster (default: --cluster, else local)
        #[arg(value_name = "CLUSTER", id = "cluster_name")]
        cluster_name: Option<String>,
        /// Follow: print new events as they happen (Ctrl-C to stop)
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only these event types (comma-separated)
        #[arg(long = "type", value_name = "TYPES")]
        types: Option<String>,
        /// Only events about this job
        #[arg(long, value_name = "ID")]
        job: Option<u64>,
        /// How many recent events to print (without -f)
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print each event as a JSON line
        #[arg(long)]
        json: bool,
    },
    /// Files in the cluster's bucket, straight to and from it through presigned URLs
    Files {
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Run the scaling policy and cost model over a workload trace (simulated clock)
    Simulate(simulate::SimulateArgs),
    /// Tokens for the embedded default (HS256, signed with the data directory's secret)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Remote names are LOCATION/PATH in your namespace: data/runs/in.csv, scripts/job.sh,
/// outputs/…, or shared/… (readable by all, written by admins).
#[derive(Subcommand)]
enum FilesCommand {
    /// Upload a file (streamed; progress bar for large files)
    Put {
        #[command(flatten)]
        target: client::Target,
        /// The local file
        local: PathBuf,
        /// Where: LOCATION/PATH, or a LOCATION or folder ending in / to keep the file name
        /// [default: data/<file name>]
        remote: Option<String>,
        /// The Content-Type to store (signed into the upload URL)
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Download a file (streamed; `-` as LOCAL writes to stdout)
    Get {
        #[command(flatten)]
        target: client::Target,
        /// LOCATION/PATH
        remote: String,
        /// Where to write it [default: the file name, in this folder]
        local: Option<PathBuf>,
    },
    /// List your files (all locations, one location, or LOCATION/PREFIX)
    Ls {
        #[command(flatten)]
        target: client::Target,
        remote: Option<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Delete one of your files (admins: also shared/)
    Rm {
        #[command(flatten)]
        target: client::Target,
        /// LOCATION/PATH
        remote: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a token signed with the local secret
    Mint {
        #[command(flatten)]
        state: StateArgs,
        /// The caller's email
        #[arg(long)]
        email: String,
        /// Make the caller a workspace admin
        #[arg(long)]
        admin: bool,
        /// The caller's workspace
        #[arg(long, default_value = "default")]
        workspace: String,
        /// How long the token is valid: 30m, 12h, 7d (at most 90d; a sign-in link: at most
        /// 15m, default 15m)
        #[arg(long)]
        ttl: Option<String>,
        /// Print a one-time console sign-in link (`http://…/login?code=…`) instead of a token
        #[arg(long)]
        login_link: bool,
        /// The console's address for the link (default: the server's listen address)
        #[arg(long, requires = "login_link")]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; name the first broken event and exit 1 if there is one
    Verify {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print one stream's history
    Stream {
        #[command(flatten)]
        state: StateArgs,
        /// The stream id, e.g. cluster:default:local
        stream_id: String,
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
}

/// mimalloc instead of glibc's allocator: the server allocates per request and per event on
/// every thread (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { state, listen } => serve::run(state.load(listen)?).await,
            Command::Replay {
                state,
                projection,
                verify,
            } => ops::replay(&state.load(None)?, &projection, verify).await,
            Command::Audit {
                command: AuditCommand::Verify { state },
            } => ops::audit_verify(&state.load(None)?).await,
            Command::Audit {
                command:
                    AuditCommand::Stream {
                        state,
                        stream_id,
                        json,
                    },
            } => ops::audit_stream(&state.load(None)?, &stream_id, json).await,
            Command::Submit {
                target,
                file,
                template,
                params,
                idempotency_key,
                dry_run,
            } => {
                let body = client::submit_body(file, template, &params)?;
                if dry_run {
                    client::estimate(&target, &body).await
                } else {
                    client::submit(&target, &body, idempotency_key).await
                }
            }
            Command::Jobs {
                target,
                state,
                user,
                template,
            } => client::jobs(&target, state, user, template).await,
            Command::Job {
                target,
                job_id,
                json,
            } => client::job(&target, job_id, json).await,
            Command::Cancel { target, job_id } => client::cancel(&target, job_id).await,
            Command::Ask {
                target,
                text,
                conversation,
            } => ask::ask(&target, &text, conversation).await,
            Command::Me { target, json } => client::me(&target, json).await,
            Command::Files { command } => match command {
                FilesCommand::Put {
                    target,
                    local,
                    remote,
                    content_type,
                } => files::put(&target, &local, remote.as_deref(), content_type).await,
                FilesCommand::Get {
                    target,
                    remote,
                    local,
                } => files::get(&target, &remote, local).await,
                FilesCommand::Ls {
                    target,
                    remote,
                    json,
                } => files::ls(&target, remote.as_deref(), json).await,
                FilesCommand::Rm { target, remote } => files::rm(&target, &remote).await,
            },
            Command::Events {
                mut target,
                cluster_name,
                follow,
                types,
                job,
                limit,
                json,
            } => {
                if let Some(c) = cluster_name {
                    target.cluster = c;
                }
                client::events(&target, follow, types, job, limit, json).await
            }
            Command::Logs {
                target,
                job_id,
                follow,
                tail,
            } => client::logs(&target, job_id, follow, tail).await,
            Command::Simulate(args) => simulate::run(&args).map(|()| ExitCode::SUCCESS),
            Command::Token {
                command:
                    TokenCommand::Mint {
                        state,
                        email,
                        admin,
                        workspace,
                        ttl,
                        login_link,
                        url,
                    },
            } => {
                let default_ttl = if login_link { "15m" } else { "12h" };
                let ttl = server::token::parse_ttl(ttl.as_deref().unwrap_or(default_ttl))?;
                let config = state.load(None)?;
                let out = if login_link {
                    server::token::login_link(
                        &config,
                        &email,
                        &workspace,
                        admin,
                        ttl,
                        url.as_deref(),
                    )?
                } else {
                    server::token::mint(&config, &email, &workspace, admin, ttl)?
                };
                println!("{out}");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
