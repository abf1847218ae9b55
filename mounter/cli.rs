//! clap definitions for the subcommands. Each command calls one function elsewhere.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Subcommand names; any other first word starts a mount.
const SUBCOMMANDS: &[&str] = &[
    "umount",
    "image",
    "commit",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

pub fn is_subcommand(first: Option<&OsString>) -> bool {
    first.is_some_and(|a| SUBCOMMANDS.iter().any(|s| a == s))
}

#[derive(Parser)]
#[command(
    name = "unionmount",
    version,
    about = "Union filesystem in userspace, layer store and container runner",
    after_help = "Mounting:\n  unionmount -o lowerdir=A:B,upperdir=U,workdir=W MNT\n  unionmount -o cow UPPER=RW:LOWER=RO MNT\n  unionmount SRC MNT -o OPTIONS   (as started by mount -t fuse.unionmount)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Unmount a unionmount mount; its daemon exits.
    Umount {
        /// The mountpoint
        mountpoint: PathBuf,
    },
    /// Images in the layer store.
    #[command(subcommand)]
    Image(crate::image_cmd::ImageCommand),
    /// Turn a container's changes (an upper directory) into a new image layer.
    Commit(crate::image_cmd::CommitArgs),
}

pub fn run(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let cli = Cli::parse_from(std::iter::once(OsString::from("unionmount")).chain(args));
    match cli.command {
        Command::Umount { mountpoint } => crate::mount::unmount(&mountpoint),
        Command::Image(cmd) => crate::image_cmd::run(cmd),
        Command::Commit(args) => crate::image_cmd::commit(args),
    }
}
