//! Why the server could not start, or its settings could not be loaded.

/// Boxed cause of a [`Error::Start`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (or a command-line value) is wrong; the sentence says which and how to fix it.
    #[error("{0}")]
    Settings(String),
    /// Something the server needs could not be opened or started: `what` says what, the
    /// source why.
    #[error("{what}")]
    Start {
        what: String,
        #[source]
        source: Cause,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A settings error from a sentence.
    pub fn settings(message: impl Into<String>) -> Self {
        Self::Settings(message.into())
    }
}

/// `.context(…)` / `.with_context(…)`: says what was being done when an outside error happened.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Cause>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Start {
            what: what.into(),
            source: e.into(),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Start {
            what: what().into(),
            source: e.into(),
        })
    }
}

/// Returns a [`Error::Settings`] with the formatted sentence unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::Settings(format!($($msg)+)));
        }
    };
}

/// Returns a [`Error::Settings`] with the formatted sentence.
macro_rules! bail {
    ($($msg:tt)+) => {
        return Err($crate::error::Error::Settings(format!($($msg)+)))
    };
}

pub(crate) use {bail, ensure};
