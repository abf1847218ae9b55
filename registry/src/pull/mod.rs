//! `pull`: an image from a registry into the store.
//!
//! The manifest (from an index, the one for the platform asked) and the
//! config come first; then the layers the store lacks are fetched by a
//! bounded pool of threads, each unpacking its layer while it downloads
//! (see `blob`): one pass over each blob. Everything is staged in one store
//! transaction, so nothing is visible until the image is whole. Blobs are
//! downloaded into the store's `partial/`, which outlives a killed pull:
//! the next pull resumes them.

mod blob;
pub mod manifest;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use layerstore::image::{self, ConfigView, Descriptor, REF_NAME};
use layerstore::store::Txn;
use layerstore::unpack::{self, UnpackOptions};
use layerstore::{Digest, Store};
use oci_client::RegistryOperation;

use crate::client::{self, Session};
use crate::reference::Reference;
pub use manifest::Platform;

/// Annotation of a pulled image's index entry: the reference it was
/// pulled by (normalized, without digest).
pub const SOURCE_REF: &str = "io.unionmount.source.ref";
/// Annotation: the digest the reference resolved to in the registry (the
/// index's for a multi-platform image), as Docker's RepoDigests.
pub const SOURCE_DIGEST: &str = "io.unionmount.source.digest";

/// Layers downloaded at once by default.
pub const JOBS: usize = 3;

/// Why a layer of this media type cannot be pulled, if it cannot. Foreign
/// (non-distributable) layers are pulled from the registry, as Docker on
/// Linux pulls them; their `urls` are not followed: a manifest must not
/// send us to arbitrary hosts.
fn refuse_layer(l: &Descriptor) -> Option<String> {
    let what = format!("layer {}", l.digest);
    image::check_layer_type(&l.media_type, &what)
        .err()
        .map(|e| e.to_string())
}

/// Progress of the layer downloads (one bar each, on a terminal).
pub trait Bars: Send + Sync {
    fn add(&self, name: &str, total: u64) -> Box<dyn Bar>;
}

/// One layer's bar.
pub trait Bar: Send + Sync {
    fn set(&self, done: u64);
    fn finish(&self, msg: &str);
}

#[derive(Default)]
pub struct PullOptions {
    /// `--platform` (default: this machine).
    pub platform: Option<String>,
    pub all_tags: bool,
    pub client: client::Options,
    /// Layers in flight (default `JOBS`).
    pub jobs: Option<usize>,
    pub bars: Option<Box<dyn Bars>>,
}

/// An image that was pulled.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub reference: Reference,
    /// The manifest's digest in the store: the registry's, unless the
    /// store had some layers under blobs of its own (`plan`).
    pub manifest: Digest,
    /// The config digest (the image id).
    pub id: Digest,
    /// Layers fetched from the registry (the others were in the store).
    pub fetched: usize,
}

/// What the worker threads share.
pub struct Ctx {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) session: Session,
    pub(crate) partial: PathBuf,
    /// `registry/repository`, for messages.
    pub(crate) repo: String,
}

/// Pull `r` (every tag of its repository with `all_tags`) into `store`.
pub fn pull(store: &Store, r: &Reference, opts: &PullOptions) -> Result<Vec<Pulled>, String> {
    let want = Platform::parse_or_host(opts.platform.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("pull: cannot start the network runtime: {e}"))?;
    let session = rt.block_on(client::connect(r, RegistryOperation::Pull, &opts.client))?;
    let ctx = Ctx {
        rt,
        session,
        partial: store.partial_dir(),
        repo: r.name(),
    };
    let refs = if opts.all_tags {
        if r.digest.is_some() {
            return Err(format!("{r}: --all-tags takes a name without a digest"));
        }
        tags(&ctx, r)?.iter().map(|t| r.with_tag(t)).collect()
    } else {
        vec![r.clone()]
    };
    refs.iter()
        .map(|r| pull_one(store, &ctx, r, &want, opts))
        .collect()
}

/// Every tag of `r`'s repository (pages followed).
fn tags(ctx: &Ctx, r: &Reference) -> Result<Vec<String>, String> {
    let s = &ctx.session;
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = ctx
            .rt
            .block_on(s.client.list_tags(
                &s.reference,
                &s.auth,
                Some(1000),
                out.last().map(String::as_str),
            ))
            .map_err(|e| format!("{}: listing tags: {}", r.name(), manifest::describe(&e)))?;
        let n = page.tags.len();
        let fresh: Vec<String> = page.tags.into_iter().filter(|t| !out.contains(t)).collect();
        if fresh.is_empty() {
            break;
        }
        out.extend(fresh);
        if n < 1000 {
            break;
        }
    }
    if out.is_empty() {
        return Err(format!("{}: the repository has no tags", r.name()));
    }
    Ok(out)
}

