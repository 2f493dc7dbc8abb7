//! Who is calling: `Authorization: Bearer <JWT>` with claims `email`, `workspace`, `role`, `exp`.
//!
//! Two modes. The embedded default signs and verifies HS256 tokens with a secret kept in the data
//! directory (mode 0600). Production verifies RS256 tokens against a JWKS (a file, or a URL that
//! is fetched at start and refreshed).

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use domain::{Email, WorkspaceId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState};

/// What a caller may do within their workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// The token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub email: String,
    pub workspace: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, seconds since the Unix epoch: the token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// An authenticated caller, with validated ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub email: Email,
    pub workspace: WorkspaceId,
    pub role: Role,
    /// Through what the request came, decided by the server: `agent` or `console` for the
    /// server's own in-process requests (a request extension no client can set), else `api`.
    /// The `via` of the events the request records.
    pub via: &'static str,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuses a caller that is not an admin of their workspace.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_required",
                "this action needs a workspace admin; ask an admin of your workspace to do it",
            ))
        }
    }
}

/// Why a token was refused. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (mint one with `clusterra token mint`)"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed ({0}); send the JWT exactly as it was issued")]
    Malformed(String),
    #[error("the token expired; get a new one (`clusterra token mint` or your identity provider)")]
    Expired,
    #[error("the token's signature is not valid for this server; use a token issued for it")]
    BadSignature,
    #[error("the token is signed with an algorithm this server does not accept ({0})")]
    WrongAlgorithm(String),
    #[error("the token's claims are not valid: {0}")]
    InvalidClaims(String),
    #[error(
        "the token is not valid yet (its nbf is in the future); wait, or check this machine's clock"
    )]
    NotYetValid,
    #[error(
        "the token expires more than {0} s from now, longer than this server accepts; get one with a shorter lifetime (`clusterra token mint --ttl`)"
    )]
    LifetimeTooLong(i64),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::NotBearer => "token_not_bearer",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::WrongAlgorithm(_) => "token_wrong_algorithm",
            AuthError::InvalidClaims(_) => "token_invalid_claims",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::LifetimeTooLong(_) => "token_lifetime_too_long",
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
            .with_field("headers.authorization")
    }
}

/// Verifies (and, in the embedded mode, mints) tokens.
pub struct Authenticator {
    mode: Mode,
    /// Required `iss` and `aud` of JWKS tokens, when configured.
    issuer: Option<String>,
    audience: Option<String>,
    /// The longest a token may still be valid for, in seconds: a token whose `exp` is further
    /// ahead is refused.
    max_lifetime_s: i64,
}

/// The default longest token lifetime the server accepts: 30 days.
pub const DEFAULT_MAX_TOKEN_LIFETIME_S: i64 = 30 * 24 * 3600;

enum Mode {
    Local {
        encoding: EncodingKey,
        decoding: DecodingKey,
        /// Keys of sign-in link codes: derived from the secret with another label, so a code is
        /// never a bearer token and a bearer token is never a code.
        login_encoding: EncodingKey,
        login_decoding: DecodingKey,
    },
    Jwks {
        /// Keys by `kid`; replaced as a whole on refresh.
        keys: RwLock<HashMap<String, DecodingKey>>,
    },
}

/// Errors building an authenticator.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the JWKS is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JWKS key {kid:?} cannot be used: {reason}")]
    Key { kid: String, reason: String },
    #[error("the JWKS holds no RS256 signing key with a kid")]
    Empty,
    #[error("could not mint a token: {0}")]
    Mint(#[from] jsonwebtoken::errors::Error),
    #[error("this server verifies tokens from a JWKS; mint tokens with your identity provider")]
    NotLocal,
}

fn parse_jwks(text: &str) -> Result<HashMap<String, DecodingKey>, KeyError> {
    let set: JwkSet = serde_json::from_str(text)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if !matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
        ) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Key {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys)
}

impl Authenticator {
    /// HS256 with a local secret (the embedded default).
    pub fn local(secret: &[u8]) -> Self {
        let login_key = login_key(secret);
        Self {
            mode: Mode::Local {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                login_encoding: EncodingKey::from_secret(&login_key),
                login_decoding: DecodingKey::from_secret(&login_key),
            },
            issuer: None,
            audience: None,
            max_lifetime_s: DEFAULT_MAX_TOKEN_LIFETIME_S,
        }
    }

