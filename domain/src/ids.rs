//! Typed ids. Each is validated where it is made, so the rest of the code can trust it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} {value:?} is not valid: {rule}")]
    Invalid {
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const RULE: &'static str =
                "use 1-63 characters: lowercase letters, digits and '-', starting with a letter";

            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                if is_slug(&value) {
                    Ok(Self(value))
                } else {
                    Err(IdError::Invalid { kind: $kind, value, rule: Self::RULE })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn is_slug(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

slug_id!(
    /// A workspace: one research team's account.
    WorkspaceId,
    "workspace id"
);
slug_id!(
    /// A cluster within a workspace, e.g. `local`.
    ClusterId,
    "cluster id"
);

/// A user's email, lowercased. Deliberately strict: it becomes a file-key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const RULE: &'static str =
        "use a plain address like ada@lab.org (letters, digits, . _ + - before the @)";

    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into().trim().to_ascii_lowercase();
        let valid = value.len() <= 254
            && match value.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && domain
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
                }
                None => false,
            };
        if valid {
            Ok(Self(value))
        } else {
            Err(IdError::Invalid {
                kind: "email",
                value,
                rule: Self::RULE,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(ClusterId::new("local").is_ok());
        assert!(ClusterId::new("gpu-2").is_ok());
        assert!(ClusterId::new("").is_err());
        assert!(ClusterId::new("2fast").is_err());
        assert!(ClusterId::new("Local").is_err());
        assert!(WorkspaceId::new("../etc").is_err());
        assert!(WorkspaceId::new("a".repeat(64)).is_err());
    }

    #[test]
    fn emails_are_normalised_and_strict() {
        assert_eq!(Email::new(" Ada@Lab.org ").unwrap().as_str(), "ada@lab.org");
        assert!(Email::new("ada").is_err());
        assert!(Email::new("ada@lab").is_err());
        assert!(Email::new("../x@lab.org").is_err());
        assert!(Email::new("a/b@lab.org").is_err());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<ClusterId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<ClusterId>("\"not ok\"").is_err());
    }
}
