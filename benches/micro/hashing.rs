//! sha256 of a buffer in memory, as blobs and layers are hashed: the goal is
//! at least 1 GB/s (criterion prints the throughput in GB/s).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use layerstore::Digest;

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    for (label, len) in [("64KiB", 64 << 10), ("16MiB", 16 << 20)] {
        let data: Vec<u8> = (0..len).map(|i: usize| (i * 31 + i / 4096) as u8).collect();
        g.throughput(Throughput::BytesDecimal(len as u64));
        g.bench_function(label, |b| b.iter(|| Digest::of_bytes(black_box(&data))));
    }
    g.finish();
}
