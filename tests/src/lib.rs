//! Helpers for the end-to-end tests: find the built `clusterra`, start it, run its subcommands.

pub mod fake_slurm;
pub mod model;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `clusterra` binary: `CLUSTERRA_BIN`, else the one built beside this test executable
/// (`cargo test --workspace` and `scripts/test` build it).
/// When a wait for something the test needs gives up: `within` times the patience
/// (`CLUSTERRA_TEST_PATIENCE`, default 4), so a loaded machine (CI on 2 cores, `scripts/test
/// --stress`) is waited for. Every wait ends as soon as what it waits for is there; the bound
/// only stops a test that would otherwise hang. Never used for "nothing happens within".
pub fn deadline(within: Duration) -> Instant {
    let patience = std::env::var("CLUSTERRA_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(4)
        .max(1);
    Instant::now() + within * patience
}

pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CLUSTERRA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/clusterra
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("clusterra"))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p cli` or run scripts/test",
        path.display()
    );
    path
}

/// Runs `clusterra ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("CLUSTERRA_LOG", "warn")
        .output()
        .expect("run clusterra")
}

/// A running `clusterra serve`, stopped with SIGTERM on drop.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts `clusterra serve --listen 127.0.0.1:0 EXTRA…` and waits for its listening line.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[]).0
    }

    /// Like [`Server::start`], with extra environment variables; also returns what the server
    /// printed on stdout in its first second (the first-start banner).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> (Server, String) {
        if let Some(at) = extra.iter().position(|a| *a == "--data-dir")
            && let Some(data) = extra.get(at + 1)
        {
            passable(Path::new(data));
        }
        let mut child = Command::new(binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("CLUSTERRA_S3_LISTEN", "127.0.0.1:0")
            // Nodes start fast and the cycle runs often, so tests wait less (tests that want
            // the defaults set them back).
            .env("CLUSTERRA_NODE_COLD_START_MS", "300")
            .env("CLUSTERRA_POLL_INTERVAL_MS", "200")
            .env("CLUSTERRA_AGENT_INTERVAL_MS", "50")
            .envs(env.iter().copied())
            .env("CLUSTERRA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn clusterra serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut p) = sink.lock() {
                    p.push_str(&line);
                    p.push('\n');
                }
                if let Some(url) = line.strip_prefix("clusterra listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("clusterra serve printed its listening line within 30 s");
        std::thread::sleep(Duration::from_millis(300));
        let printed = printed.lock().map(|p| p.clone()).unwrap_or_default();
        (Server { child, base }, printed)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: the process dies without cleaning anything up (a crash).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = deadline(Duration::from_secs(15));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Lets other users pass through the temporary folders above `path` (`tempfile` makes them
/// 0700): a server running as root runs local jobs as an unprivileged user, who must reach the
/// efs root inside the data directory. Folders outside the temporary directory are not touched.
pub fn passable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = std::env::temp_dir();
    for dir in path.ancestors().skip(1) {
        if !dir.starts_with(&tmp) || dir == tmp {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(dir) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ =
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001));
            }
        }
    }
}

/// A token for `email` in `workspace`, signed with the data directory's secret.
pub fn mint(data: &str, email: &str, workspace: &str, admin: bool) -> String {
    token_mint(data, email, workspace, admin, &[])
}

/// A one-time console sign-in link for `email` (workspace `default`) to the server at `base`.
pub fn login_link(data: &str, base: &str, email: &str, admin: bool) -> String {
    token_mint(
        data,
        email,
        "default",
        admin,
        &["--login-link", "--url", base],
    )
}

/// `clusterra token mint` with `extra` arguments; what it printed.
fn token_mint(data: &str, email: &str, workspace: &str, admin: bool, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "mint",
        "--data-dir",
        data,
        "--email",
        email,
        "--workspace",
        workspace,
    ];
    if admin {
        args.push("--admin");
    }
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().to_string()
}

/// The repository's root (for fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("repo root")
}