/// A layer to fetch.
struct Job<'a> {
    desc: &'a Descriptor,
    diff: &'a Digest,
    /// Unpack while downloading (the store lacks the layer).
    unpack: bool,
}

/// A fetched layer: its verified blob in `partial/`, and its tree if unpacked.
struct Fetched {
    blob: PathBuf,
    digest: Digest,
    tree: Option<(PathBuf, Digest)>,
}

fn pull_one(
    store: &Store,
    ctx: &Ctx,
    r: &Reference,
    want: &Platform,
    opts: &PullOptions,
) -> Result<Pulled, String> {
    let res = manifest::resolve(ctx, r, want)?;
    let m = &res.manifest;
    let cfg_bytes = match store.blobs().read_verified(&m.config.digest) {
        Ok(b) => b,
        Err(_) => small_blob(ctx, &m.config)?,
    };
    let cwhat = format!("config {}", m.config.digest);
    let cfg: ConfigView = image::parse_json(&cfg_bytes, &cwhat).map_err(|e| e.to_string())?;
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(format!(
            "{cwhat}: {} diff_ids for {} layers",
            cfg.rootfs.diff_ids.len(),
            m.layers.len()
        ));
    }
    if let Some(why) = m.layers.iter().find_map(refuse_layer) {
        return Err(why);
    }
    // A single-platform image asked for by --platform must be that one
    // (an index was already picked from; without --platform, as Docker, any).
    let single = res.repo_digest == res.desc.digest;
    if opts.platform.is_some() && single {
        check_platform(&cfg, want, r)?;
    }
    let mut txn = Txn::new(store).map_err(|e| e.to_string())?;
    let known = known_layers(store);
    let plan = plan(store, m.layers.iter().zip(&cfg.rootfs.diff_ids), &known);
    let fetched = run_jobs(ctx, &plan.jobs, txn.dir(), store.unpack_options(), opts)?;
    stage(&mut txn, &fetched).map_err(|e| e.to_string())?;
    txn.unpack_layers(&plan.local).map_err(|e| e.to_string())?;
    txn.add_bytes(&cfg_bytes).map_err(|e| e.to_string())?;
    let mut desc = if plan.swaps.is_empty() {
        txn.add_bytes(&res.bytes).map_err(|e| e.to_string())?;
        res.desc.clone()
    } else {
        let (local, bytes) = swap_layers(m, &plan.swaps, &res.desc);
        txn.add_bytes(&bytes).map_err(|e| e.to_string())?;
        local
    };
    if let Some(t) = r.store_tag() {
        desc.annotations.insert(REF_NAME.to_string(), t);
    }
    let source = Reference {
        digest: None,
        ..r.clone()
    };
    desc.annotations
        .insert(SOURCE_REF.to_string(), source.to_string());
    desc.annotations
        .insert(SOURCE_DIGEST.to_string(), res.repo_digest.to_string());
    let desc_digest = desc.digest.clone();
    txn.add_ref(desc);
    txn.commit().map_err(|e| e.to_string())?;
    // Adopted (linked into blobs/): the download copies can go.
    for f in &fetched {
        let _ = fs::remove_file(&f.blob);
    }
    Ok(Pulled {
        reference: r.clone(),
        manifest: desc_digest,
        id: m.config.digest.clone(),
        fetched: fetched.len(),
    })
}

/// The manifest the store keeps when it has some layers under its own
/// blobs: `m` naming those, with `registry`'s platform. The registry's
/// digest stays on the index entry (`SOURCE_DIGEST`), so a pinned name
/// still finds the image.
fn swap_layers(
    m: &image::Manifest,
    swaps: &HashMap<Digest, Descriptor>,
    registry: &Descriptor,
) -> (Descriptor, Vec<u8>) {
    let layers = m
        .layers
        .iter()
        .map(|l| swaps.get(&l.digest).unwrap_or(l).clone())
        .collect();
    let (mut desc, bytes, _) = image::relayered(m.clone(), layers);
    desc.platform = registry.platform.clone();
    (desc, bytes)
}

/// The image's config names the platform asked for.
fn check_platform(cfg: &ConfigView, want: &Platform, r: &Reference) -> Result<(), String> {
    let os = cfg.os.as_deref().unwrap_or("linux");
    let arch = cfg.architecture.as_deref().unwrap_or("");
    if os == want.os && arch == want.arch {
        return Ok(());
    }
    Err(format!(
        "{r}: the image is for {os}/{arch}, not the platform asked, {want}"
    ))
}

/// What a pull does with each layer of the manifest.
#[derive(Default)]
struct Plan<'a> {
    /// Layers to download (and unpack when the store lacks their tree).
    jobs: Vec<Job<'a>>,
    /// (blob, diff id): blobs the store has but has not unpacked.
    local: Vec<(Digest, Digest)>,
    /// Layers the store has under another blob (the same diff id,
    /// compressed otherwise): the registry's descriptor's digest, and the
    /// store's descriptor that replaces it.
    swaps: HashMap<Digest, Descriptor>,
}

