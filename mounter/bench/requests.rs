//! The daemon's round trips per timed run: its request counts by kind, read
//! before and after the run (the warm-up's are not in them), summarised as
//! medians and shown beside the times.

use std::collections::BTreeMap;
use std::fmt::Write;

pub use super::target::Counts;

/// What the daemon answered between two readings of its counts.
pub fn between(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, &n)| {
            (
                k.clone(),
                n.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// The median count of every kind over the runs that have counts (a kind
/// missing from a run counts 0 there).
pub fn medians(runs: &[&Counts]) -> Option<Counts> {
    if runs.is_empty() {
        return None;
    }
    let kinds: std::collections::BTreeSet<&String> = runs.iter().flat_map(|c| c.keys()).collect();
    let mut out = BTreeMap::new();
    for k in kinds {
        let v: Vec<f64> = runs
            .iter()
            .map(|c| c.get(k).copied().unwrap_or(0) as f64)
            .collect();
        let m = super::report::median(&v).unwrap_or(0.0) as u64;
        if m > 0 {
            out.insert(k.clone(), m);
        }
    }
    Some(out)
}

pub fn total(c: &Counts) -> u64 {
    c.values().sum()
}

/// 950, 12.3k, 1.20M: a count to read at a glance.
pub fn short(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// "lookup 20.0k, getattr 1.0k, …": the kinds, most frequent first.
pub fn by_kind(c: &Counts) -> String {
    let mut v: Vec<(&String, &u64)> = c.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut s = String::new();
    for (i, (k, n)) in v.iter().enumerate() {
        let _ = write!(s, "{}{k} {}", if i > 0 { ", " } else { "" }, short(**n));
    }
    s
}

/// `{"lookup": 12, ...}`.
pub fn json(c: &Counts) -> String {
    serde_json::to_string(c).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: &[(&str, u64)]) -> Counts {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn the_difference_of_two_readings_leaves_out_what_did_not_move() {
        let a = c(&[("lookup", 10), ("getattr", 5)]);
        let b = c(&[("lookup", 15), ("getattr", 5), ("create", 2)]);
        assert_eq!(between(&a, &b), c(&[("lookup", 5), ("create", 2)]));
    }

    #[test]
    fn medians_count_a_missing_kind_as_zero() {
        let (x, y, z) = (
            c(&[("lookup", 3), ("read", 1)]),
            c(&[("lookup", 5)]),
            c(&[("lookup", 4)]),
        );
        assert_eq!(medians(&[&x, &y, &z]), Some(c(&[("lookup", 4)])));
        assert_eq!(medians(&[]), None);
    }

    #[test]
    fn kinds_read_most_frequent_first() {
        let x = c(&[("getattr", 1500), ("lookup", 20_000), ("read", 7)]);
        assert_eq!(by_kind(&x), "lookup 20.0k, getattr 1.5k, read 7");
        assert_eq!(short(1_234_567), "1.23M");
        assert_eq!(total(&x), 21_507);
    }
}
