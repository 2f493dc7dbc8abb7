//! Job logs through the real binary: range reads, the live SSE stream (every byte once, in order,
//! across a reconnect), the end event, truncation, who may read, and `clusterra logs [-f]`.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use tests::{Api, run};

const ENV: [(&str, &str); 4] = [
    ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
    ("CLUSTERRA_EXECUTOR_SLOTS", "2"),
    ("CLUSTERRA_EXECUTOR_GRACE_MS", "500"),
    ("CLUSTERRA_LOG_POLL_INTERVAL_MS", "100"),
];

/// Writes a known pattern over about three seconds: UTF-8 text, a 100 kB line (longer than a
/// stream chunk) and two bytes that are not UTF-8.
const PATTERN: &str = r#"#!/bin/bash
for i in $(seq 1 60); do
  printf 'line %04d ünïcødé €\n' "$i"
  if [ "$i" = 20 ]; then head -c 100000 /dev/zero | tr '\0' x; echo; fi
  if [ "$i" = 30 ]; then printf 'bad \xff\xfe bytes\n'; fi
  sleep 0.05
done
"#;

fn body(script: &str) -> Value {
    json!({"job": {"name": "logs", "script": script, "environment": ["PATH=/usr/bin:/bin"],
                   "current_working_directory": "/mnt/efs"}})
}

fn mint(data: &str, email: &str) -> String {
    tests::mint(data, email, "default", false)
}

/// What a stream delivered.
#[derive(Default, Debug)]
struct Received {
    bytes: Vec<u8>,
    last_id: Option<String>,
    end: Option<Value>,
    resets: Vec<Value>,
    events: usize,
}

/// Reads the stream until `end`, or until `stop_after_bytes` bytes arrived (then disconnects).
/// Asserts every `log` event starts exactly where the previous one ended.
async fn follow(
    api: &Api,
    token: &str,
    id: u64,
    mut got: Received,
    stop_after_bytes: Option<usize>,
) -> Received {
    let mut req = api
        .client
        .get(
            api.server
                .url(&format!("/v1/clusters/local/jobs/{id}/logs/stream")),
        )
        .bearer_auth(token);
    if let Some(last) = &got.last_id {
        req = req.header("Last-Event-ID", last);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
    let deadline = tests::deadline(Duration::from_secs(30));
    while let Some(event) = tokio::time::timeout_at(deadline.into(), events.next())
        .await
        .expect("the stream ended within 30 s")
    {
        let event = event.unwrap();
        got.events += 1;
        let data: Value = if event.data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&event.data).unwrap()
        };
        match event.event.as_str() {
            "log" => {
                assert_eq!(
                    data["offset"].as_u64().unwrap(),
                    got.bytes.len() as u64,
                    "a chunk starts where the last one ended"
                );
                match (data["text"].as_str(), data["base64"].as_str()) {
                    (Some(t), None) => got.bytes.extend_from_slice(t.as_bytes()),
                    (None, Some(b)) => got
                        .bytes
                        .extend(base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
                    other => panic!("a log event has text or base64: {other:?}"),
                }
                assert_eq!(event.id, got.bytes.len().to_string(), "id = offset after");
            }
            "reset" => {
                got.bytes.clear();
                got.resets.push(data);
            }
            "end" => {
                got.end = Some(data);
                return got;
            }
            "message" if event.data.is_empty() => {} // the retry hint
            other => panic!("unexpected event {other}: {}", event.data),
        }
        got.last_id = Some(event.id.clone());
        if stop_after_bytes.is_some_and(|n| got.bytes.len() >= n) {
            return got;
        }
    }
    got
}

