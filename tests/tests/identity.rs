//! Identity through the real binary: the first-start token, `clusterra token mint`, and RS256
//! tokens checked against a JWKS file and a JWKS URL.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tests::{Server, repo_root, run, stderr, stdout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn rs256(key_file: &str, kid: &str, email: &str, role: &str) -> String {
    let pem = std::fs::read(repo_root().join("fixtures/auth").join(key_file)).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = json!({"email": email, "workspace": "default", "role": role,
                        "exp": chrono::Utc::now().timestamp() + 600});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_working_admin_token_and_mint_makes_more() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (server, banner) = Server::start_with_env(&["--data-dir", data], &[]);
    let token =
        tests::banner_token(&banner).unwrap_or_else(|| panic!("no token in the banner: {banner}"));
    assert!(banner.contains("curl -s http://127.0.0.1:"), "{banner}");
    let (status, clusters) = get(&server, "/v1/clusters", &token).await;
    assert_eq!(status, 200, "{clusters}");
    assert_eq!(clusters["clusters"][0]["id"], "local");
    server.stop();

    // The second start prints no new token: the secret is kept (mode 0600).
    let (server, banner) = Server::start_with_env(&["--data-dir", data], &[]);
    assert!(!banner.contains("CLUSTERRA_TOKEN"), "{banner}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{data}/jwt-secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let minted = run(&[
        "token",
        "mint",
        "--data-dir",
        data,
        "--email",
        "Bob@Lab.org",
        "--ttl",
        "30m",
    ]);
    assert!(minted.status.success(), "{}", stderr(&minted));
    let user_token = stdout(&minted).trim().to_string();
    let (status, _) = get(&server, "/v1/clusters/local", &user_token).await;
    assert_eq!(status, 200);
    // The first token still works; a plain user cannot register clusters.
    let res = reqwest::Client::new()
        .post(server.url("/v1/clusters"))
        .bearer_auth(&user_token)
        .json(&json!({"id": "x", "name": "x", "region": "r", "bucket": "bkt", "slurm": {"url": "http://s:1", "user": "u"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);

    // A bad value is refused with the option at fault.
    for (args, option) in [
        (&["--email", "not-an-email"][..], "--email"),
        (&["--email", "a@b.org", "--ttl", "forever"][..], "--ttl"),
    ] {
        let mut command = vec!["token", "mint", "--data-dir", data];
        command.extend_from_slice(args);
        let bad = run(&command);
        assert_eq!(bad.status.code(), Some(2));
        tests::assert_contains(&stderr(&bad), option);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_against_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = repo_root().join("fixtures/auth/test-jwks.json");
    let (server, banner) = Server::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("CLUSTERRA_JWKS_FILE", jwks.to_str().unwrap())],
    );
    assert!(
        !banner.contains("CLUSTERRA_TOKEN"),
        "no local token in JWKS mode: {banner}"
    );
    let good = rs256("test-rsa-private.pem", "test-key-1", "ada@lab.org", "admin");
    assert_eq!(get(&server, "/v1/clusters", &good).await.0, 200);
    let forged = rs256("test-rsa-other.pem", "test-key-1", "ada@lab.org", "admin");
    let (status, body) = get(&server, "/v1/clusters", &forged).await;
    tests::assert_error_code(status, &body, 401, "token_bad_signature");
    // Local HS256 tokens are not accepted in JWKS mode.
    let local = run(&[
        "token",
        "mint",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--email",
        "a@b.org",
    ]);
    let (status, body) = get(&server, "/v1/clusters", stdout(&local).trim()).await;
    tests::assert_error_code(status, &body, 401, "token_wrong_algorithm");
}

/// Serves the JWKS over HTTP on loopback, counting fetches.
async fn jwks_server(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/.well-known/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_against_a_jwks_url() {
    let jwks = std::fs::read_to_string(repo_root().join("fixtures/auth/test-jwks.json")).unwrap();
    let (url, hits) = jwks_server(jwks).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("CLUSTERRA_JWKS_URL", url.as_str())],
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once at start");
    let good = rs256("test-rsa-private.pem", "test-key-1", "ada@lab.org", "user");
    assert_eq!(get(&server, "/v1/clusters", &good).await.0, 200);
    let unknown_kid = rs256(
        "test-rsa-private.pem",
        "rotated-away",
        "ada@lab.org",
        "user",
    );
    assert_eq!(get(&server, "/v1/clusters", &unknown_kid).await.0, 401);

    // A JWKS URL that does not answer stops the start with a reason.
    let out = run(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let child = std::process::Command::new(tests::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env("CLUSTERRA_JWKS_URL", "http://127.0.0.1:9/jwks.json")
        .output()
        .unwrap();
    assert_eq!(child.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&child.stderr).contains("could not fetch the JWKS"),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
}
