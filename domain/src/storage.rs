//! Files: where a key may live, who may touch it, and how long a presigned URL may last.
//!
//! Every cluster has one bucket. Keys are namespaced by location: `scripts/`, `data/` and
//! `outputs/` hold `<location>/<email>/<path>` and belong to that user; `shared/<path>` is read by
//! everyone in the workspace and written only by its admins. File bytes never pass through
//! Clusterra, so the only control is which URLs it signs: every key is checked here before it is
//! presigned, listed or deleted.
//!
//! The path rules are strict on purpose. Real S3 keeps `..` literally, but an S3-compatible store
//! on a filesystem (the embedded one) resolves it, so `data/ada@lab.org/../../other-bucket/x`
//! could reach another bucket's folder.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::Email;

/// The longest key, in bytes of UTF-8 (S3's own limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// How long a presigned URL lasts when the caller does not say.
pub const DEFAULT_EXPIRY_SECONDS: u64 = 15 * 60;
/// The longest a presigned URL may last.
pub const MAX_EXPIRY_SECONDS: u64 = 60 * 60;

/// Where in the bucket a file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Scripts,
    Data,
    Outputs,
    /// Readable by everyone in the workspace; only admins write here.
    Shared,
}

impl Location {
    pub const ALL: [Location; 4] = [
        Location::Scripts,
        Location::Data,
        Location::Outputs,
        Location::Shared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Location::Scripts => "scripts",
            Location::Data => "data",
            Location::Outputs => "outputs",
            Location::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether keys here carry their owner's email as the second segment.
    pub fn is_per_user(self) -> bool {
        self != Location::Shared
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a presigned URL lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FileMethod {
    /// Upload (create or replace) the object.
    Put,
    /// Download the object.
    Get,
}

impl FileMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            FileMethod::Put => "PUT",
            FileMethod::Get => "GET",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PUT" => Some(FileMethod::Put),
            "GET" => Some(FileMethod::Get),
            _ => None,
        }
    }
}

/// Why a path, key or prefix was refused. The message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty; give a file name such as results/run1.csv")]
    Empty,
    #[error("the path must be relative: remove the leading '/'")]
    Absolute,
    #[error("the path has an empty segment ('//' or a trailing '/'); remove it")]
    EmptySegment,
    #[error(
        "the path has a '.' or '..' segment (also when percent-encoded, like %2e%2e); name the file directly"
    )]
    DotSegment,
    #[error("the path has a backslash; use '/' between folders")]
    Backslash,
    #[error("the path has a control character (such as a NUL byte or a newline); remove it")]
    Control,
    #[error("the key would be {bytes} bytes; keys are at most {MAX_KEY_BYTES} bytes of UTF-8")]
    TooLong { bytes: usize },
    #[error(
        "the key must start with scripts/, data/, outputs/ or shared/ (per-user locations then the owner's email)"
    )]
    BadLocation,
}

/// Checks one `/`-separated relative path (the part after the namespace). A prefix may end with
/// `/` (`allow_trailing_slash`), a file path may not.
pub fn check_path(path: &str, allow_trailing_slash: bool) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let body = match path.strip_suffix('/') {
        Some(b) if allow_trailing_slash => b,
        _ => path,
    };
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let decoded = percent_decode(segment);
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.contains('/') || decoded.contains('\\') {
            return Err(PathError::Backslash);
        }
        if decoded.chars().any(char::is_control) {
            return Err(PathError::Control);
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes, leaving anything malformed as it is; only used to spot disguised
/// segments, never to rename a key.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A checked object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey {
    key: String,
    location: Location,
    /// The owner for per-user locations; `None` for `shared/`.
    owner: Option<Email>,
}

impl ObjectKey {
    /// `<location>/<owner>/<path>`, or `shared/<path>` (the owner is ignored there).
    pub fn build(location: Location, owner: &Email, path: &str) -> Result<Self, PathError> {
        check_path(path, false)?;
        let (key, owner) = if location.is_per_user() {
            (format!("{location}/{owner}/{path}"), Some(owner.clone()))
        } else {
            (format!("{location}/{path}"), None)
        };
        if key.len() > MAX_KEY_BYTES {
            return Err(PathError::TooLong { bytes: key.len() });
        }
        Ok(Self {
            key,
            location,
            owner,
        })
    }

