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

/// A training run that started and then failed: exit code 1 even when a cause is a [`UserError`] (a plugin call's
/// failure is worded as one), because the fix is a resume, not a corrected command line. Attach it as the outermost
/// context.
#[derive(Debug)]
pub struct RunFailed(pub String);

impl fmt::Display for RunFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The exit code for an error: 1 for a run that failed once started, 2 when the user can fix it, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<RunFailed>().is_some() {
        1
    } else if err.chain().any(|e| e.is::<UserError>()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_run_that_fails_exits_1_even_when_a_plugin_error_is_worded_as_a_user_error() {
        let plugin = crate::user_error!("algorithm `faulty` failed in loss: injected");
        assert_eq!(exit_code(&plugin), 2);
        let failed = plugin.context(RunFailed("batch 5 failed; resume with ...".into()));
        assert_eq!(exit_code(&failed), 1);
        assert_eq!(one_line(&failed), "batch 5 failed; resume with ...: algorithm `faulty` failed in loss: injected");
    }
}