/// Which layers to fetch (and unpack), and which the store has. A blob the
/// store has is never fetched. Nor is a layer the store has unpacked with
/// a blob of its own (`known`, by diff id), as Docker skips by diff id: the
/// image then names that blob. A layer unpacked without a blob left is
/// fetched but not unpacked again.
fn plan<'a>(
    store: &Store,
    layers: impl Iterator<Item = (&'a Descriptor, &'a Digest)>,
    known: &HashMap<Digest, Descriptor>,
) -> Plan<'a> {
    let mut p = Plan::default();
    let mut seen = BTreeSet::new();
    let mut unpacking = BTreeSet::new();
    for (desc, diff) in layers {
        if !seen.insert(desc.digest.clone()) {
            continue;
        }
        let unpacked = store.layer_dir(diff).is_dir();
        if store.blobs().contains(&desc.digest) {
            if !unpacked {
                p.local.push((desc.digest.clone(), diff.clone()));
            }
            continue;
        }
        if let Some(mine) = known.get(diff).filter(|_| unpacked) {
            p.swaps.insert(desc.digest.clone(), mine.clone());
            continue;
        }
        let unpack = !unpacked && unpacking.insert(diff.clone());
        p.jobs.push(Job { desc, diff, unpack });
    }
    p
}

/// The store's layer blobs by diff id, from the images it holds.
fn known_layers(store: &Store) -> HashMap<Digest, Descriptor> {
    let mut known = HashMap::new();
    for info in store.images().unwrap_or_default() {
        let pairs = info
            .manifest
            .layers
            .iter()
            .zip(&info.config.rootfs.diff_ids);
        for (desc, diff) in pairs {
            if store.blobs().contains(&desc.digest) {
                known.entry(diff.clone()).or_insert_with(|| desc.clone());
            }
        }
    }
    known
}

/// Adopt the fetched blobs (a hard link: `partial/` keeps its copy until
/// the commit is done) and unpacked trees into the transaction.
fn stage(txn: &mut Txn<'_>, fetched: &[Fetched]) -> layerstore::Result<()> {
    for f in fetched {
        let staged = txn.dir().join(format!("pulled-{}", f.digest.hex()));
        match fs::hard_link(&f.blob, &staged) {
            Ok(()) => txn.add_staged(staged, f.digest.clone()),
            // Another pull of the same blob committed it and removed the
            // download while we read it: the store has it now.
            Err(_) if txn.has_blob(&f.digest) => {}
            Err(e) => {
                return Err(layerstore::Error::Io {
                    what: format!("blob {}", f.digest),
                    error: e,
                });
            }
        }
        if let Some((dir, diff)) = &f.tree {
            txn.adopt_layer(dir.clone(), diff.clone())?;
        }
    }
    Ok(())
}

/// Fetch the jobs on a bounded pool of threads; the first error stops the
/// others from starting new ones.
fn run_jobs(
    ctx: &Ctx,
    jobs: &[Job<'_>],
    tmp: &Path,
    uopts: UnpackOptions,
    opts: &PullOptions,
) -> Result<Vec<Fetched>, String> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<Fetched, String>)>> = Mutex::new(Vec::new());
    let bars: Vec<Option<Box<dyn Bar>>> = jobs
        .iter()
        .map(|j| {
            opts.bars
                .as_ref()
                .map(|b| b.add(j.desc.digest.short(), j.desc.size))
        })
        .collect();
    let workers = opts
        .jobs
        .unwrap_or(JOBS)
        .clamp(1, 16)
        .min(jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let bar = bars[i].as_deref();
                    let tick = |n: u64| {
                        if let Some(b) = bar {
                            b.set(n)
                        }
                    };
                    let got = fetch_layer(ctx, &jobs[i], tmp, uopts, &tick);
                    if let Some(b) = bar {
                        b.finish(if got.is_ok() { "done" } else { "failed" });
                    }
                    if got.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, got));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Download one layer; unpack it on the way when asked.
fn fetch_layer(
    ctx: &Ctx,
    job: &Job<'_>,
    tmp: &Path,
    uopts: UnpackOptions,
    tick: blob::Tick<'_>,
) -> Result<Fetched, String> {
    fetch_and_unpack(ctx, job, tmp, uopts, tick).map_err(|e| foreign(job.desc, e))
}

