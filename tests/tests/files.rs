//! Files through the real binary and its embedded S3-compatible store (s3s + s3s-fs, real SigV4
//! checks): presigned uploads and downloads with a plain HTTP client, tampered and expired URLs,
//! who may reach which key, path tricks, grants and deletes in the log, a 100 MiB file through
//! the CLI, and a server pointed at an external S3 endpoint that signs for a public one.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use tests::{Api, Server, mint, run, stdout};

const PRESIGN: &str = "/v1/clusters/local/storage/presigned-url";

async fn presign(api: &Api, token: &str, body: Value) -> (u16, Value) {
    api.post_as(PRESIGN, token, body).await
}

async fn upload(url: &str, bytes: &'static [u8]) -> u16 {
    reqwest::Client::new()
        .put(url)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn download(url: &str) -> (u16, Vec<u8>) {
    let res = reqwest::get(url).await.unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
}

// alice's file: its key, its bytes, and the route that deletes it.
const CSV_KEY: &str = "data/alice@lab.org/runs/in put+1.csv";
const CSV: &[u8] = b"a,b\n1,2\n";
const CSV_DELETE: &str =
    "/v1/clusters/local/storage/objects?key=data/alice%40lab.org/runs/in%20put%2B1.csv";

/// alice uploads her file with a plain HTTP client; returns the upload's grant.
async fn upload_alices_csv(api: &Api, alice: &str) -> Value {
    let (status, put) = presign(
        api,
        alice,
        json!({"location": "data", "path": "runs/in put+1.csv", "method": "PUT", "size": 8}),
    )
    .await;
    assert_eq!(status, 201, "{put}");
    assert_eq!(upload(put["url"].as_str().unwrap(), CSV).await, 200);
    put
}

/// The stream of alice's file events in the log of data directory `data`, as JSON lines.
fn alices_file_trail(data: &str) -> String {
    let out = run(&[
        "audit",
        "stream",
        "--data-dir",
        data,
        "--json",
        "files:default:local:alice@lab.org",
    ]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
}

/// A download URL for alice's file, signed for her.
async fn alices_csv_url(api: &Api, alice: &str) -> String {
    let (_, get) = presign(api, alice, json!({"key": CSV_KEY, "method": "GET"})).await;
    get["url"].as_str().unwrap().to_string()
}

/// alice uploads with a presigned URL and a plain HTTP client, then reads the same bytes back;
/// a URL is good for 15 minutes by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_uploads_with_a_presigned_url_and_reads_the_same_bytes_back() {
    let (_dir, _, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    let put = upload_alices_csv(&api, &alice).await;
    assert_eq!(put["key"], CSV_KEY);
    assert_eq!(put["method"], "PUT");
    let expires = chrono::DateTime::parse_from_rfc3339(put["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let left = (expires - chrono::Utc::now()).num_seconds();
    assert!(
        (890..=900).contains(&left),
        "default expiry 15 minutes: {left}"
    );
    let get_url = alices_csv_url(&api, &alice).await;
    assert_eq!(download(&get_url).await, (200, CSV.to_vec()));
}

/// The URL is the credential: a changed key, a changed signature, an expired URL all fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_a_changed_signature_and_an_expired_url_are_refused() {
    let (_dir, _, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    upload_alices_csv(&api, &alice).await;
    let get_url = alices_csv_url(&api, &alice).await;
    let bobs = get_url.replace("alice%40lab.org", "bob%40lab.org");
    assert_ne!(bobs, get_url);
    assert_eq!(download(&bobs).await.0, 403);
    let at = get_url.find("X-Amz-Signature=").unwrap() + 16;
    let mut forged = get_url.clone();
    let c = if &forged[at..at + 1] == "a" { "b" } else { "a" };
    forged.replace_range(at..at + 1, c);
    assert_eq!(download(&forged).await.0, 403);
    let (_, short) = presign(
        &api,
        &alice,
        json!({"location": "data", "path": "runs/in put+1.csv", "method": "GET", "expires_in_seconds": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(download(short["url"].as_str().unwrap()).await.0, 403);
}

/// bob cannot get a URL for alice's key, nor see it listed; he cannot write to shared/; nothing
/// is appended for any refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_cannot_reach_alices_file_nor_write_shared() {
    let (_dir, data, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    let bob = mint(&data, "bob@lab.org", "default", false);
    upload_alices_csv(&api, &alice).await;
    let head = api.log_position().await;
    let (status, denied) = presign(&api, &bob, json!({"key": CSV_KEY, "method": "GET"})).await;
    tests::assert_error_code(status, &denied, 403, "not_your_file");
    let (status, denied) = presign(
        &api,
        &bob,
        json!({"location": "shared", "path": "ref.fa", "method": "PUT"}),
    )
    .await;
    tests::assert_error_code(status, &denied, 403, "shared_admin_only");
    let (status, list) = api
        .get_as("/v1/clusters/local/storage/objects?location=data", &bob)
        .await;
    assert_eq!(
        (status, list["objects"].clone()),
        (200, json!([])),
        "{list}"
    );
    api.assert_log_at(head, "refusals append nothing").await;
}

/// Path tricks are refused with the field at fault, and nothing is appended for any refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_refused_with_the_field_at_fault() {
    let (_dir, _, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    let put_to = |path: &str| json!({"location": "data", "path": path, "method": "PUT"});
    let too_long = "x".repeat(1100);
    let head = api.log_position().await;
    for (body, field) in [
        (put_to("../bob@lab.org/x"), "path"),
        (put_to("%2e%2e/x"), "path"),
        (put_to("a//b"), "path"),
        (put_to("a\u{0}b"), "path"),
        (put_to("/etc/passwd"), "path"),
        (put_to("a\\b"), "path"),
        (put_to(too_long.as_str()), "path"),
        (
            json!({"key": "data/alice@lab.org/../../other/x", "method": "GET"}),
            "key",
        ),
        (
            json!({"location": "tmp", "path": "x", "method": "PUT"}),
            "location",
        ),
        (
            json!({"location": "data", "path": "x", "method": "POST"}),
            "method",
        ),
        (
            json!({"location": "data", "path": "x", "method": "PUT", "expires_in_seconds": 3601}),
            "expires_in_seconds",
        ),
        (
            json!({"location": "data", "path": "x", "method": "GET", "content_type": "text/csv"}),
            "content_type",
        ),
    ] {
        let (status, out) = presign(&api, &alice, body.clone()).await;
        assert_eq!(status, 422, "{body}: {out}");
        assert_eq!(out["error"]["field"], field, "{body}: {out}");
        assert!(
            out["error"]["message"].as_str().unwrap().len() > 20,
            "{out}"
        );
    }
    api.assert_log_at(head, "refusals append nothing").await;
}

/// The embedded store keeps keys as file names: for bucket `local` at most 163 bytes, and the
/// API says so before signing. The longest key it accepts round-trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_longer_than_the_store_keeps_is_refused_before_signing() {
    let (_dir, _, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    let longest = "p".repeat(163 - "data/alice@lab.org/".len());
    let (status, out) = presign(
        &api,
        &alice,
        json!({"location": "data", "path": format!("{longest}q"), "method": "PUT"}),
    )
    .await;
    tests::assert_error_field(status, &out, 422, "path");
    let (status, out) = presign(
        &api,
        &alice,
        json!({"location": "data", "path": longest, "method": "PUT", "size": 4}),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    assert_eq!(upload(out["url"].as_str().unwrap(), b"long").await, 200);
}

/// An admin writes shared/, everyone reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_writes_shared_and_everyone_reads_it() {
    let (_dir, _, api, bob) = tests::started_with_user(&[], "bob@lab.org");
    let (status, shared) = presign(
        &api,
        &api.token,
        json!({"location": "shared", "path": "ref.fa", "method": "PUT", "content_type": "text/plain", "size": 11}),
    )
    .await;
    assert_eq!(status, 201, "{shared}");
    assert_eq!(shared["headers"]["content-type"], "text/plain");
    let res = reqwest::Client::new()
        .put(shared["url"].as_str().unwrap())
        .header("content-type", "text/plain")
        .body(">chr1\nACGT\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, read) = presign(
        &api,
        &bob,
        json!({"location": "shared", "path": "ref.fa", "method": "GET"}),
    )
    .await;
    assert_eq!(status, 201, "{read}");
    assert_eq!(
        download(read["url"].as_str().unwrap()).await,
        (200, b">chr1\nACGT\n".to_vec())
    );
}

/// alice lists her files; bob cannot delete her file; she can, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_lists_and_deletes_her_file_once_and_bob_cannot_delete_it() {
    let (_dir, data, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    let bob = mint(&data, "bob@lab.org", "default", false);
    upload_alices_csv(&api, &alice).await;
    let (_, list) = api
        .get_as(
            "/v1/clusters/local/storage/objects?location=data&prefix=runs/",
            &alice,
        )
        .await;
    assert_eq!(list["objects"][0]["path"], "runs/in put+1.csv", "{list}");
    assert_eq!(list["objects"][0]["size"], 8);
    let (status, _) = api.delete_as(CSV_DELETE, &bob).await;
    assert_eq!(status, 403);
    let (status, out) = api.delete_as(CSV_DELETE, &alice).await;
    assert_eq!((status, out["size"].clone()), (200, json!(8)), "{out}");
    let (status, out) = api.delete_as(CSV_DELETE, &alice).await;
    assert_eq!(
        (status, out["error"]["code"].clone()),
        (404, json!("object_not_found"))
    );
}

/// Another workspace does not see the cluster at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_does_not_see_the_cluster() {
    let (_dir, data, api) = tests::started(&[]);
    let stranger = mint(&data, "eve@other.org", "other", true);
    let (status, _) = presign(
        &api,
        &stranger,
        json!({"location": "shared", "path": "ref.fa", "method": "GET"}),
    )
    .await;
    assert_eq!(status, 404);
}

/// The audit trail: every grant and the delete, with actor, key, method and expiry, and never
/// the URL's signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_has_every_grant_and_the_delete_and_no_signature() {
    let (_dir, data, api, alice) = tests::started_with_user(&[], "alice@lab.org");
    upload_alices_csv(&api, &alice).await;
    alices_csv_url(&api, &alice).await;
    let (status, out) = api.delete_as(CSV_DELETE, &alice).await;
    assert_eq!(status, 200, "{out}");
    let text = alices_file_trail(&data);
    assert!(!text.contains("X-Amz-Signature"), "{text}");
    let events: Vec<Value> = text
        .lines()
        .map(|l| {
            // data and metadata are the stored JSON text
            let mut e: Value = serde_json::from_str(l).unwrap();
            for part in ["data", "metadata"] {
                e[part] = serde_json::from_str(e[part].as_str().unwrap()).unwrap();
            }
            e
        })
        .collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["FileAccessGranted", "FileAccessGranted", "FileDeleted"],
        "{text}"
    );
    assert_eq!(events[0]["data"]["method"], "PUT");
    assert_eq!(events[0]["data"]["key"], CSV_KEY);
    assert!(events[0]["data"]["expires_at"].is_string());
    assert_eq!(events[0]["metadata"]["actor"], "alice@lab.org");
    assert_eq!(events[2]["data"]["size"], 8);
}

/// A file larger than anything that should sit in memory: 100 MiB up and down through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_streams_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let data = data.to_str().unwrap();
    let api = Api::start(data, &[]);
    let local = dir.path().join("big.bin");
    {
        let mut f = std::fs::File::create(&local).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..100u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 % 251) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(tests::binary())
            .args(args)
            .env("CLUSTERRA_URL", &api.server.base)
            .env("CLUSTERRA_TOKEN", &api.token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        stdout(&out)
    };
    let put = cli(&["files", "put", local.to_str().unwrap(), "outputs/big/"]);
    assert!(put.contains("104857600 bytes"), "{put}");
    let ls = cli(&["files", "ls", "outputs/big/"]);
    assert!(
        ls.contains("104857600") && ls.contains("outputs/big/big.bin"),
        "{ls}"
    );
    let back = dir.path().join("back.bin");
    cli(&[
        "files",
        "get",
        "outputs/big/big.bin",
        back.to_str().unwrap(),
    ]);
    assert!(
        same_bytes(&local, &back),
        "the download differs from the upload"
    );
    assert!(!dir.path().join(".back.bin.part").exists());
    cli(&["files", "rm", "outputs/big/big.bin"]);
    assert!(!cli(&["files", "ls", "outputs"]).contains("big.bin"));
}

fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// The same code against an external S3 endpoint (here: another Clusterra's embedded store),
/// presigning for a public endpoint that differs from the one the server talks to. The host is
/// signed, so a URL only works at the public address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_endpoint_with_a_separate_public_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store_data = dir.path().join("store");
    let (_store, banner) =
        Server::start_with_env(&["--data-dir", store_data.to_str().unwrap()], &[]);
    let s3 = banner
        .lines()
        .find_map(|l| l.strip_prefix("embedded object store on "))
        .unwrap()
        .to_string();
    let port = s3.rsplit(':').next().unwrap().to_string();
    let secret = std::fs::read_to_string(store_data.join("s3-secret")).unwrap();
    let public = format!("http://localhost:{port}");
    let api_data = dir.path().join("api");
    let api_data = api_data.to_str().unwrap();
    let api = Api::start(
        api_data,
        &[
            ("CLUSTERRA_S3_ENDPOINT", s3.as_str()),
            ("CLUSTERRA_S3_PUBLIC_ENDPOINT", public.as_str()),
            ("CLUSTERRA_S3_ACCESS_KEY_ID", "clusterra"),
            ("CLUSTERRA_S3_SECRET_ACCESS_KEY", secret.trim()),
            ("CLUSTERRA_S3_CREATE_BUCKETS", "true"),
        ],
    );
    assert!(!api_data.is_empty());
    let (status, put) = presign(
        &api,
        &api.token,
        json!({"location": "scripts", "path": "job.sh", "method": "PUT", "size": 10}),
    )
    .await;
    assert_eq!(status, 201, "{put}");
    let url = put["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{public}/local/scripts/")),
        "{url}"
    );
    // Fetched at the server's own address instead, the signature does not match.
    assert_eq!(
        upload(&url.replace(&public, &s3), b"#!/bin/sh\n").await,
        403
    );
    assert_eq!(upload(url, b"#!/bin/sh\n").await, 200);
    let (_, list) = api
        .get_as(
            "/v1/clusters/local/storage/objects?location=scripts",
            &api.token,
        )
        .await;
    assert_eq!(list["objects"][0]["path"], "job.sh", "{list}");
    assert_eq!(list["objects"][0]["size"], 10);
}