    /// Reads a whole key as the listing returns it.
    pub fn parse(key: &str) -> Result<Self, PathError> {
        let (location, rest) = key.split_once('/').ok_or(PathError::BadLocation)?;
        let location = Location::parse(location).ok_or(PathError::BadLocation)?;
        if location.is_per_user() {
            let (owner, path) = rest.split_once('/').ok_or(PathError::BadLocation)?;
            let owner = Email::new(owner).map_err(|_| PathError::BadLocation)?;
            if owner.as_str() != owner_segment(rest) {
                // Email::new lowercases and trims; a key must already be in that form.
                return Err(PathError::BadLocation);
            }
            let built = Self::build(location, &owner, path)?;
            Ok(built)
        } else {
            Self::build(location, &dummy_owner(), rest)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn location(&self) -> Location {
        self.location
    }

    pub fn owner(&self) -> Option<&Email> {
        self.owner.as_ref()
    }

    /// The part after the namespace (`<location>/<owner>/` or `shared/`).
    pub fn path(&self) -> &str {
        let skip = self.location.as_str().len()
            + 1
            + self.owner.as_ref().map_or(0, |o| o.as_str().len() + 1);
        &self.key[skip..]
    }
}

fn owner_segment(rest: &str) -> &str {
    rest.split_once('/').map_or(rest, |(o, _)| o)
}

fn dummy_owner() -> Email {
    Email::new("nobody@clusterra.local")
        .unwrap_or_else(|e| unreachable!("a built-in address is valid: {e}"))
}

impl TryFrom<String> for ObjectKey {
    type Error = PathError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ObjectKey> for String {
    fn from(value: ObjectKey) -> Self {
        value.key
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The namespace a listing reads: `<location>/<caller>/<prefix>` or `shared/<prefix>`.
pub fn list_prefix(location: Location, caller: &Email, prefix: &str) -> Result<String, PathError> {
    if !prefix.is_empty() {
        check_path(prefix, true)?;
    }
    let full = if location.is_per_user() {
        format!("{location}/{caller}/{prefix}")
    } else {
        format!("{location}/{prefix}")
    };
    if full.len() > MAX_KEY_BYTES {
        return Err(PathError::TooLong { bytes: full.len() });
    }
    Ok(full)
}

/// Why an access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("{key} belongs to another user; you can only reach your own files and shared/")]
    NotYours { key: String },
    #[error("only workspace admins can write to shared/; upload to data/ instead, or ask an admin")]
    SharedIsAdminOnly,
}

/// What a caller wants to do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Read,
    Write,
    Delete,
}

impl From<FileMethod> for FileAction {
    fn from(m: FileMethod) -> Self {
        match m {
            FileMethod::Get => FileAction::Read,
            FileMethod::Put => FileAction::Write,
        }
    }
}

/// Who may do what: a per-user key only by its owner (admins included: an admin reads other
/// users' files through their own grants, not Clusterra's); `shared/` read by everyone, written
/// and deleted by admins.
pub fn authorize(
    caller: &Email,
    caller_is_admin: bool,
    key: &ObjectKey,
    action: FileAction,
) -> Result<(), AccessDenied> {
    match key.owner() {
        Some(owner) if owner == caller => Ok(()),
        Some(_) => Err(AccessDenied::NotYours {
            key: key.as_str().to_string(),
        }),
        None if action == FileAction::Read || caller_is_admin => Ok(()),
        None => Err(AccessDenied::SharedIsAdminOnly),
    }
}

/// A requested expiry that is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expires_in_seconds must be between 1 and {MAX_EXPIRY_SECONDS} (one hour); leave it out for {DEFAULT_EXPIRY_SECONDS} seconds"
)]
pub struct ExpiryOutOfRange;

/// When a URL issued at `now` stops working.
pub fn expiry(
    now: DateTime<Utc>,
    requested_seconds: Option<u64>,
) -> Result<(u64, DateTime<Utc>), ExpiryOutOfRange> {
    let seconds = requested_seconds.unwrap_or(DEFAULT_EXPIRY_SECONDS);
    if !(1..=MAX_EXPIRY_SECONDS).contains(&seconds) {
        return Err(ExpiryOutOfRange);
    }
    // At most an hour: always fits.
    Ok((seconds, now + Duration::seconds(seconds as i64)))
}

/// A `Content-Type` the uploader will have to send (it is signed into the URL).
pub fn check_content_type(ct: &str) -> bool {
    let Some((kind, sub)) = ct.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    let (sub, params) = sub.split_once(';').unwrap_or((sub, ""));
    ct.len() <= 255
        && token(kind)
        && token(sub.trim_end())
        && params
            .chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control())
}

