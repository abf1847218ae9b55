//! `unionmount bench`: the same workloads timed on unionmount, kernel
//! overlayfs, the FUSE peers and a plain directory, reported as ratios to
//! kernel overlayfs measured in the same run.
//!
//! Layout: `layers` makes (or finds, in a directory or a store image) the
//! identical lower layers, `target` mounts and unmounts one fresh instance of
//! a target (guards), `workload` holds the timed operations, `store` the
//! layer-store rows, `report` and `chart` write the results.

mod chart;
mod clone_rows;
mod containerd_rows;
mod layers;
mod registry_rows;
mod report;
mod requests;
mod run_rows;
mod scratch_fs;
mod store;
mod target;
mod tmp;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use report::{Cell, Sample};
use store::{STORE_WORKLOADS, StoreWorkload};
use target::Target;
use workload::{Ctx, WORKLOADS, Workload};

/// Built-in targets, in report order.
const BUILTIN: &[&str] = &[
    "overlay",
    "unionmount",
    "fuse-overlayfs",
    "unionfs-fuse",
    "dir",
];

/// What `unionmount bench` is asked to do (see the command line for each field).
#[derive(Debug)]
pub struct BenchOptions {
    /// Targets to run, comma-separated [default: overlay,unionmount,fuse-overlayfs,unionfs-fuse,dir and every --target; also unionmount-devfuse (without io_uring) and unionmount-lower-passthrough]
    pub targets: Vec<String>,
    /// An extra target: NAME='mount command using {lower} {upper} {work} {mnt}' ({lower}: the lowerdir value, top first, ':' ',' '\' escaped)
    pub custom: Vec<String>,
    /// Install fuse-overlayfs and unionfs-fuse (apt-get) when missing, to compare with them, and xfsprogs for the FICLONE row
    pub compare: bool,
    /// Use this directory (a root filesystem, say) as the only lower layer instead of a generated tree
    pub lower: Option<PathBuf>,
    /// Use the unpacked layers of this store image (top first, as `image mount` stacks them) instead of a generated tree
    pub image: Option<String>,
    /// The store holding --image [default: $UNIONMOUNT_STORE, /var/lib/unionmount as root]
    pub store: Option<PathBuf>,
    /// Multiply the generated tree's file count and the sizes read, written and appended to (2 GiB, 1 GiB, 1 GiB at 1)
    pub scale: f64,
    /// Multiply the generated tree's file count only (e.g. 5 for a 100k-file walk)
    pub tree_scale: f64,
    /// Tiny sizes: a smoke run of a few seconds
    pub quick: bool,
    /// Runs of every workload on every target
    pub runs: usize,
    /// Only these workloads, comma-separated (see the table for names)
    pub workloads: Vec<String>,
    /// Write the results as JSON
    pub json: Option<PathBuf>,
    /// Write the results as CSV
    pub csv: Option<PathBuf>,
    /// Draw the ratios to kernel overlayfs as an SVG bar chart
    pub svg: Option<PathBuf>,
    /// Where the layers, uppers and mountpoints go [default: $TMPDIR or /var/tmp]
    pub tmpdir: Option<PathBuf>,
    /// Use the temporary directory's own filesystem, not a fresh ext4 made in it
    pub no_fresh_fs: bool,
}

