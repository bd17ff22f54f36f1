//! `grpo-host`: the command-line entry point. Parses the command line, runs the command, and turns any error, or a
//! panic (how libtorch's failures reach Rust), into one line on stderr with a meaningful exit code.

use grpo_host::{cli, error};

fn main() {
    error::install_panic_hook();
    grpo_host::runtime::init_logging();
    let outcome = error::catch_panics(|| cli::parse().and_then(cli::run));
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {}", error::one_line(&err));
            std::process::exit(error::exit_code(&err));
        }
    }
}
