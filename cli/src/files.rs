//! `clusterra files put|get|ls|rm`: the bytes go straight between this machine and the bucket
//! through presigned URLs, streamed (a file is never held in memory), with a progress bar on a
//! terminal for large files.
//!
//! Remote names are `LOCATION/PATH` in your namespace: `data/runs/input.csv` is the key
//! `data/<your email>/runs/input.csv`; `shared/ref/genome.fa` is `shared/ref/genome.fa`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{Client, Target};

/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 4 * 1024 * 1024;

const LOCATIONS: [&str; 4] = ["scripts", "data", "outputs", "shared"];

/// Splits `LOCATION/PATH`.
fn remote(spec: &str) -> anyhow::Result<(&str, &str)> {
    match spec.split_once('/') {
        Some((loc, path)) if LOCATIONS.contains(&loc) => Ok((loc, path)),
        _ => bail!(
            "{spec:?} is not LOCATION/PATH; start it with scripts/, data/, outputs/ or shared/ (e.g. data/runs/input.csv)"
        ),
    }
}

fn api_error(status: u16, body: &Value) -> anyhow::Error {
    anyhow::anyhow!(crate::client::error_line(status, body))
}

/// Asks the API for a presigned URL.
async fn grant(client: &Client, cluster: &str, body: Value) -> anyhow::Result<Value> {
    let (status, out) = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/clusters/{cluster}/storage/presigned-url"),
            Some(&body),
            None,
        )
        .await?;
    if status != 201 {
        return Err(api_error(status, &out));
    }
    Ok(out)
}

/// A client for the object store itself: no overall timeout (a large transfer takes as long as
/// it takes), but a bounded connect.
fn transfer_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()?)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if len < PROGRESS_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Why the object store refused, from its XML error.
async fn store_error(res: reqwest::Response) -> anyhow::Error {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let tag = |t: &str| {
        text.split_once(&format!("<{t}>"))
            .and_then(|(_, rest)| rest.split_once(&format!("</{t}>")))
            .map(|(v, _)| v.to_string())
    };
    anyhow::anyhow!(
        "the object store answered {status}: {} {}",
        tag("Code").unwrap_or_default(),
        tag("Message").unwrap_or_default()
    )
}

pub async fn put(
    t: &Target,
    local: &Path,
    dest: Option<&str>,
    content_type: Option<String>,
) -> anyhow::Result<ExitCode> {
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("could not open {}", local.display()))?;
    let len = file.metadata().await?.len();
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .context("the local path has no usable file name")?;
    let dest = match dest {
        None => format!("data/{name}"),
        Some(d) if d.ends_with('/') || LOCATIONS.contains(&d) => {
            format!("{}/{name}", d.trim_end_matches('/'))
        }
        Some(d) => d.to_string(),
    };
    let (location, path) = remote(&dest)?;
    let client = Client::new(t)?;
    let mut body = json!({"location": location, "path": path, "method": "PUT", "size": len});
    if let Some(ct) = &content_type {
        body["content_type"] = json!(ct);
    }
    let granted = grant(&client, &t.cluster, body).await?;
    let url = granted["url"].as_str().context("the API gave no url")?;
    let bar = progress(len, &format!("put {name}"));
    let counter = bar.clone();
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
            if let Ok(c) = chunk {
                counter.inc(c.len() as u64);
            }
        });
    let mut req = transfer_client()?
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(headers) = granted["headers"].as_object() {
        for (k, v) in headers {
            // The length is signed in; it is already set above (once).
            if k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if let Some(v) = v.as_str() {
                req = req.header(k.as_str(), v);
            }
        }
    }
    let res = req.send().await.context("the upload failed")?;
    bar.finish_and_clear();
    if !res.status().is_success() {
        return Err(store_error(res).await);
    }
    println!(
        "uploaded {} ({len} bytes) to {}",
        local.display(),
        granted["key"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn get(t: &Target, src: &str, local: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (location, path) = remote(src)?;
    let client = Client::new(t)?;
    let granted = grant(
        &client,
        &t.cluster,
        json!({"location": location, "path": path, "method": "GET"}),
    )
    .await?;
    let url = granted["url"].as_str().context("the API gave no url")?;
    let res = transfer_client()?
        .get(url)
        .send()
        .await
        .context("the download failed")?;
    if !res.status().is_success() {
        return Err(store_error(res).await);
    }
    let len = res.content_length().unwrap_or(0);
    let to_stdout = local.as_deref() == Some(Path::new("-"));
    let target = local.unwrap_or_else(|| PathBuf::from(path.rsplit('/').next().unwrap_or(path)));
    let bar = progress(len, &format!("get {path}"));
    let mut body = res.bytes_stream();
    if to_stdout {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("the download was cut off")?)
                .await?;
        }
        out.flush().await?;
        return Ok(ExitCode::SUCCESS);
    }
    // Into a side file, renamed when complete: a cut-off download never looks finished.
    let partial = target.with_file_name(format!(
        ".{}.part",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("could not create {}", partial.display()))?;
    let mut written = 0u64;
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download was cut off")?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &target)
        .await
        .with_context(|| format!("could not move the download to {}", target.display()))?;
    println!(
        "downloaded {} ({written} bytes) to {}",
        granted["key"].as_str().unwrap_or("?"),
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(t: &Target, spec: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(t)?;
    let wanted: Vec<(&str, &str)> = match spec {
        None => LOCATIONS.iter().map(|l| (*l, "")).collect(),
        Some(s) if LOCATIONS.contains(&s) => vec![(s, "")],
        Some(s) => vec![remote(s)?],
    };
    for (location, prefix) in wanted {
        let mut continuation: Option<String> = None;
        loop {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("location", location);
            query.append_pair("prefix", prefix);
            if let Some(c) = &continuation {
                query.append_pair("continuation", c);
            }
            let query = query.finish();
            let (status, out) = client
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/clusters/{}/storage/objects?{query}", t.cluster),
                    None,
                    None,
                )
                .await?;
            if status != 200 {
                return Err(api_error(status, &out));
            }
            for o in out["objects"].as_array().into_iter().flatten() {
                if as_json {
                    println!("{o}");
                } else {
                    println!(
                        "{:>12}  {}  {location}/{}",
                        o["size"],
                        o["last_modified"].as_str().unwrap_or("-"),
                        o["path"].as_str().unwrap_or("?")
                    );
                }
            }
            continuation = out["continuation"].as_str().map(str::to_string);
            if continuation.is_none() {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(t: &Target, spec: &str) -> anyhow::Result<ExitCode> {
    let (location, path) = remote(spec)?;
    let client = Client::new(t)?;
    let (status, out) = client
        .send(
            reqwest::Method::DELETE,
            &format!(
                "/v1/clusters/{}/storage/objects?{}",
                t.cluster,
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("location", location)
                    .append_pair("path", path)
                    .finish()
            ),
            None,
            None,
        )
        .await?;
    if status != 200 {
        return Err(api_error(status, &out));
    }
    println!(
        "deleted {} ({} bytes)",
        out["key"].as_str().unwrap_or("?"),
        out["size"]
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names() {
        assert_eq!(remote("data/a/b.csv").unwrap(), ("data", "a/b.csv"));
        assert_eq!(remote("shared/x").unwrap(), ("shared", "x"));
        assert!(remote("tmp/x").is_err());
        assert!(remote("data").is_err());
    }
}
