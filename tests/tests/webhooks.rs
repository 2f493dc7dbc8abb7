//! Signed webhooks through the real binary, delivered over real HTTP to a receiver on loopback:
//! every event arrives exactly as signed (checked with the documented HMAC recipe, written here
//! independently of the server's code), a forged or replayed request fails that check, a
//! receiver that fails for a while gets everything after it recovers and in order, a restart
//! loses no delivery, attempts are visible to their owner only, and bad registrations change
//! nothing.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tests::Api;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer 503 (and keep nothing) while set.
    failing: Arc<AtomicBool>,
}

impl Receiver {
    /// Serves on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    if me.failing.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    me.got.lock().unwrap().push(Received {
                        id: h("clusterra-webhook-id"),
                        timestamp: h("clusterra-webhook-timestamp"),
                        signature: h("clusterra-webhook-signature"),
                        body: body.to_vec(),
                    });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    /// Distinct deliveries (a repeat of an id is at-least-once's, kept once), in arrival order.
    fn deliveries(&self) -> Vec<(Received, Value)> {
        let mut seen = std::collections::HashSet::new();
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| seen.insert(r.id.clone()))
            .map(|r| (r.clone(), serde_json::from_slice(&r.body).unwrap()))
            .collect()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<(Received, Value)> {
        let deadline = tests::deadline(within);
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} deliveries: {d:?}",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The documented receiver's check (docs/webhooks.md): HMAC-SHA256 under the secret over
/// `"<timestamp>.<body>"`, hex, as `v1=…`, and a timestamp within 300 s of `now`.
fn check(secret: &str, r: &Received, now: i64) -> Result<(), &'static str> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(r.timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    if expected != r.signature {
        return Err("signature");
    }
    let ts: i64 = r.timestamp.parse().map_err(|_| "timestamp")?;
    if (now - ts).abs() > 300 {
        return Err("stale");
    }
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn quick(name: &str) -> Value {
    json!({"job": {"name": name, "script": "#!/bin/bash\ntrue\n",
        "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs",
        "time_limit": {"set": true, "number": 5}}})
}

async fn submit(api: &Api, token: &str, name: &str) -> u64 {
    let (status, out) = api.submit_as(token, quick(name)).await;
    assert_eq!(status, 201, "{out}");
    out["job_id"].as_u64().unwrap()
}

/// What was delivered about one job, in order.
fn kinds_of(order: &[(u64, String)], job: u64) -> Vec<&str> {
    order
        .iter()
        .filter(|(j, _)| *j == job)
        .map(|(_, k)| k.as_str())
        .collect()
}

