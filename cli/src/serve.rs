//! `clusterra serve`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use api::AppState;
use projections::Projections;
use tokio::sync::watch;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    init_tracing(&config.log_format);
    let store = crate::ops::open_store(&config).await?;
    // The embedded defaults come with one cluster to try things on.
    if store.log.backend() == "sqlite"
        && commands::clusters::ensure_default_cluster(store.log.as_ref()).await?
    {
        tracing::info!("first start: registered cluster `local` in workspace `default`");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let projections = Arc::new(Projections::start(
        store.log.clone(),
        store.read.clone(),
        projections::all_projectors(),
        stop_rx,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {}; pick another address with --listen or CLUSTERRA_LISTEN",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.log.backend(), data_dir = %config.data_dir.display(), "clusterra listening");
    // Tests and scripts read this line to find the port.
    println!("clusterra listening on http://{addr}");

    let state = AppState {
        store,
        projections: projections.clone(),
    };
    api::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("HTTP server stopped; stopping projectors at a checkpoint");
    let _ = stop_tx.send(true);
    match Arc::try_unwrap(projections) {
        Ok(p) => p.join().await,
        Err(_) => tracing::warn!("projections still referenced at shutdown"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CLUSTERRA_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