/// Polls `/readyz` until every projection has reached `position`.
pub async fn wait_projected(server: &Server, position: i64) -> serde_json::Value {
    let deadline = deadline(Duration::from_secs(30));
    loop {
        let body: serde_json::Value = reqwest::get(server.url("/readyz"))
            .await
            .expect("readyz")
            .json()
            .await
            .expect("readyz json");
        let all_there = body["projections"]
            .as_object()
            .is_some_and(|p| p.values().all(|s| s["position"].as_i64() >= Some(position)));
        if all_there {
            return body;
        }
        assert!(Instant::now() < deadline, "projections stuck: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `clusterra replay --projection all --verify` on a data dir (and a PostgreSQL, when given):
/// every view rebuilt from the log equals the live one.
pub fn assert_replay_verifies(data: &Path, database_url: Option<&str>) {
    let mut args = vec![
        "replay",
        "--projection",
        "all",
        "--verify",
        "--data-dir",
        data.to_str().expect("a UTF-8 path"),
    ];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let verify = run(&args);
    assert!(
        verify.status.success(),
        "replay --verify: {}{}",
        stdout(&verify),
        stderr(&verify)
    );
}

/// `clusterra replay --projection PROJECTION --verify` on a data dir, which succeeds: what it
/// printed.
pub fn replay_verified(data: &str, projection: &str) -> String {
    let verify = run(&[
        "replay",
        "--projection",
        projection,
        "--verify",
        "--data-dir",
        data,
    ]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    stdout(&verify)
}

/// Asserts that an answer `(status, out)` is an error of `expected` status with `code`.
pub fn assert_error_code(status: u16, out: &Value, expected: u16, code: &str) {
    assert_eq!(
        (status, out["error"]["code"].as_str()),
        (expected, Some(code)),
        "{out}"
    );
}

/// Asserts that an answer `(status, out)` is an error of `expected` status naming `field`.
pub fn assert_error_field(status: u16, out: &Value, expected: u16, field: &str) {
    assert_eq!(
        (status, out["error"]["field"].as_str()),
        (expected, Some(field)),
        "{out}"
    );
}

/// Asserts that `text` contains `part`, showing `text` when it does not.
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{text}");
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running server with its admin token and an HTTP client.
pub struct Api {
    pub server: Server,
    pub token: String,
    pub client: reqwest::Client,
}

impl Api {
    /// Starts `clusterra serve --data-dir DATA` with `env`; the admin token is the first-start
    /// banner's, or minted when the data dir was used before.
    pub fn start(data: &str, env: &[(&str, &str)]) -> Api {
        let (server, banner) = Server::start_with_env(&["--data-dir", data], env);
        let token = banner_token(&banner).unwrap_or_else(|| {
            stdout(&run(&[
                "token",
                "mint",
                "--data-dir",
                data,
                "--email",
                "admin@clusterra.local",
                "--admin",
            ]))
            .trim()
            .to_string()
        });
        Api {
            server,
            token,
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.expect("the server answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `token`'s GET of `path`: the status and the answer.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None, None)
            .await
    }

    /// `token`'s GET of `path` once the read reflects log position `position` (read your write:
    /// `X-Clusterra-Min-Position`): the answer.
    pub async fn get_at(&self, path: &str, token: &str, position: i64) -> Value {
        self.client
            .get(self.server.url(path))
            .bearer_auth(token)
            .header("X-Clusterra-Min-Position", position.to_string())
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("the server answers JSON")
    }

    /// The admin's GET of `path`: the status and the answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, &self.token).await
    }

    /// The admin's GET of `path`, which answers 200: the answer.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, out) = self.get(path).await;
        assert_eq!(status, 200, "{out}");
        out
    }

    /// `token`'s POST of `body` to `path`: the status and the answer.
    pub async fn post_as(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body), None)
            .await
    }

    /// `token`'s DELETE of `path`: the status and the answer.
    pub async fn delete_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token, None, None)
            .await
    }

    /// Submits `body` to the `local` cluster as `token`'s user.
    pub async fn submit_as(&self, token: &str, body: Value) -> (u16, Value) {
        self.post_as("/v1/clusters/local/jobs", token, body).await
    }

    /// Submits `body` to the `local` cluster as the admin.
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        self.submit_as(&self.token, body).await
    }

    pub async fn job(&self, id: u64) -> Value {
        self.get(&format!("/v1/clusters/local/jobs/{id}")).await.1
    }

    pub async fn wait_state(&self, id: u64, states: &[&str], within: Duration) -> Value {
        let deadline = deadline(within);
        loop {
            let job = self.job(id).await;
            if states.iter().any(|s| job["state"] == *s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not in {states:?} after {within:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `local` cluster's feed entries of `types` (comma-separated), oldest first.
    pub async fn events(&self, types: &str) -> Vec<Value> {
        self.feed_entries(&format!(
            "/v1/clusters/local/events?type={types}&order=asc&limit=500"
        ))
        .await
    }

    /// The entries of the feed page at `path` (`/v1/clusters/{id}/events?…`), read as the admin.
    pub async fn feed_entries(&self, path: &str) -> Vec<Value> {
        self.get(path).await.1["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Asserts that the log is still at `head`: `why` says what appended nothing.
    pub async fn assert_log_at(&self, head: i64, why: &str) {
        assert_eq!(self.log_position().await, head, "{why}");
    }

    pub async fn log_position(&self) -> i64 {
        let ready: Value = reqwest::get(self.server.url("/readyz"))
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("the server answers");
        ready["log_position"].as_i64().expect("the server answers")
    }
}

/// A server on a fresh data directory (`data` in a new temporary folder) started with `env`: the
/// folder (removed when dropped, so keep it to the end of the test), the data directory's path,
/// and the server.
pub fn started(env: &[(&str, &str)]) -> (tempfile::TempDir, String, Api) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let data = dir
        .path()
        .join("data")
        .to_str()
        .expect("a UTF-8 path")
        .to_string();
    let api = Api::start(&data, env);
    (dir, data, api)
}

/// Like [`started`], and a token of the plain user `email` of workspace `default`.
pub fn started_with_user(
    env: &[(&str, &str)],
    email: &str,
) -> (tempfile::TempDir, String, Api, String) {
    let (dir, data, api) = started(env);
    let user = mint(&data, email, "default", false);
    (dir, data, api, user)
}

/// Like [`started`], with the temporary folder itself as the data directory.
pub fn started_in_temp_dir(env: &[(&str, &str)]) -> (tempfile::TempDir, String, Api) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let data = dir.path().to_str().expect("a UTF-8 path").to_string();
    let api = Api::start(&data, env);
    (dir, data, api)
}

/// `clusterra serve` on a fresh data directory (`data` in a new temporary folder) started with
/// `env`: the folder (keep it to the end of the test), the server, and the admin token its first
/// start printed.
pub fn serving(env: &[(&str, &str)]) -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let data = dir.path().join("data");
    let (server, banner) =
        Server::start_with_env(&["--data-dir", data.to_str().expect("a UTF-8 path")], env);
    let token = banner_token(&banner).expect("the first start prints an admin token");
    (dir, server, token)
}

/// The admin token a first start prints in its banner (`export CLUSTERRA_TOKEN=…`), if it did.
pub fn banner_token(banner: &str) -> Option<String> {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export CLUSTERRA_TOKEN="))
        .map(str::to_string)
}

/// A new temporary folder (keep it to the end of the test) and the data directories of two
/// replicas in it, `a` and `b` (not created).
pub fn replica_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    (dir, a, b)
}

/// One replica of several on one database: `clusterra serve --data-dir DATA --database-url URL`
/// with `env`, and what it printed at start.
pub fn start_replica(data: &Path, database_url: &str, env: &[(&str, &str)]) -> (Server, String) {
    Server::start_with_env(
        &[
            "--data-dir",
            data.to_str().expect("a UTF-8 path"),
            "--database-url",
            database_url,
        ],
        env,
    )
}

/// Another replica beside the one whose data directory is `first`: its own data directory
/// `data`, the same database, and `first`'s token secret (as replicas behind one load balancer
/// have).
pub fn start_another_replica(
    first: &Path,
    data: &Path,
    database_url: &str,
    env: &[(&str, &str)],
) -> Server {
    std::fs::create_dir_all(data).expect("a data directory");
    std::fs::copy(first.join("jwt-secret"), data.join("jwt-secret")).expect("the token secret");
    start_replica(data, database_url, env).0
}

/// A database of its own on `DATABASE_URL`'s PostgreSQL server, for tests that run several
/// replicas against one database; [`ScratchDb::drop_database`] removes it.
pub struct ScratchDb {
    pub url: String,
    name: String,
    admin: sqlx::PgPool,
}

impl ScratchDb {
    pub async fn create() -> ScratchDb {
        let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL; run scripts/test");
        let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url).await.expect("connect");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create database");
        let (base, _) = admin_url.rsplit_once('/').expect("url has a database");
        ScratchDb {
            url: format!("{base}/{name}"),
            name,
            admin,
        }
    }

    pub async fn drop_database(self) {
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await
            .expect("drop database");
    }
}
