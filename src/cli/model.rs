//! `intelligent-video model pull|list|rm`: the model store from the command line. The store folder
//! and the default model come from the daemon's configuration unless given.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Config, ConfigOverrides};
use crate::store;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ModelCommand {
    /// Download a Hugging Face checkpoint (default: the configured model) into the model store, or
    /// install it from a local copy of its folder (--from).
    Pull {
        /// ORG/NAME (default: `model` from the configuration).
        id: Option<String>,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Hub endpoint.
        #[arg(long, env = "HF_ENDPOINT", default_value = store::DEFAULT_ENDPOINT)]
        endpoint: String,
        /// Install from this local model folder (config.json, preprocessor_config.json,
        /// model.safetensors, the tokenizer files) instead of the hub.
        #[arg(long, value_name = "DIR", conflicts_with = "revision")]
        from: Option<PathBuf>,
        /// Do nothing when the model is already installed.
        #[arg(long)]
        if_missing: bool,
        #[command(flatten)]
        place: StoreArgs,
    },
    /// List installed models.
    List {
        #[command(flatten)]
        place: StoreArgs,
    },
    /// Remove an installed model.
    Rm {
        /// ORG/NAME
        id: String,
        #[command(flatten)]
        place: StoreArgs,
    },
}

/// Where the store is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model store folder (default: `model_store` from the configuration).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

fn resolve(place: &StoreArgs) -> anyhow::Result<(PathBuf, Config)> {
    let cfg = Config::load(place.config.as_deref(), &ConfigOverrides::default())
        .context("invalid configuration")?;
    Ok((
        place
            .store
            .clone()
            .unwrap_or_else(|| cfg.model_store.clone()),
        cfg,
    ))
}

/// Runs a model command; prints its result on stdout.
pub fn run(cmd: &ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pull {
            id,
            revision,
            endpoint,
            from,
            if_missing,
            place,
        } => {
            let (dir, cfg) = resolve(place)?;
            let id = id.clone().unwrap_or(cfg.model);
            if *if_missing && store::is_installed(&dir, &id)? {
                eprintln!("{id} is already installed in {}", dir.display());
                return Ok(());
            }
            if let Some(src) = from {
                let copied = store::copy_from(&dir, &id, src)
                    .with_context(|| format!("cannot install {id} from {}", src.display()))?;
                println!("{}", serde_json::to_string_pretty(&copied)?);
                return Ok(());
            }
            let tty = std::io::stderr().is_terminal();
            let progress = |file: &str, done: u64, total: u64| {
                if tty {
                    let mb = |b: u64| b as f64 / 1_048_576.0;
                    eprint!("\r{file}: {:.1} / {:.1} MiB   ", mb(done), mb(total));
                }
            };
            let pulled = store::pull(&dir, &id, revision, endpoint, &progress)
                .with_context(|| format!("cannot pull {id}"))?;
            if tty {
                eprintln!();
            }
            println!("{}", serde_json::to_string_pretty(&pulled)?);
        }
        ModelCommand::List { place } => {
            let (dir, _) = resolve(place)?;
            for (id, size, rev) in store::list(&dir) {
                println!(
                    "{id}\t{:.1} MiB\t{}",
                    size as f64 / 1_048_576.0,
                    rev.unwrap_or_else(|| "-".into())
                );
            }
        }
        ModelCommand::Rm { id, place } => {
            let (dir, _) = resolve(place)?;
            let removed = store::remove(&dir, id)?;
            println!("removed {}", removed.display());
        }
    }
    Ok(())
}