async fn get(api: &Api, token: &str, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = api.client.get(api.server.url(path)).bearer_auth(token);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().await.unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_in_ranges_and_streamed_live_without_loss() {
    let (_dir, data, api) = tests::started(&ENV);
    let alice = mint(&data, "alice@example.org");
    let bob = mint(&data, "bob@example.org");

    let submit = |token: String, script: &'static str| {
        let api = &api;
        async move {
            let (status, out) = api.submit_as(&token, body(script)).await;
            assert_eq!(status, 201, "{out}");
            // Read-your-writes: later reads wait for the projection to see the job.
            tests::wait_projected(&api.server, out["position"].as_i64().unwrap()).await;
            out["job_id"].as_u64().unwrap()
        }
    };
    let id = submit(alice.clone(), PATTERN).await;
    let shrinking = submit(
        alice.clone(),
        "#!/bin/bash\nprintf 'first part\\n'\nsleep 4\nprintf 'after\\n'\n",
    )
    .await;
    // Both slots are busy: this one waits, and its log is empty, not an error.
    let waiting = submit(alice.clone(), "#!/bin/bash\necho later\n").await;
    let logs = |id: u64| format!("/v1/clusters/local/jobs/{id}/logs");
    let res = get(&api, &alice, &logs(waiting), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-clusterra-log-status"), "not-started");
    assert_eq!(header(&res, "x-clusterra-next-offset"), "0");
    assert!(res.bytes().await.unwrap().is_empty());

    // Three followers at once: one to the end, one that drops midway and resumes with
    // Last-Event-ID, and bob, who may not read alice's log at all.
    let whole = follow(&api, &alice, id, Received::default(), None);
    let resumed = async {
        let first = follow(&api, &alice, id, Received::default(), Some(2_000)).await;
        assert!(first.end.is_none(), "the job was still writing");
        assert!(first.last_id.is_some());
        follow(&api, &alice, id, first, None).await
    };
    let (whole, resumed) = tokio::join!(whole, resumed);
    for path in [logs(id), format!("{}/stream", logs(id))] {
        let res = get(&api, &bob, &path, None).await;
        assert_eq!(res.status(), 404, "{path}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "job_not_found");
    }

    let file = std::fs::read(format!("{data}/efs/job_{id}.out")).unwrap();
    assert!(file.len() > 100_000, "the pattern was written");
    assert!(file.windows(2).any(|w| w == [0xff, 0xfe]));
    assert_eq!(
        whole.bytes, file,
        "the live stream delivered every byte in order"
    );
    assert!(
        whole.events > 10,
        "the log arrived in many chunks while it grew"
    );
    assert_eq!(whole.end.as_ref().unwrap()["state"], "COMPLETED");
    assert_eq!(whole.end.as_ref().unwrap()["exit_code"], 0);
    assert_eq!(
        resumed.bytes, file,
        "the resumed stream lost or repeated nothing"
    );
    assert!(whole.resets.is_empty() && resumed.resets.is_empty());

    // A client that comes after the end gets the whole file, then the end.
    let late = follow(&api, &alice, id, Received::default(), None).await;
    assert_eq!(late.bytes, file);
    assert_eq!(late.end.unwrap()["offset"], file.len());
    // An admin may read it too.
    let late = follow(&api, &api.token, id, Received::default(), None).await;
    assert_eq!(late.bytes, file);

    // Range reads.
    let size = file.len();
    let res = get(&api, &alice, &logs(id), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-clusterra-log-status"), "complete");
    assert_eq!(header(&res, "x-clusterra-next-offset"), size.to_string());
    assert_eq!(res.bytes().await.unwrap().as_ref(), &file[..]);
    let res = get(
        &api,
        &alice,
        &format!("{}?offset=10&limit=20", logs(id)),
        None,
    )
    .await;
    assert_eq!(header(&res, "x-clusterra-next-offset"), "30");
    assert_eq!(res.bytes().await.unwrap().as_ref(), &file[10..30]);
    let res = get(&api, &alice, &logs(id), Some("bytes=5-9")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(header(&res, "content-range"), format!("bytes 5-9/{size}"));
    assert_eq!(res.bytes().await.unwrap().as_ref(), &file[5..10]);
    let res = get(&api, &alice, &logs(id), Some("bytes=-7")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &file[size - 7..]);
    let res = get(&api, &alice, &format!("{}?tail=2", logs(id)), None).await;
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        b"line 0059 \xc3\xbcn\xc3\xafc\xc3\xb8d\xc3\xa9 \xe2\x82\xac\nline 0060 \xc3\xbcn\xc3\xafc\xc3\xb8d\xc3\xa9 \xe2\x82\xac\n"
    );
    for (query, range, field) in [
        (format!("?offset={}", size + 1), None, "offset"),
        (
            String::new(),
            Some(format!("bytes={size}-")),
            "headers.range",
        ),
        (
            String::new(),
            Some("bytes=9-2".to_string()),
            "headers.range",
        ),
    ] {
        let res = get(
            &api,
            &alice,
            &format!("{}{query}", logs(id)),
            range.as_deref(),
        )
        .await;
        assert_eq!(res.status(), 416, "{query} {range:?}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "range_not_satisfiable", "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // A Range header not of the documented form is a bad request, not an unservable range.
    for range in ["bytes=0-1,5-6", "items=0-1", ">]<A&'0"] {
        let res = get(&api, &alice, &logs(id), Some(range)).await;
        assert_eq!(res.status(), 400, "{range}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_range", "{err}");
        assert_eq!(err["error"]["field"], "headers.range", "{err}");
    }
    for (query, field) in [
        ("?offset=x", "offset"),
        ("?tail=1&offset=3", "tail"),
        ("?lines=3", "lines"),
    ] {
        let res = get(&api, &alice, &format!("{}{query}", logs(id)), None).await;
        assert_eq!(res.status(), 400, "{query}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["field"], field, "{err}");
    }

    // A reconnect id that is not a byte offset, and a parameter the stream does not take.
    for (name, value, query, field) in [
        ("Last-Event-ID", "abc", "", "headers.last-event-id"),
        ("X-Unused", "1", "?tail=3", "tail"),
    ] {
        let res = api
            .client
            .get(api.server.url(&format!("{}/stream{query}", logs(id))))
            .bearer_auth(&alice)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{name} {query}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["field"], field, "{err}");
    }

    // A log cut short under a follower is reported as a reset, not misread.
    let watcher = follow(&api, &alice, shrinking, Received::default(), Some(5)).await;
    assert_eq!(watcher.bytes, b"first part\n");
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{data}/efs/job_{shrinking}.out"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let watcher = follow(&api, &alice, shrinking, watcher, None).await;
    assert_eq!(watcher.resets.len(), 1, "{watcher:?}");
    assert_eq!(watcher.resets[0]["reason"], "truncated");
    assert_eq!(watcher.resets[0]["offset"], 11);
    assert_eq!(watcher.end.unwrap()["state"], "COMPLETED");

    // The CLI prints the same bytes, whole, tailed and followed.
    let base = api.server.base.clone();
    let cli = |extra: &[&str]| {
        let mut args = vec!["logs", "--url", &base, "--token", &alice];
        args.extend_from_slice(extra);
        run(&args)
    };
    let id_text = id.to_string();
    let out = cli(&[&id_text]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, file);
    let out = cli(&["-f", &id_text]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, file);
    assert!(String::from_utf8_lossy(&out.stderr).contains("COMPLETED"));
    let out = cli(&["--tail", "1", &id_text]);
    assert!(out.stdout.starts_with(b"line 0060"), "{out:?}");
    let out = run(&["logs", "--url", &base, "--token", &bob, &id_text]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("job_not_found"));
}

/// Submits `job` (the body's `job` object) as `token` and waits until the job is final.
async fn run_as(api: &Api, token: &str, job: Value) -> u64 {
    let (status, out) = api.submit_as(token, json!({ "job": job })).await;
    assert_eq!(status, 201, "{out}");
    tests::wait_projected(&api.server, out["position"].as_i64().unwrap()).await;
    let id = out["job_id"].as_u64().unwrap();
    api.wait_state(
        id,
        &["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"],
        Duration::from_secs(20),
    )
    .await;
    id
}

/// The `job` object of a job `name` running `script` (whole), its output going to `stdout`.
fn job_writing_to(name: &str, script: &str, stdout: &str) -> Value {
    json!({"name": name, "script": script,
           "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs",
           "standard_output": stdout})
}

fn job(name: &str, script: &str) -> Value {
    json!({"name": name, "script": format!("#!/bin/bash\n{script}\n"),
           "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"})
}

/// Runs `job` (the body's `job` object) as `token`, whose log is then refused: the reason.
async fn log_refused_for(api: &Api, token: &str, job: Value) -> String {
    let id = run_as(api, token, job).await;
    read_log(api, token, id).await.unwrap_err()
}

/// The body of a log answer, or its error code.
async fn read_log(api: &Api, token: &str, id: u64) -> Result<String, String> {
    let res = get(
        api,
        token,
        &format!("/v1/clusters/local/jobs/{id}/logs"),
        None,
    )
    .await;
    let status = res.status().as_u16();
    if status == 200 {
        return Ok(res.text().await.unwrap());
    }
    let err: Value = res.json().await.unwrap();
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "log_unavailable", "{err}");
    Err(err["error"]["message"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_be_pointed_at_another_users_log() {
    let (_dir, data, api) = tests::started(&ENV);
    let alice = mint(&data, "alice@example.org");
    let bob = mint(&data, "bob@example.org");

    let secret = "alice's results: 42";
    let a = run_as(&api, &alice, job("fit", &format!("echo \"{secret}\""))).await;
    assert_eq!(read_log(&api, &alice, a).await.unwrap().trim(), secret);
    let alices_file = format!("/mnt/efs/job_{a}.out");

    // Bob's own log, replaced by his job with a link to alice's file: not served. A hard link is
    // refused the same way (while it exists, alice's own log is refused too: a file with two
    // names is never served).
    let area = "users/bob@example.org";
    for (name, file, link) in [
        ("link", "out.txt", format!("ln -s ../../job_{a}.out")),
        ("hard", "hard.txt", format!("ln job_{a}.out")),
    ] {
        let script = format!("#!/bin/bash\nrm {area}/{file}\n{link} {area}/{file}\n");
        let linking = job_writing_to(name, &script, &format!("/mnt/efs/{area}/{file}"));
        let message = log_refused_for(&api, &bob, linking).await;
        assert!(message.contains("link"), "{message}");
    }
    std::fs::remove_file(format!("{data}/efs/{area}/hard.txt")).ok();

    // The review's case: bob names his job like alice's file and writes to `%x.out`. The
    // executor and the log routes expand `%x` alike — and a file another job could name is not
    // bob's to read.
    let named = run_as(
        &api,
        &bob,
        job_writing_to(
            &format!("job_{a}"),
            "#!/bin/bash\necho bob",
            "/mnt/efs/%x.out",
        ),
    )
    .await;
    let message = read_log(&api, &bob, named).await.unwrap_err();
    assert!(message.contains("another job's file"), "{message}");
    assert!(message.contains(&alices_file), "{message}");
    for path in [
        format!("/v1/clusters/local/jobs/{named}/logs/stream"),
        format!("/v1/clusters/local/jobs/{a}/logs"),
    ] {
        let res = get(&api, &bob, &path, None).await;
        assert_ne!(res.status(), 200, "{path}");
    }
    // Another user's area, even with the job id in the name.
    let message = log_refused_for(
        &api,
        &bob,
        job_writing_to(
            "x",
            "#!/bin/bash\necho bob",
            "/mnt/efs/users/alice@example.org/job_%j.out",
        ),
    )
    .await;
    assert!(message.contains("another user's area"), "{message}");

    // What a job owns is served: its area, a name ending in its id, `%x`, `%u`, `%N` and `%5j`
    // expanded as the executor expanded them.
    for (stdout, expect_in_name) in [
        (format!("/mnt/efs/{area}/run.log"), "run.log".to_string()),
        ("/mnt/efs/%x-%u-%N/%5j.out".into(), ".out".into()),
        ("relative/%x_%j.txt".into(), "fit2_".into()),
    ] {
        let id = run_as(
            &api,
            &bob,
            job_writing_to("fit2", "#!/bin/bash\necho \"mine $SLURM_JOB_ID\"", &stdout),
        )
        .await;
        assert_eq!(
            read_log(&api, &bob, id).await.unwrap().trim(),
            format!("mine {id}"),
            "{stdout}"
        );
        let found = std::process::Command::new("find")
            .args([
                &format!("{data}/efs"),
                "-name",
                &format!("*{expect_in_name}*"),
            ])
            .output()
            .unwrap();
        assert!(!found.stdout.is_empty(), "{stdout}");
    }
    let padded = std::process::Command::new("find")
        .args([&format!("{data}/efs"), "-path", "*/fit2-*-*/000*.out"])
        .output()
        .unwrap();
    assert!(!padded.stdout.is_empty(), "%5j zero-pads the id");

    // A pattern the executor cannot expand is refused at submit; an array's log is 409.
    let unexpandable = job_writing_to("s", "#!/bin/bash\ntrue", "/mnt/efs/job_%s.out");
    let (status, out) = api.submit_as(&bob, json!({ "job": unexpandable })).await;
    assert!((400..500).contains(&status), "{status} {out}");
    assert!(out.to_string().contains("%s"), "{out}");
    let message = log_refused_for(
        &api,
        &bob,
        json!({"name": "arr", "script": "#!/bin/bash\ntrue", "array": "1-2",
               "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}),
    )
    .await;
    assert!(message.contains("array"), "{message}");

    // Alice still reads her own log (bob's %x job wrote over it, as his script could have:
    // local jobs share one Unix user and one filesystem — docs/security.md).
    assert!(read_log(&api, &alice, a).await.is_ok());
}
