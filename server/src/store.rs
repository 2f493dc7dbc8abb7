//! The event log and read store the server (and the operator commands) open.

use std::sync::Arc;

use eventlog::{Store, SystemClock};

use crate::config::Config;
use crate::error::{Context, Result};

pub async fn open_store(config: &Config) -> Result<Store> {
    if config.database_url.is_empty() {
        create_private_dir(&config.data_dir)?;
    }
    let options = config.open_options();
    eventlog::open(&options, Arc::new(SystemClock))
        .await
        .with_context(|| format!("could not open the database {}", redact(&options.url)))
}

/// Creates the data directory readable by its owner only.
pub fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("could not create the data directory {}", dir.display()))?;
    }
    Ok(())
}

/// Hides a password in a database URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
