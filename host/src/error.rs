//! How failures reach the user: a mistake in what the user gave us is one line and exit code 2; anything else is a
//! failure of the run (exit code 1), still printed as one line with its causes.

use std::fmt;

/// A mistake the user can fix (a bad flag, a missing file, an unknown plugin). Printed as one line, exit code 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Build a [`UserError`] wrapped in `anyhow`, with `format!` arguments.
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::UserError(format!($($arg)*)))
    };
}

/// The exit code for an error: 2 when the user can fix it, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UserError>()) {
        2
    } else {
        1
    }
}

/// One line: the error and its causes joined, no backtrace.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}
