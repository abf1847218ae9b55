//! Name translation (the `ondisk` crate, as the union filesystem uses it):
//! the whiteout and opaque names of the OCI form, and the escaping of a
//! user's overlay xattrs, over mixed batches of names (per name in the
//! report).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use ondisk::whiteout;
use ondisk::xattr::{self, XattrNs};

const N: usize = 1000;

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("names");
    g.throughput(Throughput::Elements(N as u64));
    // Entry names as a listing meets them: mostly plain, some whiteouts and
    // opaque markers.
    let entries: Vec<Vec<u8>> = (0..N)
        .map(|i| match i % 10 {
            0 => format!(".wh.file{i:04}.txt").into_bytes(),
            1 => whiteout::OPAQUE.to_vec(),
            _ => format!("file{i:04}.txt").into_bytes(),
        })
        .collect();
    g.bench_function("oci_whiteout_target", |b| {
        b.iter(|| {
            entries
                .iter()
                .filter(|n| whiteout::target(black_box(n)).is_some())
                .count()
        })
    });
    g.bench_function("is_meta_name", |b| {
        b.iter(|| {
            entries
                .iter()
                .filter(|n| whiteout::is_meta_name(black_box(n)))
                .count()
        })
    });
    g.bench_function("oci_whiteout_name", |b| {
        b.iter(|| {
            entries
                .iter()
                .map(|n| whiteout::whiteout_name(black_box(n)).len())
                .sum::<usize>()
        })
    });
    // Xattr names as listxattr returns them: the user's own, security and
    // ACL names, the overlay's markers and a user's escaped overlay names.
    let kinds = [
        "user.mime_type",
        "security.selinux",
        "system.posix_acl_access",
        "trusted.overlay.opaque",
        "trusted.overlay.overlay.opaque",
        "user.overlay.redirect",
        "user.containers.override_stat",
        "trusted.overlay.origin",
    ];
    let stored: Vec<String> = (0..N).map(|i| kinds[i % kinds.len()].to_string()).collect();
    g.bench_function("unescape_xattr", |b| {
        b.iter(|| {
            stored
                .iter()
                .filter_map(|n| xattr::unescape(XattrNs::Trusted, black_box(n)))
                .count()
        })
    });
    let shown: Vec<String> = stored
        .iter()
        .filter_map(|n| xattr::unescape(XattrNs::Trusted, n))
        .collect();
    assert!(
        shown.iter().any(|n| n == "trusted.overlay.opaque"),
        "an escaped user xattr shows unescaped"
    );
    g.throughput(Throughput::Elements(shown.len() as u64));
    g.bench_function("escape_xattr", |b| {
        b.iter(|| {
            shown
                .iter()
                .map(|n| xattr::escape(XattrNs::Trusted, black_box(n)).len())
                .sum::<usize>()
        })
    });
    g.finish();
}