/// What an upload may be: its size is signed into the URL (`Content-Length`), so the store
/// accepts exactly that many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// The largest upload (`max_upload_bytes`).
    pub max_upload_bytes: u64,
    /// The most bytes one user's keys may take in one bucket (`storage_quota_bytes`); `None`
    /// = no quota.
    pub quota_bytes: Option<u64>,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 5 * 1024 * 1024 * 1024,
            quota_bytes: Some(20 * 1024 * 1024 * 1024),
        }
    }
}

/// Why an upload is refused, at presign time or by the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadRefused {
    #[error(
        "the upload is {size} bytes; this server takes uploads of at most {max} bytes (max_upload_bytes)"
    )]
    TooLarge { size: u64, max: u64 },
    #[error(
        "the upload ({size} bytes) would bring {whose} files in this cluster's bucket to {after} bytes, over the quota of {quota} bytes (storage_quota_bytes); delete files first"
    )]
    OverQuota {
        whose: String,
        size: u64,
        after: u64,
        quota: u64,
    },
}

/// Whose quota a key counts against: its owner's (per-user locations), or the workspace's
/// `shared/` (written by admins), which has a quota of its own.
pub fn quota_holder(key: &ObjectKey) -> String {
    match key.owner() {
        Some(owner) => format!("{owner}'s"),
        None => "shared/'s".to_string(),
    }
}

/// The key prefixes whose objects count against the same quota as `key`.
pub fn quota_prefixes(key: &ObjectKey) -> Vec<String> {
    match key.owner() {
        Some(owner) => Location::ALL
            .into_iter()
            .filter(|l| l.is_per_user())
            .map(|l| format!("{l}/{owner}/"))
            .collect(),
        None => vec![format!("{}/", Location::Shared)],
    }
}

/// Checks an upload of `size` bytes to `key`, given what the quota's keys already take
/// (`used`) and the size of the object it replaces (`replaced`, 0 for a new key).
pub fn check_upload(
    limits: &UploadLimits,
    key: &ObjectKey,
    size: u64,
    used: u64,
    replaced: u64,
) -> Result<(), UploadRefused> {
    if size > limits.max_upload_bytes {
        return Err(UploadRefused::TooLarge {
            size,
            max: limits.max_upload_bytes,
        });
    }
    if let Some(quota) = limits.quota_bytes {
        let after = used.saturating_sub(replaced).saturating_add(size);
        if after > quota {
            return Err(UploadRefused::OverQuota {
                whose: quota_holder(key),
                size,
                after,
                quota,
            });
        }
    }
    Ok(())
}

/// Whether a workspace may point a cluster at `bucket`: it matches one of the operator's
/// `bucket_allow` patterns, where `*` is any run of characters, `?` one character, and
/// `{workspace}` the registering workspace's id (`lab-{workspace}-*`).
pub fn bucket_allowed(patterns: &[String], workspace: &str, bucket: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob(&p.replace("{workspace}", workspace), bucket))
}