    /// RS256 against the keys of a JWKS document.
    pub fn from_jwks(text: &str) -> Result<Self, KeyError> {
        Ok(Self {
            mode: Mode::Jwks {
                keys: RwLock::new(parse_jwks(text)?),
            },
            issuer: None,
            audience: None,
            max_lifetime_s: DEFAULT_MAX_TOKEN_LIFETIME_S,
        })
    }

    /// Requires JWKS tokens to carry this `iss` and this `aud` (an identity provider signs
    /// tokens for many applications with one key set: without these checks, any of them would
    /// pass).
    pub fn require(mut self, issuer: Option<String>, audience: Option<String>) -> Self {
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    /// Refuses tokens whose `exp` is more than `seconds` ahead.
    pub fn max_lifetime(mut self, seconds: i64) -> Self {
        self.max_lifetime_s = seconds;
        self
    }

    /// The longest lifetime of a token this server accepts, in seconds.
    pub fn max_lifetime_s(&self) -> i64 {
        self.max_lifetime_s
    }

    /// Replaces the JWKS keys (after a refresh). No effect in local mode.
    pub fn replace_jwks(&self, text: &str) -> Result<usize, KeyError> {
        let new = parse_jwks(text)?;
        let n = new.len();
        if let Mode::Jwks { keys } = &self.mode {
            *keys.write().unwrap_or_else(|p| p.into_inner()) = new;
        }
        Ok(n)
    }

    /// Signs `claims` with the local secret.
    pub fn mint(&self, claims: &Claims) -> Result<String, KeyError> {
        match &self.mode {
            Mode::Local { encoding, .. } => Ok(jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                encoding,
            )?),
            Mode::Jwks { .. } => Err(KeyError::NotLocal),
        }
    }

    /// Whether this server signs its own tokens (the embedded default), and so can mint sign-in
    /// links and console sessions.
    pub fn is_local(&self) -> bool {
        matches!(self.mode, Mode::Local { .. })
    }

    /// Signs a one-time sign-in link code (HS256 under a key derived from the local secret).
    pub fn mint_login_code(&self, code: &LoginCode) -> Result<String, KeyError> {
        match &self.mode {
            Mode::Local { login_encoding, .. } => Ok(jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                code,
                login_encoding,
            )?),
            Mode::Jwks { .. } => Err(KeyError::NotLocal),
        }
    }

    /// Checks a sign-in link code's signature and expiry (not whether it was used: that is the
    /// log's `login:<link_id>` stream).
    pub fn verify_login_code(&self, code: &str) -> Result<(LoginCode, Caller), AuthError> {
        let Mode::Local { login_decoding, .. } = &self.mode else {
            return Err(AuthError::BadSignature);
        };
        let header =
            jsonwebtoken::decode_header(code).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::WrongAlgorithm(format!(
                "{:?}; expected HS256",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        let code = jsonwebtoken::decode::<LoginCode>(code, login_decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed(e.to_string()),
            })?
            .claims;
        if code.kind != LOGIN_CODE_KIND {
            return Err(AuthError::InvalidClaims("not a sign-in link".into()));
        }
        if code.exp.saturating_sub(chrono::Utc::now().timestamp()) > MAX_LOGIN_LINK_TTL_S {
            return Err(AuthError::LifetimeTooLong(MAX_LOGIN_LINK_TTL_S));
        }
        let caller = Caller {
            email: Email::new(code.email.clone())
                .map_err(|e| AuthError::InvalidClaims(e.to_string()))?,
            workspace: WorkspaceId::new(code.workspace.clone())
                .map_err(|e| AuthError::InvalidClaims(e.to_string()))?,
            role: code.role,
            via: "api",
        };
        Ok((code, caller))
    }

    /// Checks a bearer token and returns the caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        self.verify_until(token).map(|(caller, _)| caller)
    }

    /// [`Authenticator::verify`], with the token's expiry (`exp`, seconds since the epoch).
    pub fn verify_until(&self, token: &str) -> Result<(Caller, i64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let mut validation;
        let claims = match &self.mode {
            Mode::Local { decoding, .. } => {
                if header.alg != Algorithm::HS256 {
                    return Err(AuthError::WrongAlgorithm(format!(
                        "{:?}; expected HS256",
                        header.alg
                    )));
                }
                validation = Validation::new(Algorithm::HS256);
                validation.leeway = 0;
                validation.validate_nbf = true;
                validation.validate_aud = false;
                jsonwebtoken::decode::<Claims>(token, decoding, &validation)
            }
            Mode::Jwks { keys } => {
                if header.alg != Algorithm::RS256 {
                    return Err(AuthError::WrongAlgorithm(format!(
                        "{:?}; expected RS256",
                        header.alg
                    )));
                }
                let keys = keys.read().unwrap_or_else(|p| p.into_inner());
                let key = header
                    .kid
                    .as_ref()
                    .and_then(|kid| keys.get(kid))
                    .ok_or(AuthError::BadSignature)?;
                validation = Validation::new(Algorithm::RS256);
                validation.leeway = 0;
                validation.validate_nbf = true;
                match &self.issuer {
                    Some(iss) => validation.set_issuer(&[iss]),
                    None => validation.iss = None,
                }
                match &self.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                jsonwebtoken::decode::<Claims>(token, key, &validation)
            }
        }
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => AuthError::InvalidClaims(
                format!("{e}; a token needs email, workspace, role (admin or user) and exp"),
            ),
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(e.to_string()),
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::InvalidClaims(
                format!("{e}; this server accepts tokens issued for it only"),
            ),
            _ => AuthError::Malformed(e.to_string()),
        })?
        .claims;
        let now = chrono::Utc::now().timestamp();
        if claims.exp.saturating_sub(now) > self.max_lifetime_s {
            return Err(AuthError::LifetimeTooLong(self.max_lifetime_s));
        }
        let email =
            Email::new(claims.email).map_err(|e| AuthError::InvalidClaims(e.to_string()))?;
        let workspace = WorkspaceId::new(claims.workspace)
            .map_err(|e| AuthError::InvalidClaims(e.to_string()))?;
        Ok((
            Caller {
                email,
                workspace,
                role: claims.role,
                via: "api",
            },
            claims.exp,
        ))
    }
}

