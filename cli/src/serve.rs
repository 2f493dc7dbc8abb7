//! `clusterra serve`: the settings are parsed by `main`; this sets up logging and hands them to
//! the server library.

use std::process::ExitCode;

pub async fn run(config: server::Config) -> anyhow::Result<ExitCode> {
    init_tracing(&config.log_format);
    let listener = server::bind(&config).await?;
    server::Server::build(config)
        .await?
        .run(listener, shutdown_signal())
        .await?;
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
    // The embedded object store's library logs every refused request (a bad or expired
    // signature is the client's problem) at ERROR; its failures are logged by Clusterra instead.
    // `s3s=…` in CLUSTERRA_LOG turns it back on.
    let given = std::env::var("CLUSTERRA_LOG").ok();
    let mut directives = given.clone().unwrap_or_else(|| "info,sqlx=warn".into());
    if !directives.contains("s3s") {
        directives.push_str(",s3s=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("CLUSTERRA_LOG={given:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info,sqlx=warn,s3s=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