/// `*` and `?` glob matching (no escapes: bucket names have neither).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_bounded_in_size_and_by_the_quota() {
        let limits = UploadLimits {
            max_upload_bytes: 100,
            quota_bytes: Some(250),
        };
        let ada = Email::new("ada@lab.org").unwrap();
        let key = ObjectKey::build(Location::Data, &ada, "x.csv").unwrap();
        assert_eq!(check_upload(&limits, &key, 100, 0, 0), Ok(()));
        assert_eq!(
            check_upload(&limits, &key, 101, 0, 0),
            Err(UploadRefused::TooLarge {
                size: 101,
                max: 100
            })
        );
        assert_eq!(check_upload(&limits, &key, 100, 150, 0), Ok(()));
        let over = check_upload(&limits, &key, 100, 151, 0).unwrap_err();
        assert!(
            matches!(
                over,
                UploadRefused::OverQuota {
                    after: 251,
                    quota: 250,
                    ..
                }
            ),
            "{over:?}"
        );
        assert!(over.to_string().contains("ada@lab.org's"), "{over}");
        // Replacing an object frees its bytes first.
        assert_eq!(check_upload(&limits, &key, 100, 240, 90), Ok(()));
        // No quota: only the size counts; huge numbers do not overflow.
        let open = UploadLimits {
            max_upload_bytes: u64::MAX,
            quota_bytes: None,
        };
        assert_eq!(check_upload(&open, &key, u64::MAX, u64::MAX, 0), Ok(()));
        let tight = UploadLimits {
            max_upload_bytes: u64::MAX,
            quota_bytes: Some(u64::MAX - 1),
        };
        assert!(check_upload(&tight, &key, u64::MAX, u64::MAX, 0).is_err());
        assert_eq!(
            quota_prefixes(&key),
            vec![
                "scripts/ada@lab.org/",
                "data/ada@lab.org/",
                "outputs/ada@lab.org/"
            ]
        );
        let shared = ObjectKey::parse("shared/ref/genome.fa").unwrap();
        assert_eq!(quota_prefixes(&shared), vec!["shared/"]);
    }

    #[test]
    fn bucket_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(bucket_allowed(&p(&["local"]), "default", "local"));
        assert!(!bucket_allowed(&p(&["local"]), "default", "local2"));
        assert!(!bucket_allowed(&p(&[]), "default", "local"));
        assert!(bucket_allowed(&p(&["acme-*"]), "w", "acme-gpu-east"));
        assert!(bucket_allowed(&p(&["acme-*"]), "w", "acme-"));
        assert!(!bucket_allowed(&p(&["acme-*"]), "w", "other-acme-x"));
        assert!(bucket_allowed(&p(&["*"]), "w", "anything"));
        assert!(bucket_allowed(&p(&["lab-??"]), "w", "lab-01"));
        assert!(!bucket_allowed(&p(&["lab-??"]), "w", "lab-001"));
        assert!(bucket_allowed(&p(&["a*b*c"]), "w", "axxbyyc"));
        assert!(!bucket_allowed(&p(&["a*b*c"]), "w", "axxbyy"));
        assert!(bucket_allowed(
            &p(&["x", "cl-{workspace}-*"]),
            "physics",
            "cl-physics-gpu"
        ));
        assert!(!bucket_allowed(
            &p(&["cl-{workspace}-*"]),
            "chem",
            "cl-physics-gpu"
        ));
    }

    fn ada() -> Email {
        Email::new("ada@lab.org").unwrap()
    }

    #[test]
    fn keys_are_namespaced_by_location_and_owner() {
        let k = ObjectKey::build(Location::Data, &ada(), "runs/a b+c.csv").unwrap();
        assert_eq!(k.as_str(), "data/ada@lab.org/runs/a b+c.csv");
        assert_eq!(k.path(), "runs/a b+c.csv");
        assert_eq!(k.owner(), Some(&ada()));
        let s = ObjectKey::build(Location::Shared, &ada(), "ref/genome.fa").unwrap();
        assert_eq!(s.as_str(), "shared/ref/genome.fa");
        assert_eq!(s.owner(), None);
        assert_eq!(s.path(), "ref/genome.fa");
        assert_eq!(ObjectKey::parse(k.as_str()).unwrap(), k);
        assert_eq!(ObjectKey::parse(s.as_str()).unwrap(), s);
    }

    #[test]
    fn path_tricks_are_refused() {
        let bad = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotSegment),
            ("a/../../x", PathError::DotSegment),
            ("./x", PathError::DotSegment),
            ("%2e%2e/x", PathError::DotSegment),
            ("%2E%2e/x", PathError::DotSegment),
            (".%2e/x", PathError::DotSegment),
            ("a//b", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("a\\..\\b", PathError::Backslash),
            ("a%2f..%2fb", PathError::Backslash),
            ("a\0b", PathError::Control),
            ("a%00b", PathError::Control),
            ("a\nb", PathError::Control),
        ];
        for (path, want) in bad {
            assert_eq!(
                ObjectKey::build(Location::Data, &ada(), path),
                Err(want),
                "{path:?}"
            );
        }
        // Dots inside names are fine, and so is a lone %.
        assert!(ObjectKey::build(Location::Data, &ada(), "v1.2/..hidden/x..y/100%").is_ok());
    }

    #[test]
    fn keys_are_at_most_1024_bytes() {
        let prefix = "data/ada@lab.org/".len();
        let fits = "é".repeat((MAX_KEY_BYTES - prefix) / 2);
        assert!(ObjectKey::build(Location::Data, &ada(), &fits).is_ok());
        let over = format!("{fits}xx");
        assert!(matches!(
            ObjectKey::build(Location::Data, &ada(), &over),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn parse_refuses_what_build_would_not_make() {
        for key in [
            "data",
            "tmp/ada@lab.org/x",
            "data/not-an-email/x",
            "data/Ada@lab.org/x",
            "data/ada@lab.org",
            "data/ada@lab.org/../bob@lab.org/x",
            "shared//x",
        ] {
            assert!(ObjectKey::parse(key).is_err(), "{key}");
        }
    }

    #[test]
    fn who_may_do_what() {
        let bob = Email::new("bob@lab.org").unwrap();
        let mine = ObjectKey::build(Location::Outputs, &ada(), "o.txt").unwrap();
        let shared = ObjectKey::build(Location::Shared, &ada(), "o.txt").unwrap();
        for action in [FileAction::Read, FileAction::Write, FileAction::Delete] {
            assert!(authorize(&ada(), false, &mine, action).is_ok());
            assert!(matches!(
                authorize(&bob, true, &mine, action),
                Err(AccessDenied::NotYours { .. })
            ));
            assert!(authorize(&bob, true, &shared, action).is_ok());
        }
        assert!(authorize(&bob, false, &shared, FileAction::Read).is_ok());
        assert_eq!(
            authorize(&bob, false, &shared, FileAction::Write),
            Err(AccessDenied::SharedIsAdminOnly)
        );
        assert_eq!(
            authorize(&bob, false, &shared, FileAction::Delete),
            Err(AccessDenied::SharedIsAdminOnly)
        );
    }

    #[test]
    fn expiry_defaults_to_15_minutes_and_caps_at_an_hour() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            expiry(now, None).unwrap(),
            (900, now + Duration::minutes(15))
        );
        assert_eq!(expiry(now, Some(3600)).unwrap().0, 3600);
        assert_eq!(expiry(now, Some(0)), Err(ExpiryOutOfRange));
        assert_eq!(expiry(now, Some(3601)), Err(ExpiryOutOfRange));
    }

    #[test]
    fn prefixes_and_content_types() {
        assert_eq!(
            list_prefix(Location::Data, &ada(), "runs/").unwrap(),
            "data/ada@lab.org/runs/"
        );
        assert_eq!(
            list_prefix(Location::Shared, &ada(), "").unwrap(),
            "shared/"
        );
        assert!(list_prefix(Location::Data, &ada(), "../").is_err());
        assert!(check_content_type("text/csv"));
        assert!(check_content_type("text/plain; charset=utf-8"));
        assert!(!check_content_type("text"));
        assert!(!check_content_type("text/csv\r\nX-Evil: 1"));
    }
}