/// The deliveries' (job id, type) in arrival order, after checking that they came in log order
/// (an event that tells a job's start and end gives two, in that order).
fn in_order(d: &[(Received, Value)]) -> Vec<(u64, String)> {
    let ids: Vec<(i64, u8)> = d
        .iter()
        .map(|(r, v)| {
            let n = r.id.rsplit(':').next().unwrap().parse().unwrap();
            (v["position"].as_i64().unwrap(), n)
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in log order: {ids:?}");
    d.iter()
        .map(|(_, v)| {
            (
                v["data"]["job_id"].as_u64().unwrap(),
                v["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_in_order_retried_and_survive_a_restart() {
    let env = [("CLUSTERRA_POLL_INTERVAL_MS", "100")];
    let (dir, data, api, ada) = tests::started_with_user(&env, "ada@lab.org");
    let bob = tests::mint(&data, "bob@lab.org", "default", false);
    let receiver = Receiver::default();
    let url = receiver.start().await;

    // Bad registrations are refused with the field at fault, and append nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = api.log_position().await;
    for (body, code) in [
        (
            json!({"url": "http://10.0.0.7/hook", "events": ["job.ended"]}),
            "webhook_host_not_allowed",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["job.ended"]}),
            "webhook_host_not_allowed",
        ),
        (
            json!({"url": "http://u:secret@127.0.0.1/hook", "events": ["job.ended"]}),
            "invalid_url",
        ),
        (
            json!({"url": "file:///etc/passwd", "events": ["job.ended"]}),
            "invalid_url",
        ),
        (
            json!({"url": format!("http://127.0.0.1/{}", "a".repeat(3000)), "events": ["job.ended"]}),
            "invalid_url",
        ),
        (
            json!({"url": url, "events": ["job.exploded"]}),
            "invalid_events",
        ),
        (json!({"url": url, "events": []}), "invalid_events"),
    ] {
        let (status, out) = api
            .post_as("/v1/users/me/webhooks", &ada, body.clone())
            .await;
        tests::assert_error_code(status, &out, 422, code);
        assert!(out["error"]["field"].is_string(), "{body}: {out}");
    }
    api.assert_log_at(head, "refused registrations append nothing")
        .await;

    let (status, hook) = api
        .post_as(
            "/v1/users/me/webhooks",
            &ada,
            json!({"url": url, "events": ["job.ended", "job.started"]}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let id = hook["webhook_id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{hook}");
    assert_eq!(
        hook["signing"]["signature_header"],
        "Clusterra-Webhook-Signature"
    );
    // The secret is not listed again (read once the registration is visible).
    let listed = api
        .get_at(
            "/v1/users/me/webhooks",
            &ada,
            hook["position"].as_i64().unwrap(),
        )
        .await;
    assert!(!listed.to_string().contains(&secret), "{listed}");
    assert_eq!(
        listed["webhooks"][0]["webhook_id"], hook["webhook_id"],
        "{listed}"
    );
    assert_eq!(
        api.get_as("/v1/users/me/webhooks", &bob).await.1["webhooks"],
        json!([]),
        "another user has none"
    );

    // 1. Every event arrives, exactly as signed; bob's job tells ada's webhook nothing.
    let a1 = submit(&api, &ada, "one").await;
    let a2 = submit(&api, &ada, "two").await;
    let b1 = submit(&api, &bob, "bob's").await;
    let got = receiver.wait_for(4, Duration::from_secs(30)).await;
    for (r, v) in &got {
        assert_eq!(check(&secret, r, now()), Ok(()), "{v}");
        assert_eq!(r.id, v["id"].as_str().unwrap());
        assert!(r.id.starts_with(&format!("{id}:")), "{}", r.id);
        assert_eq!(v["user"], "ada@lab.org", "{v}");
    }
    let order = in_order(&got);
    for job in [a1, a2] {
        assert_eq!(
            kinds_of(&order, job),
            ["job.started", "job.ended"],
            "job {job}: {order:?}"
        );
    }
    assert!(order.iter().all(|(j, _)| *j != b1), "{order:?}");
    let ended = got.iter().find(|(_, v)| v["type"] == "job.ended").unwrap();
    assert_eq!(ended.1["data"]["state"], "COMPLETED", "{}", ended.1);

    // 2. A forged body, a re-signed timestamp and a replay an hour later fail the check.
    let (r, _) = &got[0];
    let mut forged = r.clone();
    forged.body = br#"{"type":"job.ended","data":{"job_id":1}}"#.to_vec();
    assert_eq!(check(&secret, &forged, now()), Err("signature"));
    let mut moved = r.clone();
    moved.timestamp = (now() + 3600).to_string();
    assert_eq!(check(&secret, &moved, now() + 3600), Err("signature"));
    assert_eq!(check(&secret, r, now() + 3600), Err("stale"));
    assert_eq!(check("whsec_guess", r, now()), Err("signature"));

    // 3. A receiver that fails for a while gets everything after it recovers, in order.
    receiver.failing.store(true, Ordering::SeqCst);
    let a3 = submit(&api, &ada, "three").await;
    let a4 = submit(&api, &ada, "four").await;
    let deliveries = format!("/v1/users/me/webhooks/{id}/deliveries");
    let deadline = tests::deadline(Duration::from_secs(30));
    loop {
        let page = api.get_as(&deliveries, &ada).await.1;
        let failed = page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["outcome"] == "failed" && d["status"] == 503)
            .count();
        if failed >= 2 {
            assert!(
                page["deliveries"][0]["next_attempt_at"].is_string(),
                "{page}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.failing.store(false, Ordering::SeqCst);
    let got = receiver.wait_for(8, Duration::from_secs(30)).await;
    let order = in_order(&got);
    assert_eq!(
        kinds_of(&order[4..], a3),
        ["job.started", "job.ended"],
        "{order:?}"
    );
    assert_eq!(
        kinds_of(&order[4..], a4),
        ["job.started", "job.ended"],
        "{order:?}"
    );
    for (r, _) in &got {
        assert_eq!(check(&secret, r, now()), Ok(()));
    }

    // 4. A restart loses no delivery: queued while the receiver fails, delivered after.
    receiver.failing.store(true, Ordering::SeqCst);
    let a5 = submit(&api, &ada, "five").await;
    api.wait_state(a5, &["COMPLETED"], Duration::from_secs(30))
        .await;
    let deadline = tests::deadline(Duration::from_secs(30));
    loop {
        let page = api.get_as(&deliveries, &ada).await.1;
        if page["deliveries"][0]["job_id"] == a5 && page["deliveries"][0]["outcome"] == "failed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.server.kill();
    receiver.failing.store(false, Ordering::SeqCst);
    let api = Api::start(&data, &env);
    let got = receiver.wait_for(10, Duration::from_secs(30)).await;
    let order = in_order(&got);
    assert_eq!(
        kinds_of(&order[8..], a5),
        ["job.started", "job.ended"],
        "{order:?}"
    );
    assert_eq!(order.len(), 10, "{order:?}");

    // 5. The attempts are their owner's to see; a removed webhook gets nothing more.
    let page = api.get_as(&deliveries, &ada).await.1;
    assert!(
        page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["outcome"] == "delivered" && d["status"] == 204),
        "{page}"
    );
    let (status, out) = api.get_as(&deliveries, &bob).await;
    tests::assert_error_code(status, &out, 404, "webhook_not_found");
    let (status, out) = api
        .delete_as(&format!("/v1/users/me/webhooks/{id}"), &bob)
        .await;
    tests::assert_error_code(status, &out, 404, "webhook_not_found");
    let (status, out) = api
        .delete_as(&format!("/v1/users/me/webhooks/{id}"), &ada)
        .await;
    assert_eq!(status, 200, "{out}");
    let a6 = submit(&api, &ada, "six").await;
    api.wait_state(a6, &["COMPLETED"], Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.deliveries().len(), 10, "nothing after removal");

    // At most 10 webhooks a user; a removal frees a place. Page sizes are bounded.
    let quiet = json!({"url": url, "events": ["quota.enforced"]});
    let mut last = None;
    for _ in 0..10 {
        let (status, out) = api
            .post_as("/v1/users/me/webhooks", &bob, quiet.clone())
            .await;
        assert_eq!(status, 201, "{out}");
        last = out["webhook_id"].as_str().map(str::to_string);
    }
    let (status, out) = api
        .post_as("/v1/users/me/webhooks", &bob, quiet.clone())
        .await;
    tests::assert_error_code(status, &out, 409, "too_many_webhooks");
    let last = last.unwrap();
    let (status, _) = api
        .delete_as(&format!("/v1/users/me/webhooks/{last}"), &bob)
        .await;
    assert_eq!(status, 200);
    let (status, out) = api.post_as("/v1/users/me/webhooks", &bob, quiet).await;
    assert_eq!(status, 201, "{out}");
    let bobs = format!("/v1/users/me/webhooks/{last}/deliveries");
    let (status, out) = api.get_as(&bobs, &bob).await;
    tests::assert_error_code(status, &out, 404, "webhook_not_found");
    for (query, code) in [("limit=0", 400), ("limit=501", 400), ("cursor=1", 400)] {
        let (status, out) = api.get_as(&format!("{deliveries}?{query}"), &ada).await;
        assert_eq!(status, code, "{query}: {out}");
    }
    tests::assert_replay_verifies(std::path::Path::new(&data), None);
    drop(dir);
}
