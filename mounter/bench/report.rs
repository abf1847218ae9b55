//! Results: per workload and target, the median and range of wall times, the
//! ratio to kernel overlayfs computed run by run, the daemon's CPU and peak
//! RSS, its round trips, and how much the upper grew; written as Markdown,
//! JSON and CSV.

use std::fmt::Write;

use super::requests::{self, Counts};
use super::workload::Workload;

pub struct Sample {
    pub secs: f64,
    pub cpu: Option<f64>,
    pub rss_kib: Option<u64>,
    /// Disk space the upper took after the workload (targets with an upper).
    pub upper_kib: Option<u64>,
    /// The requests the daemon answered in the timed part (ours only).
    pub requests: Option<Counts>,
}

/// The runs of one workload on one target (None: not run).
pub struct Cell {
    pub workload: &'static str,
    pub target: String,
    pub runs: Vec<Option<Result<Sample, String>>>,
}

impl Cell {
    pub fn new(workload: &'static str, target: &str, runs: usize) -> Cell {
        Cell {
            workload,
            target: target.to_string(),
            runs: (0..runs).map(|_| None).collect(),
        }
    }

    fn secs(&self, run: usize) -> Option<f64> {
        match self.runs.get(run) {
            Some(Some(Ok(s))) => Some(s.secs),
            _ => None,
        }
    }
}

pub struct Meta {
    pub date: String,
    pub runs: usize,
    pub layers: String,
    pub targets: Vec<String>,
    pub skipped: Vec<(String, String)>,
    /// Workloads not run (a program they need is missing), and why.
    pub skipped_workloads: Vec<(String, String)>,
    pub seconds: f64,
}

pub struct Row {
    pub workload: &'static str,
    pub target: String,
    pub times: Vec<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub ratio: Option<f64>,
    pub cpu: Option<f64>,
    pub rss_kib: Option<u64>,
    pub upper_kib: Option<u64>,
    /// Median requests by kind over the runs.
    pub requests: Option<Counts>,
    pub error: Option<String>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub fn summarize(cells: &[Cell], _targets: &[String]) -> Vec<Row> {
    cells
        .iter()
        .map(|c| {
            let ok: Vec<&Sample> = c
                .runs
                .iter()
                .flatten()
                .filter_map(|r| r.as_ref().ok())
                .collect();
            let times: Vec<f64> = ok.iter().map(|s| s.secs).collect();
            let reference = cells
                .iter()
                .find(|o| o.workload == c.workload && o.target == "overlay");
            let ratios: Vec<f64> = match reference {
                Some(r) => (0..c.runs.len())
                    .filter_map(|i| Some(c.secs(i)? / r.secs(i).filter(|&x| x > 0.0)?))
                    .collect(),
                None => Vec::new(),
            };
            let cpus: Vec<f64> = ok.iter().filter_map(|s| s.cpu).collect();
            let counts: Vec<&Counts> = ok.iter().filter_map(|s| s.requests.as_ref()).collect();
            let error = c
                .runs
                .iter()
                .flatten()
                .find_map(|r| r.as_ref().err().cloned());
            Row {
                workload: c.workload,
                target: c.target.clone(),
                median: median(&times),
                min: times.iter().copied().reduce(f64::min),
                max: times.iter().copied().reduce(f64::max),
                ratio: median(&ratios),
                cpu: median(&cpus),
                rss_kib: ok.iter().filter_map(|s| s.rss_kib).max(),
                upper_kib: ok.iter().filter_map(|s| s.upper_kib).max(),
                requests: requests::medians(&counts),
                error,
                times,
            }
        })
        .collect()
}

pub fn skipped_line(skipped: &[(String, String)]) -> String {
    let v: Vec<String> = skipped
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    v.join("; ")
}

/// Seconds: three decimals below 0.1 s, two above.
pub fn f2(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| {
        if x < 0.1 {
            format!("{x:.3}")
        } else {
            format!("{x:.2}")
        }
    })
}

fn about(workloads: &[&Workload], name: &str) -> &'static str {
    workloads
        .iter()
        .find(|w| w.name == name)
        .map_or("", |w| w.about)
}

