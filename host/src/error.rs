//! How failures reach the user: a mistake in what the user gave us is one line and exit code 2; anything else is a
//! failure of the run (exit code 1), still printed as one line with its causes.

use std::cell::{Cell, RefCell};
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

/// One line: the error and its causes joined, no backtrace (libtorch's errors from tch's fallible calls carry its
/// C++ frames after the message; they are cut off).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = without_cpp_frames(&cause.to_string()).to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// `text` up to where a libtorch error's C++ stack trace starts.
fn without_cpp_frames(text: &str) -> &str {
    let cut = ["\nException raised from ", "\nframe #0", " Exception raised from "]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    text[..cut].trim_end()
}

thread_local! {
    /// How many [`catch_panics`] scopes this thread is in: the panic hook stays quiet inside one.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// Where the last quiet panic on this thread happened (`file:line`), for its error line.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Make panics caught by [`catch_panics`] quiet: the default hook would print the panic message (for libtorch, its
/// C++ frames too) before the unwinding reaches the catch, which then reports it as one line. Panics elsewhere, or
/// with `RUST_BACKTRACE` set, still go to the default hook. Installed once by `grpo-host`'s `main`.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = CATCHING.with(Cell::get) > 0;
            if caught {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            }
            if !caught || std::env::var_os("RUST_BACKTRACE").is_some() {
                default(info);
            }
        }));
    });
}

/// Run `f`, turning a panic into an error. tch's operations panic when libtorch fails (out of memory above all, on
/// the GPU or the CPU): the error is then libtorch's message alone, first line only, without its C++ frames, and
/// for memory a hint at what uses less. Any other panic is an internal error, named with its place.
pub fn catch_panics<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    // The callers only report the error and then drop or finish what `f` was working on, so a half-done state is
    // never used as if whole.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    outcome.unwrap_or_else(|payload| {
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Err(from_panic(text, LOCATION.with(|l| l.borrow_mut().take())))
    })
}

/// The error a panic's message stands for.
fn from_panic(text: &str, location: Option<String>) -> anyhow::Error {
    // tch unwraps libtorch's error as `... Err value: Torch("MESSAGE\nframe #0: ...")`, the message Debug-escaped.
    let Some(start) = text.find("Torch(\"") else {
        let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
        return anyhow::anyhow!(
            "internal error{at}: {}; please report it (RUST_BACKTRACE=1 prints the backtrace)",
            text.replace('\n', " ")
        );
    };
    let message = &text[start + "Torch(\"".len()..];
    let mut first: &str = message.split("\\n").next().unwrap_or(message).trim_end_matches("\")").trim();
    // c10's checks prefix their message with where and what failed, e.g. `[enforce fail at alloc_cpu.cpp:127] err
    // == 0. `: noise beside the message itself.
    if first.starts_with("[enforce fail at") {
        if let Some(i) = first.find(". ") {
            first = &first[i + 2..];
        }
    }
    // A failure inside gradient checkpointing's recomputation comes back through libtorch already worded so.
    let first = first.trim_start_matches("libtorch failed: ");
    let lower = first.to_lowercase();
    let memory = ["out of memory", "can't allocate memory", "not enough memory"].iter().any(|m| lower.contains(m));
    let hint = if memory {
        "; less memory: smaller batches or fewer samples, shorter --max-new-tokens/--max-length, \
         --gradient-checkpointing, --mixed-precision bf16 or LoRA (--lora-rank)"
    } else {
        ""
    };
    anyhow::anyhow!("libtorch failed: {first}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_panic_becomes_its_first_line_and_a_memory_hint() {
        let cpu = r#"called `Result::unwrap()` on an `Err` value: Torch("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 64 bytes. Error code 12 (Cannot allocate memory)\nframe #0: c10::ThrowEnforceNotMet(...)\n")"#;
        let err = catch_panics::<()>(|| panic!("{cpu}")).unwrap_err().to_string();
        assert!(err.starts_with("libtorch failed: DefaultCPUAllocator: can't allocate memory: you tried"), "{err}");
        assert!(!err.contains("frame #") && !err.contains("enforce"), "{err}");
        assert!(err.contains("--gradient-checkpointing"), "{err}");
        let cuda = r#"called `Result::unwrap()` on an `Err` value: Torch("CUDA out of memory. Tried to allocate 2.00 GiB.\nException raised from malloc")"#;
        let err = from_panic(cuda, None).to_string();
        assert!(
            err.starts_with("libtorch failed: CUDA out of memory. Tried to allocate 2.00 GiB.; less memory"),
            "{err}"
        );
        // Other libtorch failures carry no hint; one from the recomputation is not named twice.
        let shape = r#"Torch("libtorch failed: shape '[2, 3]' is invalid for input of size 5\nframe")"#;
        assert_eq!(
            from_panic(shape, None).to_string(),
            "libtorch failed: shape '[2, 3]' is invalid for input of size 5"
        );
    }

    #[test]
    fn one_line_drops_libtorchs_cpp_frames() {
        let torch = "wait timeout after 5000ms, keys: /default_pg//0/1\nException raised from doWait at \
                     /pytorch/torch/csrc/distributed/c10d/TCPStore.cpp:603 (most recent call first):\nframe #0: \
                     c10::Error::Error(...)";
        let err = anyhow::anyhow!(torch.to_string()).context("rank 0: joining the process group failed");
        assert_eq!(
            one_line(&err),
            "rank 0: joining the process group failed: wait timeout after 5000ms, keys: /default_pg//0/1"
        );
        let enforce = anyhow::anyhow!("[enforce fail at x.cpp:1] bad\nframe #0: f()\nframe #1: g()");
        assert_eq!(one_line(&enforce), "[enforce fail at x.cpp:1] bad");
    }

    #[test]
    fn any_other_panic_is_an_internal_error_with_its_place() {
        install_panic_hook();
        let err = catch_panics::<()>(|| panic!("index out of bounds")).unwrap_err().to_string();
        assert!(err.starts_with("internal error at host/src/error.rs:"), "{err}");
        assert!(err.contains("index out of bounds; please report it"), "{err}");
        assert_eq!(catch_panics(|| Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_started_run_that_fails_exits_1_even_when_a_plugin_error_is_worded_as_a_user_error() {
        let plugin = crate::user_error!("algorithm `faulty` failed in loss: injected");
        assert_eq!(exit_code(&plugin), 2);
        let failed = plugin.context(RunFailed("batch 5 failed; resume with ...".into()));
        assert_eq!(exit_code(&failed), 1);
        assert_eq!(one_line(&failed), "batch 5 failed; resume with ...: algorithm `faulty` failed in loss: injected");
    }
}
