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
    "run",
    "create",
    "start",
    "stop",
    "ps",
    "rm",
    "export",
    "import",
    "bench",
    "bundle",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

pub fn is_subcommand(first: Option<&OsString>) -> bool {
    // No arguments at all: clap's usage, not a mount error.
    first.is_none_or(|a| SUBCOMMANDS.iter().any(|s| a == s))
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
    /// Run a command in a new container of an image.
    Run(crate::container::RunArgs),
    /// Make a container without starting it; prints its id.
    Create(crate::container::RunArgs),
    /// Run a created (or ended) container in the foreground.
    Start {
        /// Container name or id
        container: String,
        #[command(flatten)]
        store: crate::image_cmd::StoreArg,
    },
    /// Stop a running container: SIGTERM to its pid 1, SIGKILL after a while.
    Stop {
        /// Container name or id
        container: String,
        /// Seconds to wait before SIGKILL
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[command(flatten)]
        store: crate::image_cmd::StoreArg,
    },
    /// List running containers (all with -a).
    Ps {
        /// Also containers that are not running
        #[arg(short = 'a', long = "all")]
        all: bool,
        #[command(flatten)]
        store: crate::image_cmd::StoreArg,
    },
    /// Remove containers, cleaning after runners that were killed.
    Rm {
        /// Container names or ids
        #[arg(required = true)]
        containers: Vec<String>,
        /// Kill a running container first
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[command(flatten)]
        store: crate::image_cmd::StoreArg,
    },
    /// Write a container (its image, its changes, its settings) to an OCI archive.
    Export(crate::transfer::ExportArgs),
    /// Make a container from an archive written by `export` (into this store).
    Import(crate::transfer::ImportArgs),
    /// Make an OCI runtime bundle (config.json + rootfs mounted by unionmount) for runc.
    Bundle(crate::bundle::BundleArgs),
    /// Time the same workloads on unionmount, kernel overlayfs, FUSE peers and a plain directory.
    Bench(crate::bench::BenchArgs),
}

pub fn run(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let cli = Cli::parse_from(std::iter::once(OsString::from("unionmount")).chain(args));
    match cli.command {
        Command::Umount { mountpoint } => crate::mount::unmount(&mountpoint),
        Command::Image(cmd) => crate::image_cmd::run(cmd),
        Command::Commit(args) => crate::image_cmd::commit(args),
        Command::Run(args) => crate::container::run(args),
        Command::Create(args) => crate::container::create_cmd(args),
        Command::Start { container, store } => crate::container::start_cmd(&store, &container),
        Command::Stop {
            container,
            time,
            store,
        } => crate::container::stop_cmd(&store, &container, time),
        Command::Ps { all, store } => crate::container::ps(&store, all),
        Command::Rm {
            containers,
            force,
            store,
        } => crate::container::rm(&store, &containers, force),
        Command::Export(args) => crate::transfer::export(args),
        Command::Import(args) => crate::transfer::import(args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Bundle(args) => crate::bundle::run(args),
    }
}
