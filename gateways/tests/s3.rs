//! The S3 adapter against the embedded endpoint (real s3s + s3s-fs on a loopback port, real
//! SigV4 checks): presigned URLs work with a plain HTTP client, and altered, expired, re-purposed
//! or wrongly signed ones are refused.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use chrono::Utc;
use commands::storage::{ObjectStore, PresignRequest};
use domain::Email;
use domain::storage::{FileMethod, Location, ObjectKey, UploadLimits};
use gateways::s3::{S3Settings, S3Store, embedded};

struct Fixture {
    store: S3Store,
    http: reqwest::Client,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn fixture() -> Fixture {
    fixture_with(UploadLimits::default()).await
}

async fn fixture_with(uploads: UploadLimits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = embedded::start(
        embedded::EmbeddedSettings {
            root: dir.path().join("objects"),
            listen: "127.0.0.1:0".parse().unwrap(),
            access_key: "test-key".into(),
            secret_key: "test-secret".into(),
            edge: edge::Limits::default(),
            uploads,
        },
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
        content_length: None,
        start: Utc::now(),
        expires_in_seconds: seconds,
    }
}

/// An upload of exactly `len` bytes.
fn sized(key: &ObjectKey, len: u64, seconds: u64) -> PresignRequest {
    PresignRequest {
        content_length: Some(len),
        ..request(key, FileMethod::Put, seconds)
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

    /// The status of a plain PUT of `body` to `url`.
    async fn put_status(&self, url: &str, body: &'static str) -> u16 {
        self.http
            .put(url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Uploads `body` to `key` through a presigned PUT; the store's status.
    async fn upload(&self, key: &ObjectKey, body: &'static str) -> u16 {
        self.upload_bytes(key, body.as_bytes().to_vec()).await.0
    }

    /// Uploads `body` through a URL signed for its size; the store's status and answer.
    async fn upload_bytes(&self, key: &ObjectKey, body: Vec<u8>) -> (u16, String) {
        let url = self
            .store
            .presign(sized(key, body.len() as u64, 60))
            .await
            .unwrap()
            .url;
        let r = self.http.put(&url).body(body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test]
async fn presigned_urls_round_trip_and_tampering_is_refused() {
    let f = fixture().await;
    let k = key("runs/a b+c.csv");
    let put = f.store.presign(sized(&k, 8, 60)).await.unwrap();
    assert_eq!(
        put.headers.get("content-length").map(String::as_str),
        Some("8")
    );
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
    assert_eq!(f.put_status(&get.url, "x").await, 403);
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
    let mut old = sized(&k, 1, 60);
    old.start = Utc::now() - chrono::Duration::hours(1);
    let url = f.store.presign(old).await.unwrap().url;
    assert_eq!(f.put_status(&url, "x").await, 403);
    // A 1 s URL used after it ran out.
    let short = f.store.presign(sized(&k, 1, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(f.put_status(&short.url, "x").await, 403);
    // A signed Content-Type must be sent exactly.
    let mut typed = sized(&k, 1, 60);
    typed.content_type = Some("text/csv".into());
    let signed = f.store.presign(typed).await.unwrap();
    assert_eq!(
        signed.headers.get("content-type").map(String::as_str),
        Some("text/csv")
    );
    for (content_type, status) in [("text/plain", 403), ("text/csv", 200)] {
        let sent = f
            .http
            .put(&signed.url)
            .header("content-type", content_type)
            .body("a")
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status().as_u16(), status, "{content_type}");
    }
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

/// Item 11 of issue 15: an upload URL carries its size; the store takes exactly that many bytes,
/// no more than `max_upload_bytes`, and no more than the owner's quota.
#[tokio::test]
async fn uploads_are_held_to_their_signed_size_the_maximum_and_the_quota() {
    let f = fixture_with(UploadLimits {
        max_upload_bytes: 100,
        quota_bytes: Some(250),
    })
    .await;
    let k = key("sized.bin");
    let ten = f.store.presign(sized(&k, 10, 60)).await.unwrap().url;
    // More bytes than signed: the signature covers the length.
    let more = f.http.put(&ten).body(vec![b'x'; 11]).send().await.unwrap();
    assert_eq!(more.status(), 403);
    // Fewer bytes than signed, too.
    let fewer = f.http.put(&ten).body(vec![b'x'; 9]).send().await.unwrap();
    assert_eq!(fewer.status(), 403);
    // A chunked body (no length) is not taken.
    let chunked = f
        .http
        .put(&ten)
        .body(reqwest::Body::wrap_stream(futures_stream(vec![b'x'; 10])))
        .send()
        .await
        .unwrap();
    assert!(chunked.status().is_client_error(), "{}", chunked.status());
    assert_eq!(f.store.head("cluster-one", k.as_str()).await.unwrap(), None);
    let exact = f.http.put(&ten).body(vec![b'x'; 10]).send().await.unwrap();
    assert_eq!(exact.status(), 200);
    // A URL that does not sign the size is refused, whatever the body.
    let no_size = f.url(&key("unsized"), FileMethod::Put, 60).await;
    let r = f.http.put(&no_size).body("x").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("size"));
    // Past max_upload_bytes, even when signed.
    let too_big = f.upload_bytes(&key("big"), vec![b'x'; 101]).await;
    assert_refused(too_big, 400, &["EntityTooLarge", "max_upload_bytes"]);
    // The quota: ada has 10 bytes; 100 + 100 more fit, 60 more do not.
    assert_eq!(f.upload_bytes(&key("a"), vec![b'a'; 100]).await.0, 200);
    assert_eq!(f.upload_bytes(&key("b"), vec![b'b'; 100]).await.0, 200);
    let over_quota = f.upload_bytes(&key("c"), vec![b'c'; 60]).await;
    assert_refused(over_quota, 403, &["QuotaExceeded", "storage_quota_bytes"]);
    // Replacing an object counts its new size, not both.
    assert_eq!(f.upload_bytes(&key("a"), vec![b'A'; 100]).await.0, 200);
    // Another user's quota is their own.
    let bob = ObjectKey::build(Location::Data, &Email::new("bob@lab.org").unwrap(), "x").unwrap();
    assert_eq!(f.upload_bytes(&bob, vec![b'x'; 100]).await.0, 200);
    // The store's own usage count, as the API reads it for presign-time checks.
    let used = f
        .store
        .usage("cluster-one", &domain::storage::quota_prefixes(&k))
        .await
        .unwrap();
    assert_eq!(used, 210);
}

/// Asserts the store's answer `(status, text)` to an upload is a refusal with `expected` status
/// whose text names every one of `words`.
fn assert_refused((status, text): (u16, String), expected: u16, words: &[&str]) {
    assert_eq!(status, expected, "{text}");
    assert!(words.iter().all(|w| text.contains(w)), "{text}");
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures::stream::iter(vec![Ok(bytes)])
}
