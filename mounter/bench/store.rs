//! Layer-store rows: importing a layer tar against extracting it with `tar`,
//! and committing a one-file change. Each import run gets a fresh store (or
//! a fresh directory for the baseline), and both sides end with their data
//! on disk: the store syncs what it imports, so the baseline is `tar -x`
//! followed by a syncfs of the same filesystem.

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use super::report::{f2, jnum, jstr, median};
use super::workload::run_cmd;

pub struct StoreWorkload {
    pub name: &'static str,
    pub about: &'static str,
    /// What the unionmount side is compared with (None: absolute time only).
    pub baseline: Option<&'static str>,
    pub goal: &'static str,
}

pub static STORE_WORKLOADS: &[StoreWorkload] = &[
    StoreWorkload {
        name: "import-tar",
        about: "image import of a layer tar",
        baseline: Some("tar -x + syncfs"),
        goal: "≤ 1.3×",
    },
    StoreWorkload {
        name: "import-zstd",
        about: "image import of a zstd layer tar",
        baseline: Some("tar --zstd -x + syncfs"),
        goal: "≤ 1.3×",
    },
    StoreWorkload {
        name: "commit-1file",
        about: "commit of a one-file change",
        baseline: None,
        goal: "< 0.5 s",
    },
    StoreWorkload {
        name: "pull",
        about: "pull of the registry image from a loopback registry",
        baseline: Some("podman pull"),
        goal: "< 1×",
    },
    StoreWorkload {
        name: "pull-skopeo",
        about: "pull of the same image, against a copy to an OCI layout and a load",
        baseline: Some("skopeo copy + image load"),
        goal: "< 1×",
    },
    StoreWorkload {
        name: "ctr-import",
        about: "ctr images import of the registry image, unionmount snapshotter",
        baseline: Some("containerd's overlayfs snapshotter"),
        goal: "≤ 1.5×",
    },
    StoreWorkload {
        name: "ctr-run",
        about: "ctr run --rm of that image (true): start to exit",
        baseline: Some("containerd's overlayfs snapshotter"),
        goal: "≤ 1.5×",
    },
    StoreWorkload {
        name: "clone-copyup",
        about: "append 1 byte to a big lower file, lower and upper on XFS (FICLONE)",
        baseline: Some("kernel overlayfs, here"),
        goal: "≤ 0.05×",
    },
    StoreWorkload {
        name: "run-true",
        about: "unionmount run --rm of a busybox image (true): start to exit",
        baseline: Some("runc run of its bundle, made beforehand"),
        goal: "≈ 0.02 s",
    },
    StoreWorkload {
        name: "push",
        about: "push of the registry image to a loopback registry (gzip)",
        baseline: Some("skopeo copy"),
        goal: "≤ 1×",
    },
];

/// What the store rows work on, made once per bench run.
pub struct Inputs {
    tar: PathBuf,
    zst: PathBuf,
    /// A store holding `tar` as image `base`, and an upper with one change
    /// (the registry rows pull and push that image).
    pub commit_store: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    pub describe: String,
    /// The image the registry rows push and pull: (store, name). The
    /// layer's image (`commit_store`, `base`) unless `--image` names one.
    pub registry_image: (PathBuf, String),
    /// The size of the file the FICLONE row copies up.
    pub clone_size: u64,
    /// That row's filesystems, made at its first run.
    clone_rig: OnceCell<Result<super::clone_rows::Rig, String>>,
    /// The container row's image and bundle, made at its first run.
    run_rig: OnceCell<Result<super::run_rows::Rig, String>>,
}

