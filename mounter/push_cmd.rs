//! `unionmount push`, `login` and `logout`: an image of the store to a
//! registry, and the credentials kept for registries (podman's
//! `auth.json`, read by Docker's tools too through ours).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use registry::Reference;
use registry::auth::AuthFiles;
use registry::client::Options;

use crate::image_cmd::parse_compression;
use crate::store_dir::StoreDir;

/// What `unionmount push` was asked.
pub struct PushRequest {
    pub image: String,
    /// Where to (default: the image's own name as a reference).
    pub destination: Option<String>,
    pub compression: Option<String>,
    pub tls_verify: Option<bool>,
    pub quiet: bool,
    pub store: StoreDir,
}

/// `unionmount push IMAGE [REF]`.
pub fn push(req: PushRequest) -> anyhow::Result<ExitCode> {
    let store = req.store.open()?;
    let target = Reference::parse(req.destination.as_deref().unwrap_or(&req.image))?;
    // gzip unless told otherwise: what every registry client reads.
    let compression = parse_compression(req.compression.as_deref())?;
    let opts = Options {
        tls_verify: req.tls_verify,
        ..Options::default()
    };
    // Blobs may be mounted from the repository the image is named after
    // (where it was pulled from or pushed to before), on the same registry.
    let source = store
        .resolve(&req.image)
        .ok()
        .and_then(|info| info.name)
        .and_then(|name| Reference::parse(&name).ok());
    let pushed = runtime()?
        .block_on(registry::push::push(
            &store,
            &req.image,
            &target,
            Some(compression),
            source.as_ref(),
            &opts,
        ))
        .map_err(anyhow::Error::msg)?;
    if req.quiet {
        println!("{}", pushed.manifest);
    } else {
        println!(
            "Pushed {} ({}): {} blobs sent ({}), {} already there, {} mounted",
            target,
            pushed.manifest,
            pushed.sent,
            size(pushed.bytes_sent),
            pushed.present,
            pushed.mounted,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `unionmount login REGISTRY`: check the credentials with the registry,
/// then keep them.
pub fn login(
    registry_name: &str,
    user: Option<String>,
    password_stdin: bool,
    tls_verify: Option<bool>,
) -> anyhow::Result<ExitCode> {
    let r = registry_reference(registry_name)?;
    let user = match user {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let pass = if password_stdin {
        read_stdin_line()?
    } else {
        read_password("Password: ")?
    };
    if user.is_empty() || pass.is_empty() {
        bail!("login {registry_name}: a user name and a password are needed");
    }
    let opts = Options {
        tls_verify,
        ..Options::default()
    };
    runtime()?
        .block_on(registry::client::check_login(&r, &user, &pass, &opts))
        .map_err(anyhow::Error::msg)?;
    let file = AuthFiles::from_env().store(&r.registry, &user, &pass)?;
    eprintln!("Login Succeeded! (credentials in {})", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `unionmount logout REGISTRY`.
pub fn logout(registry_name: &str) -> anyhow::Result<ExitCode> {
    let r = registry_reference(registry_name)?;
    if !AuthFiles::from_env().remove(&r.registry)? {
        bail!("logout {registry_name}: not logged in");
    }
    eprintln!("Removed login credentials for {}", r.registry);
    Ok(ExitCode::SUCCESS)
}

/// A registry named alone (`host:port`, `docker.io`), as a reference to
/// some repository of it.
fn registry_reference(name: &str) -> anyhow::Result<Reference> {
    let host = name
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("registry {name:?}: expected a host name, with a port if need be");
    }
    let probe = if host.contains('.') || host.contains(':') || host == "localhost" {
        format!("{host}/probe")
    } else {
        bail!("registry {name:?}: not a registry host (it has no dot or port)");
    };
    Ok(Reference::parse(&probe)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the network runtime")
}

fn prompt(what: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("login: no terminal to ask on; give -u USER and --password-stdin");
    }
    eprint!("{what}");
    std::io::stderr().flush()?;
    read_stdin_line()
}

fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Ask for a password on the terminal without echoing it.
fn read_password(what: &str) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("login: no terminal to ask for the password on; use --password-stdin");
    }
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    eprint!("{what}");
    let _ = std::io::stderr().flush();
    let read = read_stdin_line();
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
