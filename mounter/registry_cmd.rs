//! `unionmount pull`, `login` and `logout`, and the pull that `run --pull`
//! does: thin wrappers over the registry crate.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use layerstore::Store;
use layerstore::progress::Progress;
use registry::Reference;
use registry::client::Options;
use registry::pull::{PullOptions, Pulled};

use crate::cli::{PullPolicy, RunArgs};
use crate::store_dir::StoreDir;

/// `pull`.
#[derive(Debug)]
pub struct PullRequest {
    pub reference: String,
    pub platform: Option<String>,
    pub all_tags: bool,
    pub quiet: bool,
    pub tls_verify: Option<bool>,
    pub store: StoreDir,
}

/// `pull`: prints each pulled image's id, as `image ls` shows it.
pub fn pull(req: PullRequest) -> anyhow::Result<ExitCode> {
    let r = Reference::parse(&req.reference)?;
    let mut s = req.store.open_or_create()?;
    let opts = PullOptions {
        platform: req.platform.clone(),
        all_tags: req.all_tags,
        client: Options {
            tls_verify: req.tls_verify,
            ..Default::default()
        },
        bars: (!req.quiet).then(crate::progress::layer_bars).flatten(),
        ..Default::default()
    };
    if req.quiet {
        s.set_progress(Progress::default());
    }
    for p in run_pull(&s, &r, &opts)? {
        let mut out = std::io::stdout().lock();
        let _ = std::io::Write::write_fmt(&mut out, format_args!("{}\n", p.id.short()));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_pull(s: &Store, r: &Reference, opts: &PullOptions) -> anyhow::Result<Vec<Pulled>> {
    registry::pull::pull(s, r, opts).map_err(|e| anyhow!("pull {r}: {e}"))
}

/// `run`/`create --pull`: the name to run, after pulling it if the policy
/// says so. As Docker: with `missing`, a name the store has (a name, a tag,
/// an id prefix) is run as it is, and a reference it lacks is pulled, a
/// short one (`alpine`) from Docker Hub. Anything else (not a reference,
/// an ambiguous id prefix, a missing `--store`) is left for `run` to report.
pub fn for_run(args: &RunArgs) -> anyhow::Result<String> {
    let name = args.image.clone();
    if args.pull == PullPolicy::Never {
        return Ok(name);
    }
    let Ok(r) = Reference::parse(&name) else {
        return Ok(name);
    };
    let tag = r.store_tag();
    let store = StoreDir::from(args.store.clone());
    let Ok(existing) = store.listing_root() else {
        return Ok(name);
    };
    if args.pull == PullPolicy::Missing && existing.is_some() {
        let s = store.open()?;
        if let Some(d) = &r.digest {
            // Pinned: only an image of that digest will do.
            if let Some(found) = pulled_as(&s, d)? {
                return Ok(found);
            }
        } else {
            // `docker.io/library/alpine` is stored as `alpine:latest`.
            for n in std::iter::once(name.clone()).chain(tag.clone()) {
                match s.resolve(&n) {
                    Ok(_) => return Ok(n),
                    Err(layerstore::Error::NotFound { .. }) => {}
                    Err(_) => return Ok(name),
                }
            }
        }
    }
    let s = store.open_or_create()?;
    let opts = PullOptions {
        bars: crate::progress::layer_bars(),
        client: Options {
            tls_verify: args.tls.tls_verify,
            ..Default::default()
        },
        ..Default::default()
    };
    if opts.bars.is_some() {
        eprintln!("Pulling {r}");
    }
    let pulled = registry::pull::pull(&s, &r, &opts)
        .map_err(|e| anyhow!("image {name}: not found in the store, and pull {r} failed: {e}"))?;
    // By its tag, unless pinned by digest (the tag may move).
    if let Some(t) = tag.filter(|_| r.digest.is_none()) {
        return Ok(t);
    }
    Ok(pulled.first().map_or(name, |p| p.manifest.to_string()))
}

/// The manifest digest of the store's image for registry digest `d`: its
/// own manifest's, or the one a pull recorded (an index's, for a
/// multi-platform image).
fn pulled_as(s: &Store, d: &str) -> anyhow::Result<Option<String>> {
    Ok(s.index()?
        .manifests
        .iter()
        .find(|e| {
            e.digest.to_string() == d
                || e.annotations
                    .get(registry::pull::SOURCE_DIGEST)
                    .map(String::as_str)
                    == Some(d)
        })
        .map(|e| e.digest.to_string()))
}

/// `login`: the password from `-p` or standard input, or asked on the
/// terminal (without echo) as podman asks; without a terminal nothing is
/// asked, so that a script never hangs.
pub fn login(
    registry: &str,
    user: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
    tls_verify: Option<bool>,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal() && !password_stdin;
    let user = match user {
        Some(u) => u.to_string(),
        None if terminal => ask("Username: ", true)?,
        None => bail!("login {registry}: give the user name with -u"),
    };
    let pass = match (password, password_stdin) {
        (Some(p), _) => p.to_string(),
        (None, true) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if terminal => ask("Password: ", false)?,
        (None, false) => bail!("login {registry}: give the password with --password-stdin (or -p)"),
    };
    let user = user.as_str();
    let opts = Options {
        tls_verify,
        ..Default::default()
    };
    registry::login::login(registry, user, &pass, &opts).map_err(anyhow::Error::msg)?;
    println!("Login Succeeded!");
    Ok(ExitCode::SUCCESS)
}

/// `logout`.
pub fn logout(registry: &str) -> anyhow::Result<ExitCode> {
    if registry::login::logout(registry, &Options::default()).map_err(anyhow::Error::msg)? {
        println!("Removed login credentials for {registry}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("logout {registry}: not logged in")
    }
}

/// One line asked on the terminal; without echo unless `echo`.
fn ask(what: &str, echo: bool) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)?;
    if !echo {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    }
    eprint!("{what}");
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut stdin.lock(), &mut line);
    if !echo {
        let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
