//! Layer tar unpack: a few thousand small files in a hundred directories and
//! one big file, from a tar in memory into a fresh directory per iteration
//! (made and removed outside the timing; the unpack's own syncfs is timed).

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use layerstore::unpack::{UnpackOptions, unpack};

use crate::fixture;

/// Directories of small files and the big file's size (a tenth under `cargo test`).
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 30;
const BIG: usize = 32 << 20;

struct Fixture {
    tar: Vec<u8>,
    entries: u64,
    base: tempfile::TempDir,
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("unpack");
    g.sampling_mode(SamplingMode::Flat);
    let dirs = fixture::scaled(DIRS);
    let name = format!(
        "{}_small_files_and_{}MiB",
        dirs * FILES_PER_DIR,
        fixture::scaled(BIG) >> 20
    );
    g.throughput(Throughput::Elements(
        (dirs * (FILES_PER_DIR + 1) + 1) as u64,
    ));
    let mut fx: Option<Fixture> = None;
    g.bench_function(name, |b| {
        let fx = fx.get_or_insert_with(make);
        let opts = UnpackOptions::for_current_user();
        b.iter_batched(
            || tempfile::tempdir_in(fx.base.path()).expect("a destination directory"),
            |dest| {
                let u = unpack(fx.tar.as_slice(), dest.path(), opts).expect("unpacking");
                assert_eq!(u.entries, fx.entries, "entries unpacked");
                dest
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn make() -> Fixture {
    let dirs = fixture::scaled(DIRS);
    let mut b = tar::Builder::new(Vec::new());
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let mut entries = 0;
    let mut add = |b: &mut tar::Builder<Vec<u8>>, path: &str, kind, mode, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("building the tar");
        entries += 1;
    };
    for d in 0..dirs {
        add(
            &mut b,
            &format!("d{d:03}/"),
            tar::EntryType::Directory,
            0o755,
            &[],
        );
        for f in 0..FILES_PER_DIR {
            let len = (d * 131 + f * 977) % 4096 + 1;
            let data = vec![b'a' + (f % 26) as u8; len];
            let path = format!("d{d:03}/f{f:02}");
            add(&mut b, &path, tar::EntryType::Regular, 0o644, &data);
        }
    }
    let big: Vec<u8> = (0..fixture::scaled(BIG))
        .map(|i| (i * 7 + i / 65536) as u8)
        .collect();
    add(&mut b, "big.bin", tar::EntryType::Regular, 0o644, &big);
    let tar = b.into_inner().expect("finishing the tar");
    Fixture {
        tar,
        entries,
        base: fixture::tempdir("unpack"),
    }
}
