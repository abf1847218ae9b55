//! Proptest settings and checks shared by the fuzzing tests.

use layerstore::serde_json::{Value, json};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases per property: `UNIONMOUNT_FUZZ_CASES`, or the CI default.
pub fn config(ci_cases: u32) -> ProptestConfig {
    let cases = std::env::var("UNIONMOUNT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_cases);
    ProptestConfig {
        cases,
        // Failures are reported with their shrunk input; nothing is written
        // into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An error message must be one line of printable text.
pub fn one_line(e: &str) -> Result<(), TestCaseError> {
    prop_assert!(!e.is_empty(), "empty error");
    prop_assert!(
        !e.chars().any(char::is_control),
        "error with a control character: {e:?}"
    );
    prop_assert!(e.len() < 8192, "error of {} bytes", e.len());
    Ok(())
}

pub fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "../../../etc/passwd",
            "/etc/shadow",
            "sha256:../../x",
            "sha256:",
            "sha512:abcd",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "",
            "\u{0}",
            "a\nb",
            "\u{202e}",
        ])
        .prop_map(String::from),
        any::<String>(),
        "[a-z0-9:/.]{0,80}",
    ]
}

pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(-1)),
        Just(json!(2)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "schemaVersion",
                "mediaType",
                "config",
                "layers",
                "manifests",
                "digest",
                "size",
                "annotations",
                "platform",
                "rootfs",
                "diff_ids",
                "type",
                "Config",
                "Layers",
                "RepoTags",
                "architecture",
                "os",
            ])
            .prop_map(String::from),
            hostile_string(),
        ];
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Byte edits: (position as a fraction of the length, new byte).
pub fn mutations() -> impl Strategy<Value = Vec<(f64, u8)>> {
    vec((0.0..1.0f64, any::<u8>()), 1..8)
}

/// Set the checksum of every block that looks like a ustar or GNU header,
/// so that mutated fields reach the code behind the checksum test.
pub fn fix_checksums(mut b: Vec<u8>) -> Vec<u8> {
    for h in b.chunks_exact_mut(512) {
        if &h[257..262] == b"ustar" {
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&x| u32::from(x)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
    }
    b
}

pub fn mutate(mut b: Vec<u8>, edits: &[(f64, u8)], cut: Option<f64>) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for (at, byte) in edits {
        let i = ((*at * b.len() as f64) as usize).min(b.len() - 1);
        b[i] = *byte;
    }
    if let Some(c) = cut {
        b.truncate((c * b.len() as f64) as usize);
    }
    b
}
