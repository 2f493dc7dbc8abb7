//! What a cluster registration may say: the rules for its id, name, region, bucket and slurmrestd
//! endpoint. The API parses the request into [`Registration`] and the command records it.

use crate::submit::FieldError;
use crate::{ClusterId, SlurmEndpoint};

/// The longest slurmrestd URL a cluster may have.
const MAX_URL_LEN: usize = 2_048;

/// The only slurmrestd API version this build speaks.
pub const SLURM_API_VERSION: &str = "v0.0.44";

/// A registration as a caller sent it.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub region: &'a str,
    pub bucket: &'a str,
    pub slurm_url: &'a str,
    pub slurm_user: &'a str,
    pub slurm_api_version: &'a str,
}

/// A registration that passed [`Registration::parse`], normalised (name trimmed, the URL without a
/// trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFields {
    pub id: ClusterId,
    pub name: String,
    pub region: String,
    pub bucket: String,
    pub slurm: SlurmEndpoint,
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        code: "invalid_field",
        field: field.into(),
        message: message.into(),
    }
}

impl Registration<'_> {
    /// Checks every field; the first problem is reported with its field and how to fix it.
    pub fn parse(self) -> Result<ClusterFields, FieldError> {
        let id = ClusterId::new(self.id).map_err(|e| invalid("id", e.to_string()))?;
        if !valid_text(self.name, 100) {
            return Err(invalid("name", "name must be 1-100 printable characters"));
        }
        let region_ok = (1..=32).contains(&self.region.len())
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(invalid(
                "region",
                "region must be 1-32 of a-z 0-9 -, like us-east-1",
            ));
        }
        if !valid_bucket(self.bucket) {
            return Err(invalid(
                "bucket",
                "bucket must be an S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit",
            ));
        }
        if self.slurm_url.len() > MAX_URL_LEN {
            return Err(invalid(
                "slurm.url",
                format!("slurm.url must be at most {MAX_URL_LEN} characters"),
            ));
        }
        if !url_in_documented_form(self.slurm_url) {
            return Err(invalid(
                "slurm.url",
                "slurm.url must be an http:// or https:// URL with a host and no query, like https://slurm.example.org:6820",
            ));
        }
        let user_ok = (1..=32).contains(&self.slurm_user.len())
            && self
                .slurm_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !user_ok {
            return Err(invalid(
                "slurm.user",
                "slurm.user must be a Unix user name: 1-32 of a-z A-Z 0-9 . _ -",
            ));
        }
        if self.slurm_api_version != SLURM_API_VERSION {
            return Err(invalid(
                "slurm.api_version",
                format!(
                    "only slurmrestd {SLURM_API_VERSION} is supported; send \"{SLURM_API_VERSION}\" or leave it out"
                ),
            ));
        }
        Ok(ClusterFields {
            id,
            name: self.name.trim().to_string(),
            region: self.region.to_string(),
            bucket: self.bucket.to_string(),
            slurm: SlurmEndpoint {
                url: self.slurm_url.trim_end_matches('/').to_string(),
                user: self.slurm_user.to_string(),
                api_version: self.slurm_api_version.to_string(),
            },
        })
    }
}

/// The documented form of a slurmrestd URL (`^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$`):
/// a host name or address, a port, a path — no user info, no query, no other characters.
fn url_in_documented_form(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority.split_once(':').unwrap_or((authority, "1"));
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && port.chars().all(|c| c.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~/-".contains(c))
}

/// An S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit, no `..`.
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..")
}

fn valid_text(s: &str, max: usize) -> bool {
    let t = s.trim();
    !t.is_empty() && t.chars().count() <= max && !t.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration() -> Registration<'static> {
        Registration {
            id: "gpu-east",
            name: " GPU cluster ",
            region: "us-east-1",
            bucket: "acme-gpu-east",
            slurm_url: "https://slurm.example.org:6820/",
            slurm_user: "clusterra",
            slurm_api_version: SLURM_API_VERSION,
        }
    }

    #[test]
    fn a_valid_registration_is_normalised() {
        let fields = registration().parse().unwrap();
        assert_eq!(fields.name, "GPU cluster");
        assert_eq!(fields.slurm.url, "https://slurm.example.org:6820");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = fn(&mut Registration<'static>);
        let cases: [(&str, Spoil); 8] = [
            ("id", |r| r.id = "Bad Id"),
            ("name", |r| r.name = "  "),
            ("region", |r| r.region = "US_EAST"),
            ("bucket", |r| r.bucket = "a..b"),
            ("slurm.url", |r| r.slurm_url = "http://slurm?x=1"),
            ("slurm.url", |r| {
                r.slurm_url = format!("https://slurm/{}", "a".repeat(MAX_URL_LEN)).leak()
            }),
            ("slurm.user", |r| r.slurm_user = "root user"),
            ("slurm.api_version", |r| r.slurm_api_version = "v0.0.40"),
        ];
        for (field, spoil) in cases {
            let mut r = registration();
            spoil(&mut r);
            assert_eq!(r.parse().unwrap_err().field, field);
        }
    }

    #[test]
    fn slurm_urls_must_have_the_documented_form() {
        for ok in [
            "http://slurm",
            "https://slurm.example.org:6820",
            "http://10.0.0.5:6820/",
            "https://h.example.org/slurm/api",
        ] {
            assert!(url_in_documented_form(ok), "{ok}");
        }
        for bad in [
            "http://zqNgi*",
            "ftp://slurm",
            "http://user@slurm",
            "http://slurm:",
            "http://slurm:123456",
            "http://slurm:99999",
            "http://slurm:0",
            "http://slurm/a b",
            "http://",
            "http://slurm?x=1",
        ] {
            assert!(!url_in_documented_form(bad), "{bad}");
        }
    }
}