impl Inputs {
    fn clone_rig(&self) -> anyhow::Result<&super::clone_rows::Rig> {
        let rig = self.clone_rig.get_or_init(|| {
            super::clone_rows::Rig::prepare(&self.work, self.clone_size)
                .map_err(|e| format!("{e:#}"))
        });
        rig.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn run_rig(&self) -> anyhow::Result<&super::run_rows::Rig> {
        let rig = self.run_rig.get_or_init(|| {
            super::run_rows::Rig::prepare(&self.commit_store, &self.work)
                .map_err(|e| format!("{e:#}"))
        });
        rig.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Inputs {
    /// The tar of `layer` (a lower directory), its zstd form, and a store
    /// with it imported for the commit row.
    pub fn prepare(layer: &Path, base: &Path) -> anyhow::Result<Inputs> {
        let dir = base.join("store-bench");
        std::fs::create_dir(&dir)?;
        let tar = dir.join("layer.tar");
        run_cmd(
            Command::new("tar")
                .arg("-C")
                .arg(layer)
                .arg("--xattrs")
                .args(["--xattrs-include=*", "-cf"])
                .arg(&tar)
                .arg("."),
        )
        .context("making the layer tar for the store rows")?;
        let zst = dir.join("layer.tar.zst");
        run_cmd(
            Command::new("zstd")
                .args(["-q", "-T0"])
                .arg(&tar)
                .arg("-o")
                .arg(&zst),
        )
        .context("compressing the layer tar (is zstd installed?)")?;
        let commit_store = dir.join("commit-store");
        um(
            &commit_store,
            &["image", "import"],
            &[&tar],
            &["--tag", "base"],
        )?;
        let upper = dir.join("upper");
        std::fs::create_dir_all(upper.join("etc"))?;
        std::fs::write(upper.join("etc/changed"), vec![b'x'; 4096])?;
        let entries = count_entries(&tar)?;
        let mib = std::fs::metadata(&tar)?.len() as f64 / (1 << 20) as f64;
        Ok(Inputs {
            tar,
            zst,
            registry_image: (commit_store.clone(), "base".to_string()),
            commit_store,
            upper,
            work: dir,
            clone_size: 1 << 30,
            clone_rig: OnceCell::new(),
            run_rig: OnceCell::new(),
            describe: format!("a layer tar of {entries} entries, {mib:.0} MiB"),
        })
    }
}

/// Run `unionmount SUB... --store STORE PATHS... REST...`.
pub fn um(store: &Path, sub: &[&str], paths: &[&Path], rest: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the unionmount binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(sub).arg("--store").arg(store);
    cmd.args(paths).args(rest);
    run_cmd(&mut cmd)
}

fn count_entries(tar: &Path) -> anyhow::Result<usize> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(tar)
        .output()
        .context("listing the layer tar")?;
    Ok(out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count())
}

/// Median times of one store workload and the median of run-by-run ratios.
pub struct StoreRow {
    pub name: &'static str,
    pub baseline: Vec<f64>,
    pub unionmount: Vec<f64>,
    pub ratio: Option<f64>,
    pub error: Option<String>,
}

/// Run one store workload `runs` times, alternating which side goes first.
pub fn measure(w: &StoreWorkload, inputs: &Inputs, runs: usize) -> StoreRow {
    let mut row = StoreRow {
        name: w.name,
        baseline: Vec::new(),
        unionmount: Vec::new(),
        ratio: None,
        error: None,
    };
    let mut ratios = Vec::new();
    for run in 0..runs {
        let res = one_run(w, inputs, run);
        match res {
            Ok((b, u)) => {
                if let Some(b) = b {
                    row.baseline.push(b);
                    ratios.push(u / b);
                }
                row.unionmount.push(u);
            }
            Err(e) => {
                row.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    row.ratio = median(&ratios);
    row
}

/// (baseline seconds, unionmount seconds) of one run.
fn one_run(w: &StoreWorkload, inputs: &Inputs, run: usize) -> anyhow::Result<(Option<f64>, f64)> {
    let scratch = inputs.work.join(format!("run-{}-{run}", w.name));
    let result = match w.name {
        "import-tar" | "import-zstd" => {
            let (src, zstd) = if w.name == "import-tar" {
                (&inputs.tar, false)
            } else {
                (&inputs.zst, true)
            };
            let mut b = 0.0;
            let mut u = 0.0;
            for side in [run % 2, 1 - run % 2] {
                if side == 0 {
                    b = timed(|| extract(src, zstd, &scratch.join("tar")))?;
                } else {
                    let store = scratch.join("store");
                    u = timed(|| um(&store, &["image", "import"], &[src], &["--tag", "b"]))?;
                }
            }
            Ok((Some(b), u))
        }
        "pull" | "pull-skopeo" | "push" => {
            super::registry_rows::one_run(w.name, inputs, &scratch, run)
        }
        "ctr-import" | "ctr-run" => super::containerd_rows::one_run(w.name, inputs, &scratch, run),
        "clone-copyup" => inputs.clone_rig().and_then(|rig| rig.one_run(run)),
        "run-true" => inputs.run_rig().and_then(|rig| rig.one_run(run)),
        _ => {
            let tag = format!("commit{run}");
            let u = timed(|| {
                um(
                    &inputs.commit_store,
                    &["commit"],
                    &[&inputs.upper],
                    &["--tag", &tag, "--from", "base"],
                )
            })?;
            Ok((None, u))
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

pub fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The baseline: `tar -x` into a new directory, then a syncfs of it.
fn extract(tar: &Path, zstd: bool, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(dest);
    if zstd {
        cmd.arg("--zstd");
    }
    run_cmd(cmd.arg("-xf").arg(tar))?;
    let fd = std::fs::File::open(dest)?;
    rustix::fs::syncfs(&fd).context("syncfs")?;
    Ok(())
}

pub fn markdown(rows: &[StoreRow], describe: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nLayer store, containerd and copy-up by FICLONE, on {describe} (median of run-by-run ratios to the baseline):\n"
    );
    let _ = writeln!(
        s,
        "| workload | baseline | baseline s | unionmount s | ratio | goal |\n|---|---|---:|---:|---:|---|"
    );
    for r in rows {
        let w = find(r.name);
        let u = if r.unionmount.is_empty() {
            "failed".to_string()
        } else {
            f2(median(&r.unionmount))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {u} | {} | {} |",
            w.about,
            w.baseline.unwrap_or("–"),
            f2(median(&r.baseline)),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}×")),
            w.goal,
        );
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(
            s,
            "\n- {} failed: {}",
            r.name,
            r.error.as_deref().unwrap_or("").replace('|', "/")
        );
    }
    s
}

/// The store rows as a JSON array (one object per line).
pub fn json(rows: &[StoreRow]) -> String {
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let w = find(r.name);
            format!(
                "    {{\"name\": {}, \"about\": {}, \"baseline\": {}, \"ok\": {}, \"baseline_median_s\": {}, \"unionmount_median_s\": {}, \"ratio\": {}, \"error\": {}}}",
                jstr(r.name),
                jstr(w.about),
                w.baseline.map_or("null".into(), jstr),
                r.error.is_none() && !r.unionmount.is_empty(),
                jnum(median(&r.baseline)),
                jnum(median(&r.unionmount)),
                jnum(r.ratio),
                r.error.as_deref().map_or("null".into(), jstr),
            )
        })
        .collect();
    format!("[\n{}\n  ]", lines.join(",\n"))
}

fn find(name: &str) -> &'static StoreWorkload {
    STORE_WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .expect("store workload names come from STORE_WORKLOADS")
}
