//! Commit: an upper holding a few changes (files changed and added, a
//! whiteout, an opaque directory) on top of a store image of a few thousand
//! files becomes a new image (diff, compress, store the blob, unpack the new
//! layer, write the manifest and tag).

use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion, SamplingMode};
use layerstore::Store;

use crate::fixture;

/// Directories of the base image (a tenth under `cargo test`).
const DIRS: usize = 20;
const FILES_PER_DIR: usize = 100;

struct Fixture {
    store: Store,
    upper: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    g.sampling_mode(SamplingMode::Flat);
    let mut fx: Option<Fixture> = None;
    let seq = AtomicUsize::new(0);
    let name = format!("few_changes_on_{}_files", dirs() * FILES_PER_DIR);
    g.bench_function(name, |b| {
        let fx = fx.get_or_insert_with(make);
        // Each commit gets a change of its own, so each makes (and unpacks)
        // a new layer rather than finding the last one's in the store.
        b.iter_batched(
            || {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                fixture::file(&fx.upper.join("etc/changed"), 4096 + n % 4096, n);
                format!("c{n}")
            },
            |tag| {
                layerstore::diff::commit(&fx.store, &fx.upper, Some(&tag), Some("base"))
                    .expect("commit")
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// At least the three directories the upper changes.
fn dirs() -> usize {
    fixture::scaled(DIRS).max(3)
}

fn make() -> Fixture {
    let tmp = fixture::tempdir("commit");
    let rootfs = tmp.path().join("rootfs");
    for d in 0..dirs() {
        let dir = rootfs.join(format!("d{d:03}"));
        fixture::dir(&dir);
        for f in 0..FILES_PER_DIR {
            fixture::file(
                &dir.join(format!("f{f:02}")),
                (d * 131 + f * 977) % 4096 + 1,
                f,
            );
        }
    }
    let store = Store::open(&tmp.path().join("store")).expect("opening the store");
    layerstore::image::import(&store, &rootfs, Some("base")).expect("importing the base image");

    let upper = tmp.path().join("upper");
    fixture::dir(&upper.join("d000"));
    fixture::file(&upper.join("d000/f00"), 5000, 1);
    fixture::dir(&upper.join("etc"));
    fixture::file(&upper.join("etc/changed"), 4096, 2);
    fixture::dir(&upper.join("new"));
    fixture::file(&upper.join("new/a"), 100, 3);
    fixture::file(&upper.join("new/b"), 200, 4);
    fixture::dir(&upper.join("d001"));
    fixture::whiteout(&upper.join("d001"), "f01");
    fixture::dir(&upper.join("d002"));
    fixture::opaque(&upper.join("d002"));
    fixture::file(&upper.join("d002/only"), 64, 5);
    Fixture {
        store,
        upper,
        _tmp: tmp,
    }
}
