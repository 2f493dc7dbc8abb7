//! `clusterra ask "…"`: Ask AI from the terminal. The reply is printed as it streams; each
//! action the agent proposes is shown with what it will change, and runs only when you answer
//! `y` to it (its digest is sent back as shown); anything else rejects it. Nothing is ever
//! confirmed without asking.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use crate::client::{Client, Target, error_line};

/// `text` without control characters (but newlines and tabs) or bidirectional overrides: what a
/// model or a job log wrote cannot move the cursor, rewrite the lines above, or reach the
/// clipboard through terminal escape sequences.
fn plain(text: &str) -> String {
    text.chars()
        .filter(|c| {
            (!c.is_control() || *c == '\n' || *c == '\t')
                && !matches!(*c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

pub async fn ask(t: &Target, text: &str, conversation: Option<String>) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let base = format!("/v1/clusters/{}/agent", t.cluster);
    let cid = match conversation {
        Some(cid) => cid,
        None => {
            let (status, out) = c
                .send(
                    reqwest::Method::POST,
                    &format!("{base}/conversations"),
                    Some(&json!({})),
                    None,
                )
                .await?;
            if status != 201 {
                eprintln!("{}", error_line(status, &out));
                return Ok(ExitCode::FAILURE);
            }
            out["conversation_id"]
                .as_str()
                .context("the server named no conversation")?
                .to_string()
        }
    };
    let res = c
        .stream_post(
            &format!("{base}/conversations/{cid}/messages"),
            &json!({ "text": text }),
        )
        .await?;
    let status = res.status().as_u16();
    if status != 200 {
        let out: Value = res.json().await.unwrap_or(Value::Null);
        eprintln!("{}", error_line(status, &out));
        return Ok(ExitCode::FAILURE);
    }
    let mut proposals = Vec::new();
    let mut failed = false;
    {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut events = res.bytes_stream().eventsource();
        let mut out = std::io::stdout();
        while let Some(event) = events.next().await {
            let event = event.context("the reply stream broke")?;
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.event.as_str() {
                "delta" => {
                    print!("{}", plain(data["text"].as_str().unwrap_or_default()));
                    out.flush()?;
                }
                "tool_call" => eprintln!(
                    "  [{} {}{}]",
                    plain(data["tool"].as_str().unwrap_or("?")),
                    if data["ok"] == true { "ok" } else { "refused" },
                    data["error"]
                        .as_str()
                        .map(|e| format!(": {}", plain(e)))
                        .unwrap_or_default()
                ),
                "proposal" => proposals.push(data),
                "error" => {
                    failed = true;
                    eprintln!(
                        "\nerror {}: {}",
                        plain(data["code"].as_str().unwrap_or("?")),
                        plain(data["message"].as_str().unwrap_or("?"))
                    );
                }
                "done" => break,
                _ => {}
            }
        }
        println!();
    }
    let stdin = std::io::stdin();
    for p in &proposals {
        let pid = p["proposal_id"].as_str().unwrap_or_default();
        println!(
            "\nProposed: {} {}\n  {}\n  expires {}",
            plain(p["tool"].as_str().unwrap_or("?")),
            plain(&p["arguments"].to_string()),
            plain(p["preview"]["what_changes"].as_str().unwrap_or("")),
            plain(p["expires_at"].as_str().unwrap_or("?"))
        );
        println!("  preview: {}", plain(&p["preview"].to_string()));
        print!("Run this? [y/N] ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line)?;
        if read == 0 {
            println!("\n  left pending (no answer): confirm or reject it later with the API");
            continue;
        }
        let (path, body) = if line.trim().eq_ignore_ascii_case("y") {
            ("confirm", json!({ "digest": p["digest"] }))
        } else {
            ("reject", json!({ "reason": "declined in the CLI" }))
        };
        let (status, out) = c
            .send(
                reqwest::Method::POST,
                &format!("{base}/proposals/{pid}/{path}"),
                Some(&body),
                None,
            )
            .await?;
        if (200..300).contains(&status) {
            let summary = out["outcome"]["summary"]
                .as_str()
                .map(str::to_string)
                .or_else(|| out["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_default();
            println!(
                "  {}{}",
                out["state"].as_str().unwrap_or("?"),
                if summary.is_empty() {
                    String::new()
                } else {
                    format!(": {summary}")
                }
            );
        } else {
            failed = true;
            eprintln!("  {}", error_line(status, &out));
        }
    }
    eprintln!("(conversation {cid}: go on with `clusterra ask --conversation {cid} \"…\"`)");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
