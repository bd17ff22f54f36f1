//! The command line. `grpo-host [train] --algo A --env E` trains (the default command); the other subcommands each
//! live in their own file beside this one.

pub mod play;
pub mod plugins;

use clap::{Parser, Subcommand};

/// grpo-rs: GRPO-family reinforcement learning of language models, with algorithms and environments as plugins.
#[derive(Debug, Parser)]
#[command(
    name = "grpo-host",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Print the version, the libtorch version and whether CUDA is available, then exit.
    #[arg(short = 'V', long = "version", global = true)]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; training is the default when none is given.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List plugins, or check one plugin library.
    Plugins(plugins::PluginsArgs),
    /// Play one episode of an environment with scripted assistant replies and show turns and rewards.
    Play(play::PlayArgs),
}

/// Parse the process arguments; clap prints usage errors itself with exit code 2.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if cli.version {
        println!("{}", crate::runtime::version_line());
        return Ok(0);
    }
    match cli.command {
        None => {
            println!("{}", crate::runtime::version_line());
            Ok(0)
        }
        Some(Command::Plugins(args)) => plugins::run(args),
        Some(Command::Play(args)) => play::run(args),
    }
}
