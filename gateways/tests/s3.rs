//! The S3 adapter against the embedded endpoint (real s3s + s3s-fs on a loopback port, real
//! SigV4 checks): presigned URLs work with a plain HTTP client, and altered, expired, re-purposed
//! or wrongly signed ones are refused.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use chrono::Utc;
use commands::storage::{ObjectStore, PresignRequest};
use domain::Email;
use domain::storage::{FileMethod, Location, ObjectKey};
use gateways::s3::{S3Settings, S3Store, embedded};

struct Fixture {
    store: S3Store,
    http: reqwest::Client,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = embedded::start(
        &dir.path().join("objects"),
        "127.0.0.1:0".parse().unwrap(),
        "test-key",
        "test-secret",
        stop_rx,
    )
    .await
    .unwrap();
    let store = S3Store::connect(&settings(server.addr, "test-secret")).await;
    Fixture {
        store,
        http: reqwest::Client::new(),
        addr: server.addr,
        _dir: dir,
        _stop: stop,
    }
}

fn settings(addr: std::net::SocketAddr, secret: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(format!("http://{addr}")),
        public_endpoint: None,
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some(("test-key".into(), secret.into())),
        create_buckets: true,
        timeout: Duration::from_secs(10),
        filesystem_keys: true,
    }
}

fn key(path: &str) -> ObjectKey {
    ObjectKey::build(Location::Data, &Email::new("ada@lab.org").unwrap(), path).unwrap()
}

fn request(key: &ObjectKey, method: FileMethod, seconds: u64) -> PresignRequest {
    PresignRequest {
        bucket: "cluster-one".into(),
        key: key.clone(),
        method,
        content_type: None,
        start: Utc::now(),
        expires_in_seconds: seconds,
    }
}

impl Fixture {
    /// A presigned URL for `key`.
    async fn url(&self, key: &ObjectKey, method: FileMethod, seconds: u64) -> String {
        self.store
            .presign(request(key, method, seconds))
            .await
            .unwrap()
            .url
    }

    /// Uploads `body` to `key` through a presigned PUT; the store's status.
    async fn upload(&self, key: &ObjectKey, body: &'static str) -> u16 {
        let url = self.url(key, FileMethod::Put, 60).await;
        let r = self.http.put(&url).body(body).send().await.unwrap();
        r.status().as_u16()
    }
}

#[tokio::test]
async fn presigned_urls_round_trip_and_tampering_is_refused() {
    let f = fixture().await;
    let k = key("runs/a b+c.csv");
    let put = f
        .store
        .presign(request(&k, FileMethod::Put, 60))
        .await
        .unwrap();
    assert!(
        put.url
            .starts_with(&format!("http://{}/cluster-one/", f.addr))
    );
    let r = f
        .http
        .put(&put.url)
        .body("a,b\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let get = f
        .store
        .presign(request(&k, FileMethod::Get, 60))
        .await
        .unwrap();
    let r = f.http.get(&get.url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a,b\n1,2\n");

    // Another key in the same signature, a changed signature, a GET URL used to PUT.
    let other = get.url.replace("ada%40lab.org", "bob%40lab.org");
    assert_ne!(other, get.url);
    assert_eq!(f.http.get(&other).send().await.unwrap().status(), 403);
    let sig_at = get.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = get.url.clone();
    let flipped = if &tampered[sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    assert_eq!(f.http.get(&tampered).send().await.unwrap().status(), 403);
    assert_eq!(
        f.http
            .put(&get.url)
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // A store with the wrong secret signs URLs the endpoint refuses.
    let wrong = S3Store::connect(&S3Settings {
        create_buckets: false,
        ..settings(f.addr, "not-the-secret")
    })
    .await;
    let bad = wrong
        .presign(request(&k, FileMethod::Get, 60))
        .await
        .unwrap();
    assert_eq!(f.http.get(&bad.url).send().await.unwrap().status(), 403);

    // An upload URL cannot be turned into a copy of another user's object.
    let bob = ObjectKey::build(
        Location::Data,
        &Email::new("bob@lab.org").unwrap(),
        "secret",
    )
    .unwrap();
    assert_eq!(f.upload(&bob, "bob's").await, 200);
    let mine = key("stolen");
    let put_url = f.url(&mine, FileMethod::Put, 60).await;
    let copy = f
        .http
        .put(&put_url)
        .header("x-amz-copy-source", "cluster-one/data/bob@lab.org/secret")
        .send()
        .await
        .unwrap();
    assert_eq!(copy.status(), 403);
    assert_eq!(
        f.store.head("cluster-one", mine.as_str()).await.unwrap(),
        None
    );

    // head, list, delete
    assert_eq!(
        f.store.head("cluster-one", k.as_str()).await.unwrap(),
        Some(8)
    );
    assert_eq!(
        f.store
            .head("cluster-one", key("missing").as_str())
            .await
            .unwrap(),
        None
    );
    let page = f
        .store
        .list("cluster-one", "data/ada@lab.org/", None, 1000)
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 1);
    assert_eq!(page.objects[0].key, k.as_str());
    assert_eq!(page.objects[0].size, 8);
    f.store.delete("cluster-one", k.as_str()).await.unwrap();
    assert_eq!(f.store.head("cluster-one", k.as_str()).await.unwrap(), None);
}

#[tokio::test]
async fn expired_urls_and_unsigned_content_types_are_refused() {
    let f = fixture().await;
    let k = key("late.bin");
    // Signed an hour ago for 60 s.
    let mut old = request(&k, FileMethod::Put, 60);
    old.start = Utc::now() - chrono::Duration::hours(1);
    let url = f.store.presign(old).await.unwrap().url;
    assert_eq!(
        f.http.put(&url).body("x").send().await.unwrap().status(),
        403
    );
    // A 1 s URL used after it ran out.
    let short = f
        .store
        .presign(request(&k, FileMethod::Put, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        f.http
            .put(&short.url)
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // A signed Content-Type must be sent exactly.
    let mut typed = request(&k, FileMethod::Put, 60);
    typed.content_type = Some("text/csv".into());
    let signed = f.store.presign(typed).await.unwrap();
    assert_eq!(
        signed.headers.get("content-type").map(String::as_str),
        Some("text/csv")
    );
    let wrong = f
        .http
        .put(&signed.url)
        .header("content-type", "text/plain")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let right = f
        .http
        .put(&signed.url)
        .header("content-type", "text/csv")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn listings_page_with_continuation_tokens() {
    let f = fixture().await;
    for i in 0..5 {
        assert_eq!(f.upload(&key(&format!("p/{i}.txt")), "x").await, 200);
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = f
            .store
            .list("cluster-one", "data/ada@lab.org/p/", token.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.objects.len() <= 2);
        seen.extend(page.objects.into_iter().map(|o| o.key));
        token = page.continuation;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}
