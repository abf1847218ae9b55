//! Micro-benchmarks of the hot paths under the union and the store: sha256
//! hashing, layer tar unpack, commit of an upper, name translation and the
//! union's lookup.
//!
//! `cargo bench` runs them all in a minute or two (short measurement times,
//! few samples: enough to see a regression of tens of percent, not of one);
//! `cargo bench -- lookup` runs the ones whose names hold "lookup";
//! `cargo test --all-targets` runs each once as a test. The fixtures are
//! made lazily, in a temporary directory ($TMPDIR), only for the benchmarks
//! the filter selects.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod commit;
mod fixture;
mod hashing;
mod lookup;
mod names;
mod unpack;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = micro;
    config = config();
    targets = hashing::bench, unpack::bench, commit::bench, names::bench, lookup::bench
}
criterion_main!(micro);
