//! Running the tools setup and test drive (pip, python, cargo), with their output shown live and the gist of a
//! failure kept for a one-line error.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// A step of a long task, announced before it starts so the user knows what is happening and where.
pub struct Step {
    what: String,
    detail: String,
}

impl Step {
    pub fn new(what: &str, detail: &str) -> Self {
        Step { what: what.to_string(), detail: detail.to_string() }
    }

    pub fn announce(&self) {
        if self.detail.is_empty() {
            println!("==> {}", self.what);
        } else {
            println!("==> {} [{}]", self.what, self.detail);
        }
    }
}

/// Run `cmd` with stdout shown as it comes and stderr both shown and remembered; on failure, fail with `hint` and
/// the last meaningful line the tool printed on stderr.
pub fn run_checked(cmd: &mut Command, hint: &str) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{hint} (could not start `{program}`)"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "{line}");
        if !line.trim().is_empty() {
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let last = tail
            .iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error"))
            .or(tail.back())
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        if last.is_empty() {
            bail!("{hint} (`{program}` exited with {status})");
        }
        bail!("{hint} (`{program}`: {last})");
    }
    Ok(())
}

/// Run cargo with the given arguments from the repository root; fail naming the step.
pub fn cargo(args: &[&str], what: &str) -> Result<()> {
    Step::new(what, &format!("cargo {}", args.join(" "))).announce();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status =
        Command::new(cargo).args(args).current_dir(crate::paths::repo_root()).status().context("running cargo")?;
    if !status.success() {
        bail!("{what} failed (cargo {})", args.join(" "));
    }
    Ok(())
}
