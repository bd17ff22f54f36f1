//! The error type plugins return. It is a message, because all the host does with it is show it to the user.

use std::fmt;

/// A plugin's error: one message for the user, naming what went wrong and, where possible, how to fix it.
///
/// Any standard error converts into it, so `?` works on `tch`, `serde_json` and `std::io` results:
///
/// ```
/// fn parse(text: &str) -> grpo_sdk::Result<i64> {
///     Ok(text.trim().parse::<i64>()?)
/// }
/// assert_eq!(parse(" 7 ").unwrap(), 7);
/// assert!(parse("x").unwrap_err().to_string().contains("invalid digit"));
/// ```
pub struct Error {
    message: String,
}

/// The result type of every plugin method.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error { message: message.to_string() }
    }

    /// The same error with `context` in front, as in "reading data.jsonl: file not found".
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message) }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// Not `std::error::Error` on purpose: that would conflict with the blanket conversion below (as in `anyhow`).
impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error::msg(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}
