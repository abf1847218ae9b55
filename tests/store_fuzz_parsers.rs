//! Property-based fuzzing (proptest) of the image parsers: random and
//! mutated JSON for manifests, configs, indexes and docker `manifest.json`,
//! and digests. Nothing panics and every error is one line of printable
//! text. `UNIONMOUNT_FUZZ_CASES=N` sets the cases (CI: 512), as in
//! store_fuzz.rs.

mod support;

use layerstore::Digest;
use layerstore::image::{self, ConfigView, Descriptor, DockerEntry, Index, Manifest};
use layerstore::serde_json::{self};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::store::fuzz::{config, json_value, mutate, mutations, one_line};

// ---------------------------------------------------------------------------
// Parsers: manifests, configs, indexes, docker manifest.json, digests

fn valid_documents() -> Vec<Vec<u8>> {
    let d = Digest::of_bytes(b"x");
    vec![
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{d}","size":1}},"layers":[{{"mediaType":"{}","digest":"{d}","size":1}}],"annotations":{{"a":"b"}}}}"#,
            image::OCI_MANIFEST,
            image::OCI_CONFIG,
            image::OCI_LAYER_GZIP
        )
        .into_bytes(),
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#)
            .into_bytes(),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{d}","size":1,"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
            image::OCI_MANIFEST
        )
        .into_bytes(),
        br#"[{"Config":"abc.json","RepoTags":["a:b"],"Layers":["l/layer.tar"]}]"#.to_vec(),
    ]
}

fn json_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (
            0..4usize,
            mutations(),
            prop::option::weighted(0.2, 0.0..1.0f64)
        )
            .prop_map(|(i, edits, cut)| mutate(valid_documents()[i].clone(), &edits, cut)),
        vec(any::<u8>(), 0..256),
        (1..400usize).prop_map(|depth| {
            let mut s = "[".repeat(depth).into_bytes();
            s.extend("]".repeat(depth).into_bytes());
            s
        }),
    ]
}

fn parse_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    fn check<T>(r: layerstore::Result<T>) -> Result<Option<T>, TestCaseError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                one_line(&e.to_string())?;
                Ok(None)
            }
        }
    }
    if let Some(m) = check(image::parse_json::<Manifest>(bytes, "manifest"))? {
        // What parses serializes and parses back the same; its digests can
        // only name blobs, never paths.
        let again: Manifest = image::parse_json(&image::to_json(&m), "again").unwrap();
        prop_assert_eq!(&again, &m);
        for d in std::iter::once(&m.config).chain(&m.layers) {
            safe_digest(&d.digest)?;
        }
    }
    if let Some(c) = check(image::parse_json::<ConfigView>(bytes, "config"))? {
        for d in &c.rootfs.diff_ids {
            safe_digest(d)?;
        }
    }
    if let Some(i) = check(image::parse_json::<Index>(bytes, "index"))? {
        for d in &i.manifests {
            safe_digest(&d.digest)?;
        }
        let _ = image::pick_platform(&i.manifests, "index").map_err(|e| e.to_string());
    }
    check(image::parse_json::<Vec<DockerEntry>>(
        bytes,
        "manifest.json",
    ))?;
    check(image::parse_json::<Descriptor>(bytes, "descriptor"))?;
    if let Ok(s) = std::str::from_utf8(bytes)
        && let Some(d) = check(Digest::parse(s))?
    {
        safe_digest(&d)?;
    }
    Ok(())
}

fn safe_digest(d: &Digest) -> Result<(), TestCaseError> {
    let p = image::blob_path(d);
    let hex = p.strip_prefix("blobs/sha256/").unwrap_or("");
    prop_assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "digest {d} names {p}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parsers_never_panic_and_errors_are_one_line(bytes in json_input()) {
        parse_all(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
