//! What was being done when something failed, kept with the failure: [`Context::context`] turns any
//! error (or a missing value) into a [`Failed`] that names the step, and keeps the original error as its
//! `source()` (a `kube::Error` stays a `kube::Error`, see [`Failed::kube`]). Each library crate's error
//! enum wraps `Failed` in a variant of its own; binaries print the chain.

use std::error::Error as StdError;
use std::fmt;

/// A failed step: what was being done, and why it failed.
#[derive(Debug)]
pub struct Failed {
    /// What was being done (names the object, file or field, and the fix where there is one).
    pub what: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Failed {
    /// A failure with no underlying error (a missing value, a refused answer).
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// The apiserver error underneath, if that is what failed.
    pub fn kube(&self) -> Option<&kube::Error> {
        self.source.as_deref()?.downcast_ref()
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl StdError for Failed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// Names the step that failed.
pub trait Context<T> {
    /// The failure, as a [`Failed`] saying `what` was being done.
    fn context(self, what: impl Into<String>) -> Result<T, Failed>;
    /// Like [`Context::context`], the text built only on failure.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed>;
}

impl<T, E> Context<T> for Result<T, E>
where
    E: StdError + Send + Sync + 'static,
{
    fn context(self, what: impl Into<String>) -> Result<T, Failed> {
        self.map_err(|e| Failed {
            what: what.into(),
            source: Some(Box::new(e)),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed> {
        self.map_err(|e| Failed {
            what: what().into(),
            source: Some(Box::new(e)),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T, Failed> {
        self.ok_or_else(|| Failed::new(what))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed> {
        self.ok_or_else(|| Failed::new(what()))
    }
}

/// One line for an operator: the error and each cause beneath it that its text does not already say
/// (errors here name their cause in their own message, and also return it as `source()`).
pub fn report(e: &(dyn StdError + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_and_the_source_are_both_kept() {
        let e = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing /etc/x")
            .unwrap_err();
        assert_eq!(e.to_string(), "writing /etc/x: disk full");
        assert_eq!(e.source().unwrap().to_string(), "disk full");
        assert!(e.kube().is_none());

        let api = kube::Error::Api(
            kube::core::Status::failure("nope", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        let e = Err::<(), _>(api)
            .with_context(|| "reading Secret a/b")
            .unwrap_err();
        assert!(e.to_string().starts_with("reading Secret a/b: "), "{e}");
        assert!(matches!(e.kube(), Some(kube::Error::Api(s)) if s.code == 403));

        let e = None::<u8>
            .context("spec.peer is missing; fix: peer again")
            .unwrap_err();
        assert_eq!(e.to_string(), "spec.peer is missing; fix: peer again");
        assert!(e.source().is_none());
    }
}
