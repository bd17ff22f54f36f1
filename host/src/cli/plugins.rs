//! `grpo-host plugins list` and `grpo-host plugins check FILE`.

use crate::plugins::{check, DiscoveryOptions, Registry};
use crate::user_error;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where to look for plugins besides the default places; shared by every command that loads plugins.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
pub struct PluginDirArgs {
    /// A directory of plugin libraries, searched before GRPO_PLUGIN_PATH, the executable's directory and the
    /// per-user plugin directory. Repeatable.
    #[arg(long = "plugin-dir", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
}

impl PluginDirArgs {
    /// The normal discovery with these directories first.
    pub fn discovery(&self) -> DiscoveryOptions {
        DiscoveryOptions::new(self.plugin_dirs.clone())
    }
}

/// `grpo-host plugins ...`.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins found: name, kind, version and file.
    List(PluginDirArgs),
    /// Load one plugin library, validate it and call each of its plugins once on tiny inputs.
    Check {
        /// The library file (for example target/release/libgrpo_grpo.so).
        file: PathBuf,
        /// JSON config given to each plugin's constructor (default: none, so each uses its defaults).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
}

/// Run a `plugins` subcommand; returns the exit code.
pub fn run(args: PluginsArgs) -> anyhow::Result<i32> {
    match args.command {
        PluginsCommand::List(dirs) => {
            let registry = Registry::discover(&dirs.discovery())?;
            let plugins: Vec<_> = registry.plugins().collect();
            if plugins.is_empty() {
                let searched: Vec<String> = registry.searched_dirs().iter().map(|d| d.display().to_string()).collect();
                println!(
                    "no plugins found (searched: {}); build them with `cargo build --release` or pass --plugin-dir DIR",
                    if searched.is_empty() { "nothing".into() } else { searched.join(", ") }
                );
                return Ok(0);
            }
            let width = plugins.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
            println!("{:width$}  {:11}  {:8}  FILE", "NAME", "KIND", "VERSION");
            for p in plugins {
                println!("{:width$}  {:11}  {:8}  {}", p.name, p.kind.to_string(), p.version, p.file.display());
            }
            Ok(0)
        }
        PluginsCommand::Check { file, config } => {
            let config = match config {
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    user_error!("--config: not valid JSON ({e}); example: --config '{{\"numeric\": true}}'")
                })?,
                None => serde_json::Value::Null,
            };
            for line in check::check_file(&file, &config)? {
                println!("{line}");
            }
            Ok(0)
        }
    }
}