/// Markdown: a summary of ratios (rows: workloads, columns: targets), then
/// the full table.
pub fn markdown(meta: &Meta, workloads: &[&Workload], rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "unionmount bench, {}: {} run(s) per workload and target; {}; {:.0} s in all.",
        meta.date, meta.runs, meta.layers, meta.seconds
    );
    if !meta.skipped.is_empty() {
        let _ = writeln!(s, "\nSkipped: {}.", skipped_line(&meta.skipped));
    }
    if !meta.skipped_workloads.is_empty() {
        let _ = writeln!(
            s,
            "\nSkipped workloads: {}.",
            skipped_line(&meta.skipped_workloads)
        );
    }
    if meta.targets.iter().any(|t| t == "unionfs-fuse") {
        let _ = writeln!(
            s,
            "\nunionfs-fuse does not read overlayfs whiteouts or opaque directories: it sees more files than the others."
        );
    }
    let has_overlay = meta.targets.iter().any(|t| t == "overlay");
    if has_overlay {
        let others: Vec<&String> = meta.targets.iter().filter(|t| *t != "overlay").collect();
        let _ = writeln!(
            s,
            "\nTime relative to kernel overlayfs in the same run (median of run-by-run ratios; lower is faster):\n"
        );
        let mut head = String::from("| workload | overlay (s) |");
        let mut rule = String::from("|---|---:|");
        for t in &others {
            let _ = write!(head, " {t} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for w in workloads {
            let get = |t: &str| rows.iter().find(|r| r.workload == w.name && r.target == t);
            let mut line = format!(
                "| {} | {} |",
                w.about,
                get("overlay").map_or("–".into(), cell_secs)
            );
            for t in &others {
                let txt = match get(t) {
                    Some(r) if r.times.is_empty() => "failed".to_string(),
                    Some(r) => r.ratio.map_or("–".into(), |x| format!("{x:.2}×")),
                    None => "–".into(),
                };
                let _ = write!(line, " {txt} |");
            }
            let _ = writeln!(s, "{line}");
        }
    }
    let _ = writeln!(
        s,
        "\n| workload | target | median s | min–max s | × overlay | daemon CPU s | peak RSS MiB | upper MiB | requests |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let range = match (r.min, r.max) {
            (Some(a), Some(b)) => format!("{}–{}", f2(Some(a)), f2(Some(b))),
            _ => "–".into(),
        };
        let rss = r
            .rss_kib
            .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let upper = r
            .upper_kib
            .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {range} | {} | {} | {rss} | {upper} | {} |",
            about(workloads, r.workload),
            r.target,
            if r.times.is_empty() {
                "failed".into()
            } else {
                f2(r.median)
            },
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            f2(r.cpu),
            r.requests
                .as_ref()
                .map_or("–".into(), |c| requests::short(requests::total(c))),
        );
    }
    s.push_str(&requests_by_kind(workloads, rows));
    let errors: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nFailures:\n");
        for r in errors {
            let _ = writeln!(
                s,
                "- {} on {}: {}",
                r.workload,
                r.target,
                r.error.as_deref().unwrap_or("").replace('|', "/")
            );
        }
    }
    s
}

/// Each counted row's requests by kind: where the round trips go.
fn requests_by_kind(workloads: &[&Workload], rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows {
        let Some(c) = r.requests.as_ref().filter(|c| !c.is_empty()) else {
            continue;
        };
        if s.is_empty() {
            s.push_str("\nRequests the daemon answered in the timed part, by kind (medians):\n\n");
        }
        let _ = writeln!(
            s,
            "- {} on {}: {}",
            about(workloads, r.workload),
            r.target,
            requests::by_kind(c)
        );
    }
    s
}

fn cell_secs(r: &Row) -> String {
    if r.times.is_empty() {
        "failed".into()
    } else {
        f2(r.median)
    }
}