/// An object store that cannot be reached is a 502 that names no internal address, and a grant
/// needs no network (presigning is local) but is still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_a_clear_502() {
    // Nothing listens on port 9 of loopback.
    let (_dir, _, api) = tests::started_in_temp_dir(&[
        ("CLUSTERRA_S3_ENDPOINT", "http://127.0.0.1:9"),
        ("CLUSTERRA_S3_ACCESS_KEY_ID", "k"),
        ("CLUSTERRA_S3_SECRET_ACCESS_KEY", "s"),
    ]);
    let (status, out) = api
        .get_as(
            "/v1/clusters/local/storage/objects?location=data",
            &api.token,
        )
        .await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "object_store_unavailable");
    assert!(!out.to_string().contains("127.0.0.1:9"), "{out}");
    // The caller gets the request id to quote; the server's log has the details under it.
    let request_id = out["error"]["request_id"].as_str().unwrap_or_default();
    assert_eq!(request_id.len(), 36, "{out}");
    let (status, out) = presign(
        &api,
        &api.token,
        json!({"location": "data", "path": "x", "method": "GET"}),
    )
    .await;
    assert_eq!(status, 201, "{out}");
}

/// Issue 15, item 11: an upload URL is signed for one exact size, at most `max_upload_bytes`,
/// within the owner's quota; the API refuses at presign time and the embedded store refuses the
/// upload itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_bounded_in_size_and_by_each_users_quota() {
    let (_dir, data, api) = tests::started_in_temp_dir(&[
        ("CLUSTERRA_MAX_UPLOAD_BYTES", "1000"),
        ("CLUSTERRA_STORAGE_QUOTA_BYTES", "2500"),
    ]);
    let alice = mint(&data, "alice@lab.org", "default", false);
    let put = |path: &str, size: Option<u64>| {
        let mut b = json!({"location": "data", "path": path, "method": "PUT"});
        if let Some(n) = size {
            b["size"] = json!(n);
        }
        b
    };
    let before = api.log_position().await;
    for (body, code) in [
        (put("a", None), "invalid_field"),
        (
            json!({"location": "data", "path": "a", "method": "GET", "size": 3}),
            "invalid_field",
        ),
        (put("a", Some(1001)), "upload_too_large"),
    ] {
        let (status, out) = presign(&api, &alice, body).await;
        assert_eq!(status, 422, "{out}");
        assert_eq!(out["error"]["code"], code, "{out}");
        assert_eq!(out["error"]["field"], "size", "{out}");
    }
    api.assert_log_at(before, "refusals append nothing").await;

    let (status, a) = presign(&api, &alice, put("a", Some(1000))).await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["headers"]["content-length"], "1000", "{a}");
    let url = a["url"].as_str().unwrap();
    // The size is signed: another length is refused.
    assert_eq!(upload(url, &[b'x'; 999]).await, 403);
    assert_eq!(upload(url, &[b'x'; 1000]).await, 200);
    let (_, b) = presign(&api, &alice, put("b", Some(1000))).await;
    assert_eq!(upload(b["url"].as_str().unwrap(), &[b'y'; 1000]).await, 200);
    // 2,000 bytes used: 1,000 more would pass the 2,500 quota.
    let (status, out) = presign(&api, &alice, put("c", Some(1000))).await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["code"], "storage_quota_exceeded", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage_quota_bytes"),
        "{out}"
    );
    // Replacing a file counts only its new size.
    let (status, out) = presign(&api, &alice, put("a", Some(1000))).await;
    assert_eq!(status, 201, "{out}");
    // Two URLs that each fit alone: the store takes the first upload and refuses the second.
    let (s1, d) = presign(&api, &alice, put("d", Some(400))).await;
    let (s2, e) = presign(&api, &alice, put("e", Some(400))).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(upload(d["url"].as_str().unwrap(), &[b'd'; 400]).await, 200);
    let res = reqwest::Client::new()
        .put(e["url"].as_str().unwrap())
        .body(vec![b'e'; 400])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("QuotaExceeded"));
    // The grant records the signed size.
    let (_, events) = api
        .get_as("/v1/clusters/local/storage/objects?location=data", &alice)
        .await;
    let sizes: u64 = events["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["size"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, 2400);
    let trail = alices_file_trail(&data);
    let signed: Vec<u64> = trail
        .lines()
        .filter_map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            let d: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
            d["size"].as_u64()
        })
        .collect();
    assert_eq!(signed, vec![1000, 1000, 1000, 400, 400], "{trail}");
}
