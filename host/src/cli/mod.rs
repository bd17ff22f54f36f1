//! The command line. `grpo-host [train] --algo A --env E` trains (the default command); the other subcommands each
//! live in their own file beside this one.

pub mod args;
pub mod config_file;
pub mod eval;
pub mod gen_qa;
pub mod generate;
pub mod play;
pub mod plugins;
pub mod report;
pub mod sft;
pub mod train;
pub mod trl_flags;

use clap::{Parser, Subcommand};

/// grpo-rs: GRPO-family reinforcement learning of language models, with algorithms and environments as plugins.
#[derive(Debug, Parser)]
#[command(
    name = "grpo-host",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Print the version, the libtorch version and whether CUDA is available, then exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    /// Training flags when no subcommand is given (`grpo-host --algo drgrpo --env calc_tools`).
    #[command(flatten)]
    pub train: train::TrainArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; training is the default when none is given.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a policy (the default command).
    Train(Box<train::TrainArgs>),
    /// Sample text from a model (streams with -n 1; --json for ids, log-probs and tokens/s).
    Generate(generate::GenerateArgs),
    /// List plugins, or check one plugin library.
    Plugins(plugins::PluginsArgs),
    /// Play one episode of an environment with scripted assistant replies and show turns and rewards.
    Play(play::PlayArgs),
    /// Generate question-answer pairs for multiturn_qa from a corpus with a model (resumable).
    GenQa(gen_qa::GenQaArgs),
    /// Supervised fine-tuning on rows in TRL's dataset formats (conversations or plain text) or on an environment's
    /// demonstrations.
    Sft(Box<sft::SftArgs>),
    /// Score a checkpoint or model on an environment's held-out tasks (greedy and pass@k) and write a JSON summary.
    Eval(Box<eval::EvalArgs>),
    /// Plot a run's returns, loss, KL, grad norm and completion length from its metrics.jsonl, and summarise it.
    Report(report::ReportArgs),
}

/// Parse the process arguments (`--config FILE` expanded, then TRL's spellings turned into flags, the file's
/// included); clap prints usage errors itself with exit code 2.
pub fn parse() -> anyhow::Result<Cli> {
    let normalized = trl_flags::normalize(config_file::expand(std::env::args_os().collect())?)?;
    let cli = Cli::try_parse_from(normalized.argv).unwrap_or_else(|e| e.exit());
    // Once the command line is known to be good; every rank of a torchrun job reads the same one, so rank 0 says it.
    if !matches!(crate::distributed::Launch::from_env(), Ok(Some(launch)) if launch.rank != 0) {
        for note in normalized.notes {
            eprintln!("{note}");
        }
    }
    Ok(cli)
}

/// The clap command `argv` (program name first) runs: the subcommand it names, or training's flags at the top
/// level. The command-line rewrites before parsing (`--config`, TRL's spellings) read its flags.
fn command_of(argv: &[std::ffi::OsString]) -> clap::Command {
    let cli = <Cli as clap::CommandFactory>::command();
    let name = argv.get(1).and_then(|a| a.to_str());
    name.and_then(|name| cli.find_subcommand(name)).cloned().unwrap_or(cli)
}

/// The argument of `command` whose long name or alias is `long` (without its dashes).
fn flag_named<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|n| n.contains(&long)))
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if cli.version {
        println!("{}", crate::runtime::version_line());
        return Ok(0);
    }
    match cli.command {
        None => crate::train::run(cli.train.into_config()?),
        Some(Command::Train(args)) => crate::train::run(args.into_config()?),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Plugins(args)) => plugins::run(args),
        Some(Command::Play(args)) => play::run(args),
        Some(Command::Report(args)) => report::run(&args),
        Some(Command::GenQa(args)) => gen_qa::run(args),
        Some(Command::Sft(args)) => crate::sft::run::run(args.into_config()?),
        Some(Command::Eval(args)) => eval::run(*args),
    }
}
