//! The union's lookup path, without FUSE: a `Union` over three read-only
//! lower layers sharing one directory of thousands of names (the middle layer
//! overrides some and whites out others, the top adds and whites out more),
//! and `lookup` of names that exist, names whited out and names that never
//! existed (per lookup in the report).

use std::ffi::OsString;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::Criterion;
use unionfs::{Atime, BranchConfig, Config, IdMap, ROOT_ID, Union, XattrNs};

use crate::fixture;

/// Names in the bottom layer (a tenth under `cargo test`).
const BOTTOM: usize = 5000;

struct Fixture {
    union: Union,
    dir: u64,
    existing: Vec<OsString>,
    whited_out: Vec<OsString>,
    missing: Vec<OsString>,
    _tmp: tempfile::TempDir,
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    let mut fx: Option<Fixture> = None;
    for kind in ["existing", "whited_out", "missing"] {
        g.bench_function(kind, |b| {
            let fx = fx.get_or_insert_with(make);
            let names = match kind {
                "existing" => &fx.existing,
                "whited_out" => &fx.whited_out,
                _ => &fx.missing,
            };
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % names.len();
                fx.union.lookup(fx.dir, black_box(&names[i])).is_ok()
            });
        });
    }
    g.finish();
}

fn make() -> Fixture {
    let bottom_n = fixture::scaled(BOTTOM);
    let batch = (bottom_n / 5).max(10);
    let tmp = fixture::tempdir("lookup");
    let layers: Vec<PathBuf> = ["top", "mid", "bottom"]
        .iter()
        .map(|l| tmp.path().join(l).join("d"))
        .collect();
    for l in &layers {
        fixture::dir(l);
    }
    let (top, mid, bottom) = (&layers[0], &layers[1], &layers[2]);
    for i in 0..bottom_n {
        fixture::file(&bottom.join(format!("f{i:05}")), 64, i);
    }
    for i in (0..bottom_n).step_by(10) {
        fixture::file(&mid.join(format!("f{i:05}")), 128, i);
    }
    for i in (1..bottom_n).step_by(10) {
        fixture::whiteout(mid, &format!("f{i:05}"));
    }
    for i in 0..bottom_n / 10 {
        fixture::file(&top.join(format!("t{i:05}")), 32, i);
    }
    for i in (2..bottom_n).step_by(10) {
        fixture::whiteout(top, &format!("f{i:05}"));
    }
    let branches = layers
        .iter()
        .map(|l| BranchConfig {
            path: l.parent().expect("a layer root").to_path_buf(),
            writable: false,
        })
        .collect();
    let union = Union::new(Config {
        branches,
        workdir: None,
        cow: false,
        xattr_ns: XattrNs::Trusted,
        uids: IdMap::default(),
        gids: IdMap::default(),
        volatile: false,
        metacopy: false,
        atime: Atime::Relative,
        nodiratime: false,
    })
    .expect("a union over the layers");
    let (dir, _) = union
        .lookup(ROOT_ID, "d".as_ref())
        .expect("looking up the shared directory");
    let name = |p: &str, i: usize| OsString::from(format!("{p}{i:05}"));
    // Existing names from every layer: overridden in the middle, only in the
    // bottom, only in the top.
    let existing: Vec<OsString> = (0..batch)
        .map(|k| match k % 3 {
            0 => name("f", (k * 10) % bottom_n),
            1 => name("f", (k * 10 + 5) % bottom_n),
            _ => name("t", k % (bottom_n / 10)),
        })
        .collect();
    let whited_out: Vec<OsString> = (0..batch)
        .map(|k| name("f", (k * 10 + 1 + k % 2) % bottom_n))
        .collect();
    let missing: Vec<OsString> = (0..batch).map(|k| name("nope", k)).collect();
    let fx = Fixture {
        union,
        dir: dir.id,
        existing,
        whited_out,
        missing,
        _tmp: tmp,
    };
    // The benchmark is only worth its numbers if the names resolve as meant.
    for n in &fx.existing {
        assert!(fx.union.lookup(fx.dir, n).is_ok(), "{n:?} should exist");
    }
    for n in fx.whited_out.iter().chain(&fx.missing) {
        assert!(
            fx.union.lookup(fx.dir, n).is_err(),
            "{n:?} should be hidden"
        );
    }
    fx
}