pub fn jstr(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub fn jnum(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or("null".into(), |x| format!("{x}"))
}

/// JSON, one result object per line; `store` is the layer-store rows'
/// array, if they ran.
pub fn json(meta: &Meta, workloads: &[&Workload], rows: &[Row], store: Option<&str>) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"date\": {},", jstr(&meta.date));
    let _ = writeln!(s, "  \"runs\": {},", meta.runs);
    let _ = writeln!(s, "  \"layers\": {},", jstr(&meta.layers));
    let t: Vec<String> = meta.targets.iter().map(|t| jstr(t)).collect();
    let _ = writeln!(s, "  \"targets\": [{}],", t.join(", "));
    let sk: Vec<String> = meta
        .skipped
        .iter()
        .map(|(n, w)| format!("{{\"target\": {}, \"reason\": {}}}", jstr(n), jstr(w)))
        .collect();
    let _ = writeln!(s, "  \"skipped\": [{}],", sk.join(", "));
    let skw: Vec<String> = meta
        .skipped_workloads
        .iter()
        .map(|(n, w)| format!("{{\"workload\": {}, \"reason\": {}}}", jstr(n), jstr(w)))
        .collect();
    let _ = writeln!(s, "  \"skipped_workloads\": [{}],", skw.join(", "));
    let _ = writeln!(s, "  \"results\": [");
    for (i, r) in rows.iter().enumerate() {
        let times: Vec<String> = r.times.iter().map(|x| format!("{x}")).collect();
        let _ = writeln!(
            s,
            "    {{\"workload\": {}, \"about\": {}, \"target\": {}, \"ok\": {}, \"times_s\": [{}], \"median_s\": {}, \"min_s\": {}, \"max_s\": {}, \"ratio\": {}, \"cpu_s\": {}, \"peak_rss_kib\": {}, \"upper_kib\": {}, \"requests\": {}, \"error\": {}}}{}",
            jstr(r.workload),
            jstr(about(workloads, r.workload)),
            jstr(&r.target),
            !r.times.is_empty(),
            times.join(", "),
            jnum(r.median),
            jnum(r.min),
            jnum(r.max),
            jnum(r.ratio),
            jnum(r.cpu),
            r.rss_kib.map_or("null".into(), |k| k.to_string()),
            r.upper_kib.map_or("null".into(), |k| k.to_string()),
            r.requests.as_ref().map_or("null".into(), requests::json),
            r.error.as_deref().map_or("null".into(), jstr),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    s.push_str("  ]");
    if let Some(store) = store {
        let _ = write!(s, ",\n  \"store\": {store}");
    }
    s.push_str("\n}\n");
    s
}

fn cnum(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x}"))
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "workload,target,runs_ok,median_s,min_s,max_s,ratio_to_overlay,daemon_cpu_s,peak_rss_kib,upper_kib,requests,error\n",
    );
    for r in rows {
        let err = r.error.as_deref().unwrap_or("").replace('"', "\"\"");
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},\"{err}\"",
            r.workload,
            r.target,
            r.times.len(),
            cnum(r.median),
            cnum(r.min),
            cnum(r.max),
            cnum(r.ratio),
            cnum(r.cpu),
            r.rss_kib.map_or(String::new(), |k| k.to_string()),
            r.upper_kib.map_or(String::new(), |k| k.to_string()),
            r.requests
                .as_ref()
                .map_or(String::new(), |c| requests::total(c).to_string()),
        );
    }
    s
}

/// "YYYY-MM-DD HH:MM UTC" from the system clock.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_pairwise() {
        let mk = |t: &str, v: &[f64]| Cell {
            workload: "x",
            target: t.into(),
            runs: v
                .iter()
                .map(|&secs| {
                    Some(Ok(Sample {
                        secs,
                        cpu: None,
                        rss_kib: None,
                        upper_kib: None,
                        requests: None,
                    }))
                })
                .collect(),
        };
        let cells = [mk("overlay", &[1.0, 2.0, 4.0]), mk("u", &[2.0, 2.0, 8.0])];
        let rows = summarize(&cells, &[]);
        // ratios 2, 1, 2 -> median 2 (not median 2 / median 2)
        assert_eq!(rows[1].ratio, Some(2.0));
        assert_eq!(rows[0].ratio, Some(1.0));
    }

    #[test]
    fn json_escapes() {
        assert_eq!(jstr("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