/// The console's session cookie: it holds a bearer token (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "clusterra_session";

/// The `kind` claim of sign-in link codes.
pub const LOGIN_CODE_KIND: &str = "login";

/// The longest a sign-in link may live: 15 minutes.
pub const MAX_LOGIN_LINK_TTL_S: i64 = 15 * 60;

/// A one-time sign-in link's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginCode {
    /// Always [`LOGIN_CODE_KIND`].
    pub kind: String,
    /// The link's id: its use is recorded on stream `login:<link_id>`.
    pub link_id: uuid::Uuid,
    pub email: String,
    pub workspace: String,
    pub role: Role,
    pub exp: i64,
}

fn login_key(secret: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"clusterra sign-in link key v1\0");
    h.update(secret);
    h.finalize().to_vec()
}

/// The values of every cookie called `name` the request carries, in order.
pub fn cookie_values(headers: &axum::http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .collect()
}

/// The session cookie's token, if the request carries one.
pub fn session_token(headers: &axum::http::HeaderMap) -> Option<String> {
    cookie_values(headers, SESSION_COOKIE)
        .into_iter()
        .next()
        .filter(|v| !v.is_empty())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // The console's session cookie stands for the header on reads only (the log and
            // feed streams the browser opens with EventSource): a request that changes
            // something must carry the header, which another site cannot make a browser send.
            let safe =
                parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
            let token = session_token(&parts.headers)
                .filter(|_| safe)
                .ok_or(AuthError::Missing)?;
            let caller = state.auth.verify(&token)?;
            tracing::Span::current().record("caller", caller.email.as_str());
            return Ok(Caller {
                via: origin_via(parts),
                ..caller
            });
        };
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        let caller = state.auth.verify(token)?;
        tracing::Span::current().record("caller", caller.email.as_str());
        Ok(Caller {
            via: origin_via(parts),
            ..caller
        })
    }
}

