//! `unionmount image …` and `unionmount commit`: thin wrappers over the layerstore crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List images.
    Ls,
}

#[derive(Args)]
pub struct CommitArgs {
    /// Upper directory or container
    pub source: PathBuf,
    /// Name of the new image
    #[arg(long)]
    pub tag: String,
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Ls => anyhow::bail!("image ls: the layer store is not built yet"),
    }
}

pub fn commit(args: CommitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("commit {}: the layer store is not built yet", args.source.display())
}