pub fn run(args: BenchOptions) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number");
    }
    if !(args.tree_scale > 0.0 && args.tree_scale.is_finite()) {
        bail!("--tree-scale must be a positive number");
    }
    let (workloads, store_workloads) = pick_workloads(&args.workloads)?;
    if args.compare {
        target::install_peers();
    }
    let (workloads, skipped_workloads) = runnable(workloads);
    let (targets, skipped) = target::resolve(&args.targets, &args.custom, BUILTIN)?;
    if targets.is_empty() {
        bail!(
            "no target to run (skipped: {})",
            report::skipped_line(&skipped)
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }

    let mut base = tmp::TempDir::new(args.tmpdir.as_deref())?;
    let sizes = layers::Sizes::new(args.quick, args.scale, args.tree_scale);
    if !args.no_fresh_fs {
        base.on_fresh_ext4(&sizes.room(args.lower.is_some() || args.image.is_some()));
    }
    eprintln!(
        "unionmount bench: preparing layers in {}{}",
        base.path().display(),
        if base.fresh_fs() {
            " (a fresh ext4)"
        } else {
            ""
        }
    );
    let image_store = match (&args.image, &args.store) {
        (None, _) => None,
        (Some(_), Some(s)) => Some(s.clone()),
        (Some(_), None) => Some(layerstore::Store::default_root()?),
    };
    let layers = match (&args.lower, &args.image, &image_store) {
        (Some(dir), _, _) => layers::Layers::from_dir(dir, base.path())?,
        (None, Some(name), Some(store)) => layers::Layers::from_image(store, name, base.path())?,
        _ => layers::Layers::generate(&sizes, base.path())?,
    };
    let need_dir = targets.iter().any(|t| matches!(t.kind, target::Kind::Dir));
    let merged = if need_dir {
        Some(layers.merged_copy(base.path())?)
    } else {
        None
    };

    let mut cells: Vec<Cell> = Vec::new();
    for w in &workloads {
        for t in &targets {
            cells.push(Cell::new(w.name, &t.name, args.runs));
        }
    }
    // The store rows are about unionmount's own store: they run with it.
    let store_workloads = if targets.iter().any(|t| t.name == "unionmount") {
        store_workloads
    } else {
        Vec::new()
    };
    let total = ((workloads.len() * targets.len() + store_workloads.len()) * args.runs) as u64;
    let bar = progress_bar(total);
    let started = Instant::now();
    'all: for (wi, w) in workloads.iter().enumerate() {
        for run in 0..args.runs {
            // Alternate: every run visits every target, starting one further along.
            for k in 0..targets.len() {
                if stop.load(Ordering::Relaxed) {
                    break 'all;
                }
                let ti = (k + run) % targets.len();
                let t = &targets[ti];
                bar.set_message(format!("{} on {} (run {})", w.name, t.name, run + 1));
                let res = measure(w, t, &layers, merged.as_deref(), &base, &sizes);
                cells[wi * targets.len() + ti].runs[run] = Some(res.map_err(|e| format!("{e:#}")));
                bar.inc(1);
            }
        }
    }
    let (store_rows, store_inputs) = if store_workloads.is_empty() || stop.load(Ordering::Relaxed) {
        (Vec::new(), String::new())
    } else {
        bar.set_message("preparing the layer store rows");
        let bottom = layers.lowers.last().context("no lower layer")?;
        let mut inputs = store::Inputs::prepare(bottom, base.path())?;
        inputs.clone_size = sizes.append;
        if let (Some(name), Some(store)) = (&args.image, &image_store) {
            inputs.registry_image = (store.clone(), name.clone());
            inputs.describe += &format!("; the registry rows on image {name}");
        }
        let rows: Vec<store::StoreRow> = store_workloads
            .iter()
            .map(|w| {
                bar.set_message(format!("{} ({} runs)", w.name, args.runs));
                let row = store::measure(w, &inputs, args.runs);
                bar.inc(args.runs as u64);
                row
            })
            .collect();
        (rows, inputs.describe)
    };
    bar.finish_and_clear();
    let interrupted = stop.load(Ordering::Relaxed);

    let meta = report::Meta {
        date: report::utc_now(),
        runs: args.runs,
        layers: layers.describe(&sizes),
        targets: targets.iter().map(|t| t.name.clone()).collect(),
        skipped,
        skipped_workloads,
        seconds: started.elapsed().as_secs_f64(),
    };
    let rows = report::summarize(&cells, &meta.targets);
    print!("{}", report::markdown(&meta, &workloads, &rows));
    if !store_rows.is_empty() {
        print!("{}", store::markdown(&store_rows, &store_inputs));
    }
    if let Some(path) = &args.json {
        let store_json = (!store_rows.is_empty()).then(|| store::json(&store_rows));
        std::fs::write(
            path,
            report::json(&meta, &workloads, &rows, store_json.as_deref()),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::csv(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        chart::write_svg(path, &workloads, &meta.targets, &rows)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(layers);
    drop(base);
    if interrupted {
        bail!("interrupted; the table holds the runs that finished");
    }
    Ok(ExitCode::SUCCESS)
}

/// The filesystem and store workloads named (all of them when none is).
fn pick_workloads(
    names: &[String],
) -> anyhow::Result<(Vec<&'static Workload>, Vec<&'static StoreWorkload>)> {
    if names.is_empty() {
        return Ok((WORKLOADS.iter().collect(), STORE_WORKLOADS.iter().collect()));
    }
    let (mut fs, mut st) = (Vec::new(), Vec::new());
    for n in names {
        if let Some(w) = WORKLOADS.iter().find(|w| w.name == n) {
            fs.push(w);
        } else if let Some(w) = STORE_WORKLOADS.iter().find(|w| w.name == n) {
            st.push(w);
        } else {
            let all: Vec<&str> = WORKLOADS
                .iter()
                .map(|w| w.name)
                .chain(STORE_WORKLOADS.iter().map(|w| w.name))
                .collect();
            bail!("unknown workload {n:?} (known: {})", all.join(", "));
        }
    }
    Ok((fs, st))
}

/// The workloads whose programs are installed, and the others with the reason.
fn runnable(workloads: Vec<&'static Workload>) -> (Vec<&'static Workload>, Vec<target::Skipped>) {
    let mut skipped = Vec::new();
    let run = workloads
        .into_iter()
        .filter(|w| match w.needs {
            Some(prog) if target::which(prog).is_none() => {
                skipped.push((
                    w.name.to_string(),
                    format!("{prog} is not installed (--compare installs it)"),
                ));
                false
            }
            _ => true,
        })
        .collect();
    (run, skipped)
}

/// One timed run of one workload on a fresh instance of one target.
fn measure(
    w: &Workload,
    t: &Target,
    layers: &layers::Layers,
    merged: Option<&std::path::Path>,
    base: &tmp::TempDir,
    sizes: &layers::Sizes,
) -> anyhow::Result<Sample> {
    let inst = target::Instance::start(t, &layers.lowers, merged, base.path(), w.writes)?;
    let ctx = Ctx {
        root: inst.root(),
        tree: &layers.tree,
        big: &layers.big,
        big_size: layers.big_size,
        append: &layers.append,
        write_size: sizes.write,
        tarball: &layers.tarball,
        rand_reads: sizes.rand_reads,
    };
    if let Some(warm) = w.warmup {
        warm(&ctx).context("warm-up")?;
    }
    // No run pays for the writeback of what an earlier one (or the dir
    // target's copy) left dirty.
    if w.cold {
        workload::drop_caches()?;
    } else {
        rustix::fs::sync();
    }
    let requests0 = inst.request_counts();
    let cpu0 = inst.daemon_cpu();
    let t0 = Instant::now();
    (w.run)(&ctx)?;
    let secs = t0.elapsed().as_secs_f64();
    let requests = match (requests0, inst.request_counts()) {
        (Some(a), Some(b)) => Some(requests::between(&a, &b)),
        _ => None,
    };
    let cpu = match (cpu0, inst.daemon_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let rss_kib = inst.daemon_peak_rss();
    let upper_kib = if w.writes { inst.upper_kib() } else { None };
    inst.finish()?;
    Ok(Sample {
        secs,
        cpu,
        rss_kib,
        upper_kib,
        requests,
    })
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}