/// `agent` or `console` for the server's own in-process requests, else `api`.
fn origin_via(parts: &Parts) -> &'static str {
    if parts.extensions.get::<crate::FromAgent>().is_some() {
        "agent"
    } else if parts.extensions.get::<crate::FromConsole>().is_some() {
        "console"
    } else {
        "api"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> Claims {
        Claims {
            email: "ada@lab.org".into(),
            workspace: "physics".into(),
            role: Role::User,
            exp: chrono::Utc::now().timestamp() + exp_in,
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn nbf_is_honoured_and_lifetimes_are_bounded() {
        let auth = Authenticator::local(b"0123456789abcdef0123456789abcdef");
        let mut early = claims(600);
        early.nbf = Some(chrono::Utc::now().timestamp() + 300);
        let token = auth.mint(&early).unwrap();
        assert_eq!(auth.verify(&token), Err(AuthError::NotYetValid));
        early.nbf = Some(chrono::Utc::now().timestamp() - 1);
        assert!(auth.verify(&auth.mint(&early).unwrap()).is_ok());

        // Centuries ahead: refused by the default 30-day bound; a day is fine.
        let forever = auth.mint(&claims(300 * 365 * 24 * 3600)).unwrap();
        assert_eq!(
            auth.verify(&forever),
            Err(AuthError::LifetimeTooLong(DEFAULT_MAX_TOKEN_LIFETIME_S))
        );
        assert!(auth.verify(&auth.mint(&claims(24 * 3600)).unwrap()).is_ok());
        let strict = Authenticator::local(b"0123456789abcdef0123456789abcdef").max_lifetime(3600);
        assert_eq!(
            strict.verify(&auth.mint(&claims(24 * 3600)).unwrap()),
            Err(AuthError::LifetimeTooLong(3600))
        );
        assert_eq!(
            AuthError::LifetimeTooLong(1).code(),
            "token_lifetime_too_long"
        );
        assert_eq!(AuthError::NotYetValid.code(), "token_not_yet_valid");
    }

    #[test]
    fn local_tokens_round_trip_and_fail_for_the_right_reason() {
        let auth = Authenticator::local(b"0123456789abcdef0123456789abcdef");
        let token = auth.mint(&claims(60)).unwrap();
        let caller = auth.verify(&token).unwrap();
        assert_eq!(caller.email.as_str(), "ada@lab.org");
        assert_eq!(caller.role, Role::User);

        let expired = auth.mint(&claims(-10)).unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));

        let other = Authenticator::local(b"another secret, another server!!");
        assert_eq!(other.verify(&token), Err(AuthError::BadSignature));

        assert!(matches!(
            auth.verify("not-a-jwt"),
            Err(AuthError::Malformed(_))
        ));

        let mut bad = claims(60);
        bad.workspace = "../etc".into();
        let token = auth.mint(&bad).unwrap();
        assert!(matches!(
            auth.verify(&token),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn jwks_verifies_rs256_and_refuses_hs256() {
        let jwks = include_str!("../../fixtures/auth/test-jwks.json");
        let auth = Authenticator::from_jwks(jwks).unwrap();
        let pem = include_bytes!("../../fixtures/auth/test-rsa-private.pem");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-key-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims(60),
            &EncodingKey::from_rsa_pem(pem).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap().workspace.as_str(), "physics");

        let other = include_bytes!("../../fixtures/auth/test-rsa-other.pem");
        let forged = jsonwebtoken::encode(
            &header,
            &claims(60),
            &EncodingKey::from_rsa_pem(other).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.verify(&forged), Err(AuthError::BadSignature));

        // An HS256 token "signed" with the public key must not pass (algorithm confusion).
        let hs = Authenticator::local(jwks.as_bytes())
            .mint(&claims(60))
            .unwrap();
        assert!(matches!(
            auth.verify(&hs),
            Err(AuthError::WrongAlgorithm(_))
        ));
        assert!(matches!(auth.mint(&claims(60)), Err(KeyError::NotLocal)));

        // With an issuer and audience configured, tokens for another app are refused.
        let strict = Authenticator::from_jwks(jwks)
            .unwrap()
            .require(Some("https://idp.example".into()), Some("clusterra".into()));
        let key = EncodingKey::from_rsa_pem(pem).unwrap();
        let mut c = serde_json::to_value(claims(60)).unwrap();
        c["iss"] = "https://idp.example".into();
        c["aud"] = "clusterra".into();
        let good = jsonwebtoken::encode(&header, &c, &key).unwrap();
        assert!(strict.verify(&good).is_ok());
        c["aud"] = "another-app".into();
        let other_app = jsonwebtoken::encode(&header, &c, &key).unwrap();
        assert!(matches!(
            strict.verify(&other_app),
            Err(AuthError::InvalidClaims(_))
        ));
        // Without configuration, a token with an aud claim is still accepted.
        assert!(auth.verify(&other_app).is_ok());
    }
}