fn fetch_and_unpack(
    ctx: &Ctx,
    job: &Job<'_>,
    tmp: &Path,
    uopts: UnpackOptions,
    tick: blob::Tick<'_>,
) -> Result<Fetched, String> {
    let mut rd = blob::BlobReader::open(ctx, job.desc, tick)?;
    if !job.unpack {
        let path = rd.finish()?;
        return Ok(Fetched {
            blob: path,
            digest: job.desc.digest.clone(),
            tree: None,
        });
    }
    let dest = tmp.join(format!("pull-layer-{}", job.diff.hex()));
    fs::create_dir(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let unpacked = unpack::unpack(&mut rd, &dest, uopts);
    if let Some(e) = rd.take_error() {
        // The network (or the partial file) failed, not the layer.
        return Err(e);
    }
    // Read to the end and check the digest even when unpacking failed: a
    // tampered blob is refused as such, and nothing of it is kept.
    let path = rd.finish()?;
    let got = match unpacked {
        Ok(u) => u,
        Err(e) => {
            let _ = fs::remove_file(&path);
            return Err(format!("layer {}: {e}", job.desc.digest));
        }
    };
    if &got.diff_id != job.diff {
        let _ = fs::remove_file(&path);
        return Err(format!(
            "layer {}: uncompressed content hashes to {}, the config says {}; refused",
            job.desc.digest, got.diff_id, job.diff
        ));
    }
    Ok(Fetched {
        blob: path,
        digest: job.desc.digest.clone(),
        tree: Some((dest, got.diff_id)),
    })
}

/// A foreign layer's error says that its urls were not tried.
fn foreign(d: &Descriptor, e: String) -> String {
    if d.is_foreign() {
        format!("{e} (a foreign layer: its urls are not followed)")
    } else {
        e
    }
}

/// A config: small, read whole, checked against its digest.
fn small_blob(ctx: &Ctx, d: &Descriptor) -> Result<Vec<u8>, String> {
    let what = format!("config {}", d.digest);
    if d.size > layerstore::blobs::MAX_JSON {
        return Err(format!("{what}: larger than 16 MiB"));
    }
    let s = &ctx.session;
    let mut buf: Vec<u8> = Vec::new();
    ctx.rt
        .block_on(
            s.client
                .pull_blob(&s.reference, &blob::oci_desc(d), &mut buf),
        )
        .map_err(|e| format!("{what}: {}", manifest::describe(&e)))?;
    let actual = Digest::of_bytes(&buf);
    if actual != d.digest {
        return Err(format!(
            "{what}: digest mismatch: content is {actual}; refused"
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(kind: &str) -> Descriptor {
        Descriptor::new(kind, Digest::of_bytes(kind.as_bytes()), 1)
    }

    #[test]
    fn unknown_layers_are_refused_in_one_line() {
        for ok in [
            image::OCI_LAYER,
            image::OCI_LAYER_GZIP,
            image::OCI_LAYER_ZSTD,
            image::DOCKER_FOREIGN,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ] {
            assert_eq!(refuse_layer(&layer(ok)), None, "{ok}");
        }
        let e = refuse_layer(&layer("application/x-rar")).unwrap();
        assert!(e.contains("unsupported layer media type"), "{e}");
    }

    #[test]
    fn the_plan_skips_what_the_store_has() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let have = store.blobs().put_bytes(store.tmp(), b"blob").unwrap();
        let (a, b, c) = (
            layer("a"),
            layer("b"),
            Descriptor::new("c", have.clone(), 4),
        );
        let (d1, d2) = (Digest::of_bytes(b"d1"), Digest::of_bytes(b"d2"));
        fs::create_dir_all(store.layer_dir(&d2)).unwrap();
        let layers = [(&a, &d1), (&a, &d1), (&b, &d2), (&c, &d1)];
        let p = plan(
            &store,
            layers.iter().map(|(x, y)| (*x, *y)),
            &HashMap::new(),
        );
        let (jobs, local) = (p.jobs, p.local);
        // One fetch of a repeated blob, unpacked; a layer unpacked already
        // (by diff id) only fetched; a blob the store has not fetched.
        let got: Vec<(Digest, bool)> = jobs
            .iter()
            .map(|j| (j.desc.digest.clone(), j.unpack))
            .collect();
        assert_eq!(
            got,
            vec![(a.digest.clone(), true), (b.digest.clone(), false)]
        );
        assert_eq!(local, vec![(have.clone(), d1.clone())]);
        // With a blob of its own for d2 (unpacked): b is not fetched but
        // swapped for it.
        let mine = Descriptor::new(image::OCI_LAYER_ZSTD, have, 4);
        let known = HashMap::from([(d2.clone(), mine.clone())]);
        let p = plan(&store, layers.iter().map(|(x, y)| (*x, *y)), &known);
        let fetched: Vec<&Digest> = p.jobs.iter().map(|j| &j.desc.digest).collect();
        assert_eq!(fetched, vec![&a.digest]);
        assert_eq!(p.swaps, HashMap::from([(b.digest.clone(), mine)]));
    }
}
