//! The command line: every clap definition of the subcommands, and their
//! conversion to the plain requests the commands take. Each command calls one
//! function elsewhere.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bundle::BundleRequest;
use crate::cgroup::{self, Limits};
use crate::container::create::CreateRequest;
use crate::container::record::Network;
use crate::export::ExportRequest;
use crate::image_cmd::{CommitRequest, ImageMount, ImportRequest, SaveRequest};
use crate::store_dir::StoreDir;
use crate::transfer::{ContainerLoad, ContainerSave};

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
    "container",
    "bench",
    "bundle",
    "push",
    "pull",
    "login",
    "logout",
    "snapshotter",
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
    after_help = MOUNTING,
    after_long_help = MOUNTING_LONG
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Unmount a unionmount mount (another kind only with --force); its daemon exits.
    Umount {
        /// The mountpoint
        mountpoint: PathBuf,
        /// Unmount it even if it is not a unionmount mount
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Images in the layer store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Turn a container's changes (an upper directory) into a new image layer; prints its id.
    Commit(CommitArgs),
    /// Run a command in a new container of an image.
    Run(RunArgs),
    /// Make a container without starting it; prints its id.
    Create(RunArgs),
    /// Run a created (or ended) container in the foreground.
    Start {
        /// Container name or id
        container: String,
        /// Attach stdin (as if created with -i)
        #[arg(short = 'i', long = "interactive")]
        interactive: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Stop a running container: SIGTERM to its pid 1, SIGKILL after a while.
    Stop {
        /// Container name or id
        container: String,
        /// Seconds to wait before SIGKILL
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List running containers (all with -a).
    Ps {
        /// Also containers that are not running
        #[arg(short = 'a', long = "all")]
        all: bool,
        #[command(flatten)]
        store: StoreArg,
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
        store: StoreArg,
    },
    /// Write a container's filesystem (its image with its changes) as a tar, as `docker export`.
    Export(ExportArgs),
    /// Make a one-layer image from a root filesystem tar, as `docker import`; prints its id.
    Import(ImportArgs),
    /// Pull an image from a registry into the store; prints its id.
    Pull(PullArgs),
    /// Send an image to a registry (layers gzip unless told otherwise); prints its digest.
    Push(PushArgs),
    /// Serve containerd's Snapshots API on a unix socket (a proxy plugin), snapshots in the store.
    Snapshotter(SnapshotterArgs),
    /// Check a registry credential and store it where podman and pull read it.
    Login(LoginArgs),
    /// Remove a registry's stored credential.
    Logout {
        /// The registry (host[:port])
        registry: String,
    },
    /// Containers: move one to another store with its changes and settings.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Make an OCI runtime bundle (config.json + rootfs mounted by unionmount) for runc.
    Bundle(BundleArgs),
    /// Time the same workloads on unionmount, kernel overlayfs, FUSE peers and a plain directory.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

pub fn run(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let first = args.first().cloned();
    let cli = Cli::try_parse_from(std::iter::once(OsString::from("unionmount")).chain(args))
        .unwrap_or_else(|e| exit_on_usage_error(first.as_deref(), &e));
    match cli.command {
        Command::Umount { mountpoint, force } => crate::mount::unmount(&mountpoint, force),
        Command::Image(cmd) => run_image(cmd),
        Command::Commit(args) => crate::image_cmd::commit(args.into()),
        Command::Run(mut args) => match crate::registry_cmd::for_run(&args) {
            Ok(image) => {
                args.image = image;
                crate::container::lifecycle::run(args.into())
            }
            Err(e) => runner_failed(&e),
        },
        Command::Create(mut args) => match crate::registry_cmd::for_run(&args) {
            Ok(image) => {
                args.image = image;
                crate::container::lifecycle::create_cmd(args.into())
            }
            Err(e) => runner_failed(&e),
        },
        Command::Pull(args) => crate::registry_cmd::pull(args.into()),
        Command::Login(args) => crate::registry_cmd::login(
            &args.registry,
            args.username.as_deref(),
            args.password.as_deref(),
            args.password_stdin,
            args.tls.tls_verify,
        ),
        Command::Logout { registry } => crate::registry_cmd::logout(&registry),
        Command::Start {
            container,
            interactive,
            store,
        } => crate::container::lifecycle::start_cmd(&store.into(), &container, interactive),
        Command::Stop {
            container,
            time,
            store,
        } => crate::container::lifecycle::stop_cmd(&store.into(), &container, time),
        Command::Ps { all, store } => crate::container::list::ps(&store.into(), all),
        Command::Rm {
            containers,
            force,
            store,
        } => crate::container::lifecycle::rm(&store.into(), &containers, force),
        Command::Export(args) => crate::export::export(args.into()),
        Command::Import(args) => crate::image_cmd::import(args.into()),
        Command::Container(cmd) => run_container(cmd),
        Command::Push(a) => crate::push_cmd::push(a.into()),
        Command::Snapshotter(a) => crate::snapshotter_cmd::serve(a.into()),
        #[cfg(feature = "bench")]
        Command::Bench(args) => crate::bench::run(args.into()),
        Command::Bundle(args) => crate::bundle::run(args.into()),
    }
}

/// `run` and `create` that cannot get their image end as the runner's
/// failures do: one line, status 125 (as Docker's failed pull).
fn runner_failed(e: &anyhow::Error) -> anyhow::Result<ExitCode> {
    eprintln!("unionmount: {e:#}");
    Ok(ExitCode::from(crate::container::lifecycle::RUNNER_FAILED))
}

/// Run an image command.
fn run_image(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    use crate::image_cmd as image;
    match cmd {
        ImageCommand::Load { path, tag, store } => {
            image::load(&store.into(), &path, tag.as_deref())?
        }
        ImageCommand::Import(args) => return image::import(args.into()),
        ImageCommand::Ls { format, store } => image::list(&store.into(), format.as_deref())?,
        ImageCommand::Inspect { image, store } => image::inspect_image(&store.into(), &image)?,
        ImageCommand::Tag { image, new, store } => image::tag(&store.into(), &image, &new)?,
        ImageCommand::Rm { images, store } => image::remove(&store.into(), &images)?,
        ImageCommand::Save {
            image,
            format,
            out,
            ref_name,
            compression,
            store,
        } => {
            let req = SaveRequest {
                image,
                format,
                out,
                ref_name,
                compression,
            };
            image::save(&store.into(), &req)?
        }
        ImageCommand::Prune { store } => image::prune(&store.into())?,
        ImageCommand::Fsck { repair, store } => image::fsck(&store.into(), repair)?,
        ImageCommand::Mount {
            image,
            mountpoint,
            upper,
            work,
            store,
        } => {
            let m = ImageMount {
                image,
                mountpoint,
                upper,
                work,
            };
            return image::mount_image(&store.into(), &m);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a `container` command.
fn run_container(cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ContainerCommand::Export(args) => crate::export::export(args.into()),
        ContainerCommand::Save(args) => crate::transfer::save(args.into()),
        ContainerCommand::Load(args) => crate::transfer::load(args.into()),
    }
}

impl From<StoreArg> for StoreDir {
    fn from(a: StoreArg) -> StoreDir {
        StoreDir { path: a.store }
    }
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Network {
        match n {
            NetworkArg::None => Network::None,
            NetworkArg::Host => Network::Host,
        }
    }
}

impl From<RunArgs> for CreateRequest {
    fn from(a: RunArgs) -> CreateRequest {
        CreateRequest {
            rm: a.rm,
            name: a.name,
            env: a.env,
            workdir: a.workdir,
            user: a.user,
            hostname: a.hostname,
            volumes: a.volumes,
            network: a.network.into(),
            limits: Limits {
                memory: a.memory,
                pids: a.pids_limit,
            },
            read_only: a.read_only,
            init: a.init,
            tty: a.tty,
            interactive: a.interactive,
            store: a.store.into(),
            image: a.image,
            cmd: a.cmd,
        }
    }
}

impl From<CommitArgs> for CommitRequest {
    fn from(a: CommitArgs) -> CommitRequest {
        CommitRequest {
            source: a.source,
            tag: a.reference.or(a.tag),
            from: a.from,
            store: a.store.into(),
        }
    }
}

impl From<BundleArgs> for BundleRequest {
    fn from(a: BundleArgs) -> BundleRequest {
        BundleRequest {
            name: a.name,
            env: a.env,
            store: a.store.into(),
            image: a.image,
            dir: a.dir,
            cmd: a.cmd,
        }
    }
}

impl From<ExportArgs> for ExportRequest {
    fn from(a: ExportArgs) -> ExportRequest {
        ExportRequest {
            container: a.container,
            out: a.output,
            store: a.store.into(),
        }
    }
}

impl From<ImportArgs> for ImportRequest {
    fn from(a: ImportArgs) -> ImportRequest {
        ImportRequest {
            path: a.path,
            tag: a.reference.or(a.tag),
            store: a.store.into(),
        }
    }
}

impl From<ContainerSaveArgs> for ContainerSave {
    fn from(a: ContainerSaveArgs) -> ContainerSave {
        ContainerSave {
            container: a.container,
            out: a.out,
            compression: a.compression,
            store: a.store.into(),
        }
    }
}

impl From<ContainerLoadArgs> for ContainerLoad {
    fn from(a: ContainerLoadArgs) -> ContainerLoad {
        ContainerLoad {
            archive: a.archive,
            name: a.name,
            no_volumes: a.no_volumes,
            store: a.store.into(),
        }
    }
}

#[cfg(feature = "bench")]
impl From<BenchArgs> for crate::bench::BenchOptions {
    fn from(a: BenchArgs) -> crate::bench::BenchOptions {
        crate::bench::BenchOptions {
            targets: a.targets,
            custom: a.custom,
            compare: a.compare,
            lower: a.lower,
            image: a.image,
            store: a.store,
            scale: a.scale,
            tree_scale: a.tree_scale,
            quick: a.quick,
            runs: a.runs,
            workloads: a.workloads,
            json: a.json,
            csv: a.csv,
            svg: a.svg,
            tmpdir: a.tmpdir,
            no_fresh_fs: a.no_fresh_fs,
        }
    }
}

/// The mount syntaxes (`-h`).
const MOUNTING: &str = "Mounting:\n  unionmount -o lowerdir=A:B,upperdir=U,workdir=W MNT\n  unionmount -o cow UPPER=RW:LOWER=RO MNT\n  unionmount SRC MNT -o OPTIONS   (as started by mount -t fuse.unionmount)";

/// The mount syntaxes and every option the mount parser accepts (`--help`);
/// the list follows `options`' parser (its flags and valued options).
const MOUNTING_LONG: &str = "Mounting:
  unionmount -o lowerdir=A:B,upperdir=U,workdir=W MNT
  unionmount -o cow UPPER=RW:LOWER=RO MNT
  unionmount SRC MNT -o OPTIONS   (as started by mount -t fuse.unionmount)

Mount flags:
  -o OPTIONS    comma-separated options (below); may be given more than once
  -f            stay in the foreground
  -d            debug output (implies -f)

Overlay options (kernel overlayfs, fuse-overlayfs):
  lowerdir=DIR[:DIR...]        read-only layers, top first (\\: escapes a colon)
  upperdir=DIR                 the writable layer
  workdir=DIR                  scratch directory on the upper's filesystem
  volatile                     no fsync: faster, lost on a crash
  fsync=0|1                    fsync=0 is volatile
  userxattr                    overlay xattrs in user.overlay.* (not trusted.*)
  metacopy=on|off              chown, chmod and xattr changes copy up metadata only
  uidmapping=C:H:L[:C:H:L...]  owner mapping: container id, host id, length
  gidmapping=C:H:L[:C:H:L...]  group mapping, the same way
  squash_to_root               every file shown as owned by root
  squash_to_uid=N              every file shown as owned by uid N
  squash_to_gid=N              every file shown as owned by gid N
  xattr_permissions=0|1|2      fuse-overlayfs xattr permission mode
  timeout=SECONDS              entry and attribute cache lifetime
  redirect_dir=, index=, xino=, context=
                               accepted for compatibility; no effect
  noacl                        accepted for compatibility; no effect

unionfs-fuse options:
  cow                          copy up on write (branches as BRANCH=RW:BRANCH=RO)
  chroot=DIR                   branch paths are taken inside DIR
  max_files=N                  accepted (checked to be a number); no effect
  statfs_omit_ro, hide_meta_files
                               accepted for compatibility; no effect

FUSE and mount flags:
  ro, rw                       read-only or read-write mount
  dev, nodev, suid, nosuid, exec, noexec
                               as mount(8)
  atime, relatime, noatime     as mount(8)
  diratime, nodiratime, strictatime, lazytime, sync, async, dirsync,
  symfollow, nosymfollow
                               as mount(8): flags of the FUSE mount
  mand, nomand, iversion, noiversion, silent, loud, defaults
                               accepted, as mount(8) passes them
  anything else                ignored with a warning (refused if it looks
                               like a misspelt option or has a path value)
  allow_other                  other users may use the mount
  allow_root                   root may use the mount too
  io_uring, noio_uring         FUSE over io_uring: required, or never (by
                               default it is used when the kernel offers it)
  lower_passthrough            read-only opens of lower files pass through
                               to them: faster reads, but such a descriptor
                               keeps reading the lower file after a copy-up
  default_permissions          the kernel checks permissions
  auto_unmount                 unmount when the daemon dies
  debug                        debug output (implies -f)
  fsname=NAME                  source shown in the mount table
  subtype=NAME                 shown as fuse.NAME in the mount table
  max_write=BYTES              largest write request
  direct_io, kernel_cache, use_ino, nonempty, big_writes
                               accepted for compatibility; no effect";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Args, Debug)]
pub struct SnapshotterArgs {
    /// The socket containerd's proxy_plugins entry names
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/unionmount/snapshotter.sock"
    )]
    address: PathBuf,
    /// Log level, as containerd's
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "info")]
    log_level: LogLevel,
    #[command(flatten)]
    store: StoreArg,
}

impl From<SnapshotterArgs> for crate::snapshotter_cmd::SnapshotterRequest {
    fn from(a: SnapshotterArgs) -> Self {
        crate::snapshotter_cmd::SnapshotterRequest {
            address: a.address,
            store: a.store.into(),
            log_level: match a.log_level {
                LogLevel::Error => log::LevelFilter::Error,
                LogLevel::Warn => log::LevelFilter::Warn,
                LogLevel::Info => log::LevelFilter::Info,
                LogLevel::Debug => log::LevelFilter::Debug,
            },
        }
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The image in the store (name, id or id prefix)
    image: String,
    /// Where to: [REGISTRY/]REPOSITORY[:TAG] (default: the image's name)
    destination: Option<String>,
    /// Layer compression: gzip (the default, read by every tool), zstd or none
    #[arg(long, value_name = "gzip|zstd|none")]
    compression: Option<String>,
    #[command(flatten)]
    tls: TlsArg,
    /// Print only the manifest digest
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    store: StoreArg,
}

impl From<PushArgs> for crate::push_cmd::PushRequest {
    fn from(a: PushArgs) -> Self {
        crate::push_cmd::PushRequest {
            image: a.image,
            destination: a.destination,
            compression: a.compression,
            tls_verify: a.tls.tls_verify,
            quiet: a.quiet,
            store: a.store.into(),
        }
    }
}

/// Where the store is: `--store DIR`, else `UNIONMOUNT_STORE`, else the default.
#[derive(Args, Clone, Debug)]
pub struct StoreArg {
    /// Store directory (default: $UNIONMOUNT_STORE, /var/lib/unionmount as root,
    /// $XDG_DATA_HOME/unionmount otherwise)
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    /// A network namespace of its own with only a loopback device
    None,
    /// The host's network
    Host,
}

/// The commands that end with podman's 125 when they fail, clap's usage
/// errors included.
const RUNNER_COMMANDS: [&str; 3] = ["run", "create", "start"];

/// End on a clap error: for `run`, `create` and `start` one line and the
/// runner's failure status (podman's); help, version and the other commands
/// as clap does.
fn exit_on_usage_error(cmd: Option<&std::ffi::OsStr>, e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    let cmd = cmd.and_then(|c| c.to_str()).unwrap_or("");
    let help = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if help || !RUNNER_COMMANDS.contains(&cmd) {
        e.exit();
    }
    // The message is the text before clap's tips and usage, on one line.
    let text = e.to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = msg.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    eprintln!("unionmount: {cmd}: {msg} (see unionmount {cmd} --help)");
    std::process::exit(crate::container::lifecycle::RUNNER_FAILED.into())
}

/// `run` and `create`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it ends
    #[arg(long)]
    pub rm: bool,
    /// Name of the container (default: its id)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (K=V, or K to take it from here)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID] or a name from the image's /etc/passwd
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Host name inside the container (default: the container's id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Bind-mount a host directory or file: HOST:CTR or HOST:CTR:ro
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<String>,
    /// Network: none (default, loopback only) or host
    #[arg(long, value_enum, default_value = "none")]
    pub network: NetworkArg,
    /// Memory limit in bytes (k, m, g suffixes); over it the container is OOM-killed
    #[arg(long, value_parser = cgroup::parse_bytes, value_name = "BYTES")]
    pub memory: Option<u64>,
    /// Most processes the container may have at once
    #[arg(long = "pids-limit", value_name = "N")]
    pub pids_limit: Option<u64>,
    /// Mount the container's root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Run a small init as pid 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Give the command a terminal (stdin not attached without -i)
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Attach stdin (without it the command reads /dev/null)
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Pull the image from its registry: when the store lacks it (missing), always, or never
    #[arg(long, value_enum, default_value = "missing", value_name = "POLICY")]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub tls: TlsArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Image name or id
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load images from a docker-archive tar, an OCI archive tar or an OCI layout directory.
    Load {
        /// The archive or directory (`-`: an archive on standard input)
        path: PathBuf,
        /// Name the (single) image instead of using the names in the source
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Make a one-layer image from a root filesystem tar (the same as `unionmount import`).
    Import(ImportArgs),
    /// List images.
    Ls {
        /// `json` for scripts
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image's manifest, config and layer directories as JSON.
    Inspect {
        image: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Give an image another name.
    Tag {
        image: String,
        new: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove image names (by id: every name of that image). Content goes with `prune`.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Write an image out: docker-archive (tar, the default), oci-archive (tar) or oci (directory).
    Save {
        image: String,
        /// docker-archive | oci-archive | oci
        #[arg(long, default_value = "docker-archive")]
        format: String,
        /// Output path (must not exist)
        out: PathBuf,
        /// Name recorded in the output (default: the image's name)
        #[arg(long = "ref")]
        ref_name: Option<String>,
        /// Layer compression of OCI output: gzip (the default, read by every tool), zstd or none
        #[arg(long, alias = "compress", value_name = "gzip|zstd|none")]
        compression: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove blobs and layers that no image or container uses.
    Prune {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Re-hash blobs and check unpacked layers.
    Fsck {
        /// Remove damaged blobs and re-unpack missing or damaged layers
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Mount an image's layers (read-only, or with --upper/--work) through unionmount.
    Mount {
        image: String,
        mountpoint: PathBuf,
        /// Writable upper directory
        #[arg(long)]
        upper: Option<PathBuf>,
        /// Work directory on the same filesystem as the upper (default: a
        /// hidden sibling of the upper, `.NAME.work`, made if missing)
        #[arg(long, requires = "upper")]
        work: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Args)]
pub struct CommitArgs {
    /// Upper directory or container
    pub source: PathBuf,
    /// Name of the new image (default: none, as `docker commit`)
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
    /// Name of the new image (the same as REF)
    #[arg(long, conflicts_with = "reference")]
    pub tag: Option<String>,
    /// The image the upper was mounted on (needed for directory redirects)
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Name of the container that keeps the bundle's changes (default: its id)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (K=V)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Image name or id
    pub image: String,
    /// The bundle directory (created; must be empty if it exists)
    pub dir: PathBuf,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `unionmount export` (`docker export`).
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Container name or id (a running one is exported as it is now)
    pub container: String,
    /// Write the tar to FILE instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `run --pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull only a registry reference the store does not have
    Missing,
    /// Pull a registry reference every time
    Always,
    /// Use what the store has
    Never,
}

/// `unionmount pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference: NAME[:TAG][@DIGEST] (`alpine` is docker.io/library/alpine:latest)
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The platform to pick from a multi-platform image (default: this machine's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Every tag of the repository
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// No progress; only the image id
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub tls: TlsArg,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `--tls-verify[=BOOL]` of the commands that reach a registry.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct TlsArg {
    /// Verify TLS certificates (default: true, except for loopback registries);
    /// `--tls-verify=false` also allows plain HTTP
    #[arg(long = "tls-verify", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: Option<bool>,
}

/// `unionmount login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry (host[:port]; docker.io for Docker Hub)
    pub registry: String,
    /// User name
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (visible in the process list: prefer --password-stdin)
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    #[command(flatten)]
    pub tls: TlsArg,
}

impl From<PullArgs> for crate::registry_cmd::PullRequest {
    fn from(a: PullArgs) -> Self {
        crate::registry_cmd::PullRequest {
            reference: a.reference,
            platform: a.platform,
            all_tags: a.all_tags,
            quiet: a.quiet,
            tls_verify: a.tls.tls_verify,
            store: a.store.into(),
        }
    }
}

/// `unionmount import` and `unionmount image import` (`docker import`).
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The root filesystem: a tar (plain, gzip or zstd), `-` for standard input, or a directory
    pub path: PathBuf,
    /// Name of the new image (default: none; it is known by its id)
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
    /// Name of the new image (the same as REF)
    #[arg(long, conflicts_with = "reference")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Write a container's filesystem as a tar (the same as `unionmount export`).
    Export(ExportArgs),
    /// Write a container (its image, its changes, its settings) to an OCI archive, for `container load`.
    Save(ContainerSaveArgs),
    /// Make a container from an archive written by `container save` (into this store).
    Load(ContainerLoadArgs),
}

/// `unionmount container save`.
#[derive(Args, Debug)]
pub struct ContainerSaveArgs {
    /// Container name or id (a running one is saved as it is now)
    pub container: String,
    /// The archive to write (an OCI archive; must not exist)
    pub out: PathBuf,
    /// Layer compression: gzip (the default, read by every tool), zstd or none
    #[arg(long, alias = "compress", value_name = "gzip|zstd|none")]
    pub compression: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `unionmount container load`.
#[derive(Args, Debug)]
pub struct ContainerLoadArgs {
    /// An archive written by `unionmount container save`
    pub archive: PathBuf,
    /// Name of the new container (default: the saved container's name)
    #[arg(long)]
    pub name: Option<String>,
    /// Leave out the saved container's volumes (host paths of the other machine)
    #[arg(long = "no-volumes")]
    pub no_volumes: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Targets to run, comma-separated [default: overlay,unionmount,fuse-overlayfs,unionfs-fuse,dir and every --target; also unionmount-devfuse (without io_uring) and unionmount-lower-passthrough]
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    targets: Vec<String>,
    /// An extra target: NAME='mount command using {lower} {upper} {work} {mnt}' ({lower}: the lowerdir value, top first, ':' ',' '\' escaped)
    #[arg(long = "target", value_name = "NAME=COMMAND")]
    custom: Vec<String>,
    /// Install fuse-overlayfs and unionfs-fuse (apt-get) when missing, to compare with them, and xfsprogs for the FICLONE row
    #[arg(long)]
    compare: bool,
    /// Use this directory (a root filesystem, say) as the only lower layer instead of a generated tree
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    lower: Option<PathBuf>,
    /// Use the unpacked layers of this store image (top first, as `image mount` stacks them) instead of a generated tree
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// The store holding --image [default: $UNIONMOUNT_STORE, /var/lib/unionmount as root]
    #[arg(long, value_name = "DIR", requires = "image")]
    store: Option<PathBuf>,
    /// Multiply the generated tree's file count and the sizes read, written and appended to (2 GiB, 1 GiB, 1 GiB at 1)
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Multiply the generated tree's file count only (e.g. 5 for a 100k-file walk)
    #[arg(long, default_value_t = 1.0)]
    tree_scale: f64,
    /// Tiny sizes: a smoke run of a few seconds
    #[arg(long)]
    quick: bool,
    /// Runs of every workload on every target
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only these workloads, comma-separated (see the table for names)
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    workloads: Vec<String>,
    /// Write the results as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the results as CSV
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw the ratios to kernel overlayfs as an SVG bar chart
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Where the layers, uppers and mountpoints go [default: $TMPDIR or /var/tmp]
    #[arg(long, value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// Use the temporary directory's own filesystem, not a fresh ext4 made in it
    #[arg(long)]
    no_fresh_fs: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn long_help_lists_the_mount_options() {
        let help = Cli::command().render_long_help().to_string();
        for o in [
            "lowerdir=",
            "upperdir=",
            "workdir=",
            "uidmapping=",
            "metacopy=",
            "cow",
            "chroot=",
            "allow_other",
            "auto_unmount",
            "fsname=",
            "max_write=",
            "-f",
            "-d",
        ] {
            assert!(help.contains(o), "--help lacks {o}:\n{help}");
        }
        let short = Cli::command().render_help().to_string();
        assert!(short.contains("unionmount -o cow UPPER=RW:LOWER=RO MNT"));
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
