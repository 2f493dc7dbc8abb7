//! `clusterra token mint` and the first-start admin token.

use std::time::Duration;

use crate::error::{Context, Error, Result, bail, ensure};
use api::{Authenticator, Claims, Role};
use domain::{Email, WorkspaceId};

use crate::config::Config;

/// Parses `90s`, `30m`, `12h`, `7d` (at most 90 days).
pub fn parse_ttl(text: &str) -> Result<Duration> {
    let text = text.trim();
    // The unit is the last character (of any width: `1é` is refused, not a panic).
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        Error::settings(format!(
            "--ttl {text:?}: use a positive number and a unit, like 30m, 12h or 7d"
        ))
    })?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl {text:?}: the unit must be s, m, h or d, like 12h"),
    };
    // Checked: a number of days past u64 must be refused, not wrap below the bound.
    let secs = n.checked_mul(unit_secs).filter(|s| *s <= 90 * 86_400);
    let Some(secs) = secs else {
        bail!("--ttl {text:?}: at most 90d");
    };
    Ok(Duration::from_secs(secs))
}

/// Signs a token with the data directory's secret (creating the secret if needed).
pub fn mint(
    config: &Config,
    email: &str,
    workspace: &str,
    admin: bool,
    ttl: Duration,
) -> Result<String> {
    let email = Email::new(email).map_err(|e| Error::settings(format!("--email: {e}")))?;
    let workspace =
        WorkspaceId::new(workspace).map_err(|e| Error::settings(format!("--workspace: {e}")))?;
    ensure!(
        i64::try_from(ttl.as_secs()).is_ok_and(|s| s <= config.max_token_lifetime_s),
        "--ttl must be at most max_token_lifetime_s ({} s): the server refuses tokens that live longer",
        config.max_token_lifetime_s
    );
    let (secret, _) = crate::secrets::load_or_create(&config.secret_path())?;
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        email: email.to_string(),
        workspace: workspace.to_string(),
        role: if admin { Role::Admin } else { Role::User },
        exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        iat: Some(now),
        nbf: None,
    };
    Authenticator::local(&secret)
        .mint(&claims)
        .context("could not sign the token")
}

/// A one-time console sign-in link for the server of `config`: `<base>/login?code=…`, valid
/// for `ttl` (at most 15 minutes); the server records its use, so it signs in once. `base`
/// defaults to the server's listen address (`127.0.0.1` for an unspecified one).
pub fn login_link(
    config: &Config,
    email: &str,
    workspace: &str,
    admin: bool,
    ttl: Duration,
    base: Option<&str>,
) -> Result<String> {
    let email = Email::new(email).map_err(|e| Error::settings(format!("--email: {e}")))?;
    let workspace =
        WorkspaceId::new(workspace).map_err(|e| Error::settings(format!("--workspace: {e}")))?;
    let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    ensure!(
        ttl_s <= api::auth::MAX_LOGIN_LINK_TTL_S,
        "--ttl: a sign-in link lives at most 15m"
    );
    let base = match base {
        Some(b) => {
            let b = b.trim_end_matches('/');
            ensure!(
                (b.starts_with("http://") || b.starts_with("https://")) && b.len() <= 2048,
                "--url must be the console's address, like https://clusterra.lab.org"
            );
            b.to_owned()
        }
        None => {
            let mut addr = config.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let (secret, _) = crate::secrets::load_or_create(&config.secret_path())?;
    let code = api::auth::LoginCode {
        kind: api::auth::LOGIN_CODE_KIND.into(),
        link_id: uuid::Uuid::new_v4(),
        email: email.to_string(),
        workspace: workspace.to_string(),
        role: if admin { Role::Admin } else { Role::User },
        exp: chrono::Utc::now().timestamp().saturating_add(ttl_s),
    };
    let code = Authenticator::local(&secret)
        .mint_login_code(&code)
        .context("could not sign the sign-in link")?;
    Ok(format!("{base}/login?code={code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("12").is_err());
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("100d").is_err());
        // Days past u64 are refused, not wrapped below the bound.
        assert!(parse_ttl("300000000000000d").is_err());
        assert!(parse_ttl("18446744073709551615m").is_err());
        assert!(parse_ttl("").is_err());
        assert!(
            parse_ttl("1é").is_err(),
            "a wide last character is refused, not a panic"
        );
    }
}
