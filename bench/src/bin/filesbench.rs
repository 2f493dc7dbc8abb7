//! Files: presigned-URL issuance through the HTTP API (concurrent clients on loopback), then one
//! large upload and download through a presigned URL (the embedded object store when the server
//! runs on its defaults). Bytes are generated and discarded in memory, so the disk of this
//! machine is only written by the store.
//!
//! bench/files.sh runs it against a fresh release server.
//! filesbench --url http://127.0.0.1:8080 --token JWT --presigns 20000 --concurrency 32 --transfer-mib 1024

use std::time::{Duration, Instant};

use bench::closed_loop;
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: bench::Server,
    #[arg(long, default_value_t = 20_000)]
    presigns: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Size of the upload and download; 0 skips them.
    #[arg(long, default_value_t = 1024)]
    transfer_mib: u64,
    #[arg(long, default_value = "local")]
    cluster: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint = format!(
        "{}/v1/clusters/{}/storage/presigned-url",
        args.server.url, args.cluster
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    // One request first, so the bucket exists before the clock starts.
    presign(
        &client,
        &endpoint,
        &args.server.token,
        json!({"location": "data", "path": "warm", "method": "GET"}),
    )
    .await?;

    let (c, e, token) = (client.clone(), endpoint.clone(), args.server.token.clone());
    let load = closed_loop(
        args.presigns,
        args.concurrency,
        Duration::from_secs(600),
        move |i| {
            let method = if i % 2 == 0 { "PUT" } else { "GET" };
            let mut body =
                json!({"location": "data", "path": format!("bench/{i}.csv"), "method": method});
            if method == "PUT" {
                body["size"] = json!(1024);
            }
            let (c, e, token) = (c.clone(), e.clone(), token.clone());
            async move {
                presign(&c, &e, &token, body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    println!("{}", load.report("presigned URLs", args.concurrency));

    if args.transfer_mib > 0 {
        transfer(&client, &endpoint, &args.server.token, args.transfer_mib).await?;
    }
    Ok(())
}

async fn presign(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let r = client
        .post(endpoint)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let out: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.as_u16() == 201, "status {status}: {out}");
    Ok(out)
}

async fn transfer(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    mib: u64,
) -> anyhow::Result<()> {
    let len = mib * 1024 * 1024;
    let path = "bench/large.bin";
    let put = presign(
        client,
        endpoint,
        token,
        json!({"location": "data", "path": path, "method": "PUT", "size": len}),
    )
    .await?;
    let url = put["url"].as_str().unwrap_or_default().to_string();
    let block = bytes::Bytes::from(vec![0x5a_u8; 1024 * 1024]);
    let body = futures::stream::iter((0..mib).map(move |_| Ok::<_, std::io::Error>(block.clone())));
    let t = Instant::now();
    let r = client
        .put(&url)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "upload: {}", r.status());
    let up = t.elapsed();
    let get = presign(
        client,
        endpoint,
        token,
        json!({"location": "data", "path": path, "method": "GET"}),
    )
    .await?;
    let t = Instant::now();
    let r = client
        .get(get["url"].as_str().unwrap_or_default())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "download: {}", r.status());
    let mut got = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got += chunk?.len() as u64;
    }
    let down = t.elapsed();
    anyhow::ensure!(got == len, "downloaded {got} of {len} bytes");
    let rate = |d: std::time::Duration| len as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{mib} MiB through presigned URLs: upload {:.2} s = {:.0} MB/s, download {:.2} s = {:.0} MB/s",
        up.as_secs_f64(),
        rate(up),
        down.as_secs_f64(),
        rate(down)
    );
    let del = endpoint.replace("presigned-url", "objects") + "?location=data&path=bench/large.bin";
    let _ = client.delete(del).bearer_auth(token).send().await;
    Ok(())
}
