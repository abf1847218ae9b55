//! Property-based fuzzing (proptest, stable Rust) of the layer unpacker, the
//! image loader (the image parsers: store_fuzz_parsers.rs).
//!
//! Properties:
//! - nothing panics;
//! - nothing is written outside the destination: a sentinel tree beside it
//!   (files, a directory, a symlink, xattrs) stays identical down to ctime,
//!   link counts and content, and nothing new appears beside it;
//! - every error is one line of printable text;
//! - unpacked without privilege, no setuid/setgid/sticky bit and no device
//!   node exists on disk;
//! - a refused image load stores nothing.
//!
//! Inputs: structured hostile tars (paths from an alphabet of `..`, `.`,
//! empty components, `/`, absolute paths to the sentinel, whiteout names, NUL,
//! non-UTF-8 and over-long names; files, directories, symlinks, hard links,
//! devices, fifos, PAX headers with path, linkpath, size, uid, gid, mtime
//! and xattr records, GNU long names and links, lying sizes), byte-mutated
//! valid tars, either plain or gzip/zstd-compressed (and mutated after
//! compression), random and mutated JSON for manifests, configs, indexes and
//! docker `manifest.json`, and whole OCI layouts and docker archives built
//! from all of these.
//!
//! CI runs a fixed, short number of cases per property (the argument of
//! `config` in each `proptest!` block: 160, 160, 512 and 48; the file takes
//! about ten seconds in a debug build). A long run:
//!
//! ```text
//! UNIONMOUNT_FUZZ_CASES=3000 cargo test --test store_fuzz
//! ```
//!
//! sets every property to that many cases (3000: about five minutes in a
//! debug build on two shared cores; `--release` is faster). The same
//! variable sets the mount-option properties (`cargo test --bin unionmount
//! options::fuzz`). PROPTEST_* variables such as PROPTEST_MAX_SHRINK_ITERS
//! still apply. A failure prints the smallest input proptest could shrink
//! it to.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use layerstore::image::{self};
use layerstore::serde_json::{self, Value, json};
use layerstore::unpack::{UnpackOptions, unpack};
use layerstore::{Digest, Store};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::store::fuzz::{
    config, fix_checksums, hostile_string, json_value, mutate, mutations, one_line,
};
use support::store::rawtar::RawTar;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------------------
// The sentinel: what must never change

/// Where a case runs: `dest` (the layer) and `sentinel` beside it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("store-fuzz")
            .tempdir()
            .expect("tempdir");
        let s = dir.path().join("sentinel");
        fs::create_dir_all(s.join("dir")).unwrap();
        fs::write(s.join("target"), "precious").unwrap();
        fs::write(s.join("dir/file"), "also precious").unwrap();
        std::os::unix::fs::symlink("target", s.join("link")).unwrap();
        let _ = rustix::fs::setxattr(
            s.join("target"),
            "user.mark",
            b"1",
            rustix::fs::XattrFlags::empty(),
        );
        fs::create_dir(dir.path().join("dest")).unwrap();
        Site { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn dest(&self) -> std::path::PathBuf {
        self.root().join("dest")
    }

    /// The absolute path the hostile alphabet's `@OUT@` stands for.
    fn outside(&self) -> Vec<u8> {
        self.root().join("sentinel").as_os_str().as_bytes().to_vec()
    }

    /// Everything beside `dest`, and the site root itself.
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let root = self.root();
        out.insert(".".into(), describe(root));
        for e in fs::read_dir(root).unwrap().flatten() {
            if e.file_name() == "dest" {
                continue;
            }
            walk(root, &e.path(), &mut out);
        }
        out
    }
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    out.insert(rel, describe(p));
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            walk(root, &e.path(), out);
        }
    }
}

/// Type, owner, mode, size, link count, inode, mtime, ctime, content or
/// link target, and xattrs of one object.
fn describe(p: &Path) -> String {
    let m = fs::symlink_metadata(p).unwrap();
    let what = if m.file_type().is_symlink() {
        format!("-> {:?}", fs::read_link(p).unwrap())
    } else if m.is_file() {
        format!("{:?}", fs::read(p).unwrap())
    } else {
        String::new()
    };
    let mut names = vec![0u8; 4096];
    let mut xattrs = Vec::new();
    if let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) {
        for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut v = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap_or(0);
            xattrs.push(format!("{name}={:?}", &v[..len]));
        }
    }
    format!(
        "{:o} {}:{} size={} nlink={} ino={} mtime={}.{} ctime={}.{} {what} {xattrs:?}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.size(),
        m.nlink(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Without privilege nothing on disk is setuid, setgid, sticky or a device.
fn nothing_special(dir: &Path) -> Result<(), TestCaseError> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        prop_assert!(
            ft.is_symlink() || m.mode() & 0o7000 == 0,
            "{:?}: mode {:o} on disk without privilege",
            e.path(),
            m.mode()
        );
        prop_assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "{:?}: a device on disk without privilege",
            e.path()
        );
        if ft.is_dir() {
            nothing_special(&e.path())?;
        }
    }
    Ok(())
}

/// Unpack `tar` at a fresh site in the given mode and check the properties.
fn check_unpack(tar: &dyn Fn(&Site) -> Vec<u8>, privileged: bool) -> Result<(), TestCaseError> {
    let site = Site::new();
    let bytes = tar(&site);
    let before = site.snapshot();
    let res = unpack(&bytes[..], &site.dest(), UnpackOptions { privileged });
    if let Err(e) = &res {
        one_line(&e.to_string())?;
    }
    let after = site.snapshot();
    prop_assert_eq!(before, after, "the sentinel changed (result {:?})", res);
    if !privileged {
        nothing_special(&site.dest())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Structured hostile tars

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(b"..".to_vec()),
        2 => Just(b".".to_vec()),
        2 => Just(Vec::new()),
        6 => prop::sample::select(vec!["a", "b", "d", "sentinel", "target", "dest", "link"])
            .prop_map(|s| s.as_bytes().to_vec()),
        4 => prop::sample::select(vec![
            ".wh.a", ".wh..", ".wh.", ".wh...", ".wh..wh..opq", ".wh..wh.plnk", ".wh.target",
            ".wh.sentinel",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(b"a\0b".to_vec()),
        1 => Just(b"\xff\xfe\n".to_vec()),
        1 => Just(vec![b'x'; 255]),
        1 => Just(vec![b'y'; 256]),
        3 => Just(b"@OUT@".to_vec()),
        3 => "[ab.]{1,3}".prop_map(String::into_bytes),
    ]
}

fn hostile_path() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["", "", "/", "./", "../", "//"]),
        vec(component(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(lead, comps, trailing)| {
            let mut p = lead.as_bytes().to_vec();
            p.extend(comps.join(&b'/'));
            if trailing {
                p.push(b'/');
            }
            p
        })
}

/// How a name longer than its header field travels.
#[derive(Clone, Copy, Debug)]
enum Long {
    Pax,
    Gnu,
}

#[derive(Clone, Debug)]
struct Ent {
    kind: u8,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    data: Vec<u8>,
    /// Header size when it lies.
    size: Option<u64>,
    pax: Vec<(String, Vec<u8>)>,
    long: Long,
    dev: (Vec<u8>, Vec<u8>),
}

fn pax_record() -> impl Strategy<Value = (String, Vec<u8>)> {
    let key = prop::sample::select(vec![
        "path",
        "linkpath",
        "size",
        "uid",
        "gid",
        "mtime",
        "SCHILY.xattr.user.x",
        "SCHILY.xattr.trusted.overlay.opaque",
        "SCHILY.xattr.trusted.overlay.redirect",
        "SCHILY.xattr.user.containers.override_stat",
        "SCHILY.xattr.security.capability",
        "SCHILY.xattr.",
        "SCHILY.xattr.user.\u{0}",
        "GNU.sparse.map",
        "comment",
    ]);
    let value = prop_oneof![
        hostile_path(),
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "4294967295",
            "18446744073709551615",
            "99999999999999999999",
            "1.5",
            "1e9",
            "y",
            "",
            "0,0,512,512",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        vec(any::<u8>(), 0..16),
    ];
    (key.prop_map(String::from), value)
}

fn entry() -> impl Strategy<Value = Ent> {
    (
        prop::sample::select(vec![
            b'0', b'0', b'0', b'5', b'5', b'2', b'2', b'1', b'1', b'3', b'4', b'6', b'7', b'g',
            b'S', b'V', b'X', 0u8,
        ]),
        hostile_path(),
        prop_oneof![hostile_path(), Just(b"@OUT@/target".to_vec())],
        prop_oneof![
            Just(0o644u32),
            Just(0o755),
            Just(0o4755),
            Just(0o7777),
            any::<u32>()
        ],
        vec(any::<u8>(), 0..700),
        prop::option::weighted(0.1, prop_oneof![0u64..4096, Just(u64::MAX / 2)]),
        vec(pax_record(), 0..3),
        prop_oneof![Just(Long::Pax), Just(Long::Gnu)],
        (
            prop::sample::select(vec!["", "0000001", "7777777", "9z", "\u{80}"]),
            prop::sample::select(vec!["", "0000003", "7777777", "-1"]),
        ),
    )
        .prop_map(
            |(kind, path, link, mode, data, size, pax, long, (ma, mi))| Ent {
                kind,
                path,
                link,
                mode,
                data,
                size,
                pax,
                long,
                dev: (ma.as_bytes().to_vec(), mi.as_bytes().to_vec()),
            },
        )
}

/// An entry that a real tool could write, of any kind, with any mode: most
/// of a hostile tar is like this, so the hostile parts are reached in many
/// states of the tree.
fn tame_entry() -> impl Strategy<Value = Ent> {
    let name = "[a-d]{1,2}(/[a-d]{1,2}){0,2}".prop_map(String::into_bytes);
    (
        entry(),
        name.clone(),
        prop_oneof![
            name,
            Just(b"@OUT@/target".to_vec()),
            Just(b"../../..".to_vec())
        ],
        prop::sample::select(vec![b'0', b'0', b'5', b'5', b'2', b'1', b'3', b'4', b'6']),
        vec(
            prop::sample::select(vec![
                ("SCHILY.xattr.user.x", "y"),
                ("SCHILY.xattr.trusted.overlay.opaque", "y"),
                ("uid", "1000"),
                ("gid", "1000"),
                ("mtime", "1.25"),
            ])
            .prop_map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
            0..2,
        ),
    )
        .prop_map(|(mut e, path, link, kind, pax)| {
            e.path = path;
            e.link = link;
            e.kind = kind;
            e.pax = pax;
            e.size = None;
            e.dev = (b"0000001".to_vec(), b"0000003".to_vec());
            e
        })
}

fn hostile_entries() -> impl Strategy<Value = Vec<Ent>> {
    vec(prop_oneof![3 => tame_entry(), 2 => entry()], 1..12)
}

fn subst(b: &[u8], outside: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"@OUT@") {
            out.extend_from_slice(outside);
            i += 5;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn gnu_long(t: &mut RawTar, kind: u8, name: &[u8]) {
    let mut data = name.to_vec();
    data.push(0);
    let mut h = RawTar::block(b"././@LongLink", kind, b"", data.len() as u64, 0o644);
    h[257..265].copy_from_slice(b"ustar  \0");
    t.push(h);
    t.data(&data);
}

fn pax_header(t: &mut RawTar, records: &[(String, Vec<u8>)]) {
    let data = support::store::rawtar::pax_records(records);
    t.header(b"PaxHeader", b'x', b"", data.len() as u64, 0o644);
    t.data(&data);
}

/// The bytes of a list of entries, `@OUT@` standing for `outside`.
fn build(ents: &[Ent], outside: &[u8]) -> Vec<u8> {
    let mut t = RawTar::default();
    for e in ents {
        let path = subst(&e.path, outside);
        let link = subst(&e.link, outside);
        let mut pax = e.pax.clone();
        for (_, v) in &mut pax {
            *v = subst(v, outside);
        }
        let long_path = path.len() > 100;
        let long_link = link.len() > 100;
        if matches!(e.long, Long::Pax) {
            if long_path {
                pax.push(("path".into(), path.clone()));
            }
            if long_link {
                pax.push(("linkpath".into(), link.clone()));
            }
        } else {
            if long_path {
                gnu_long(&mut t, b'L', &path);
            }
            if long_link {
                gnu_long(&mut t, b'K', &link);
            }
        }
        if !pax.is_empty() {
            pax_header(&mut t, &pax);
        }
        let carries_data = matches!(e.kind, b'0' | 0 | b'7' | b'S' | b'g' | b'V' | b'X');
        let size = e
            .size
            .unwrap_or(if carries_data { e.data.len() as u64 } else { 0 });
        let mut h = RawTar::block(
            &path[..path.len().min(100)],
            e.kind,
            &link[..link.len().min(100)],
            size.min(0o77777777777),
            e.mode & 0o7777777,
        );
        h[329..329 + e.dev.0.len()].copy_from_slice(&e.dev.0);
        h[337..337 + e.dev.1.len()].copy_from_slice(&e.dev.1);
        t.push(h);
        if carries_data {
            t.data(&e.data);
        }
    }
    t.finish()
}

#[derive(Clone, Copy, Debug)]
enum Comp {
    Plain,
    Gzip,
    Zstd,
}

fn compress(c: Comp, tar: &[u8]) -> Vec<u8> {
    match c {
        Comp::Plain => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

fn comp() -> impl Strategy<Value = Comp> {
    prop_oneof![4 => Just(Comp::Plain), 1 => Just(Comp::Gzip), 1 => Just(Comp::Zstd)]
}

/// A plausible layer: the kind of tar real tools write.
fn valid_entries() -> impl Strategy<Value = Vec<Ent>> {
    let name = "[a-d]{1,3}(/[a-d]{1,3}){0,2}".prop_map(String::into_bytes);
    vec(
        (
            prop::sample::select(vec![b'0', b'5', b'2', b'1']),
            name.clone(),
            name,
            vec(any::<u8>(), 0..2000),
        )
            .prop_map(|(kind, path, link, data)| Ent {
                kind,
                path,
                link,
                mode: 0o644,
                data,
                size: None,
                pax: Vec::new(),
                long: Long::Pax,
                dev: (b"0000000".to_vec(), b"0000000".to_vec()),
            }),
        1..12,
    )
    .prop_map(|mut ents| {
        // Hard links name a file made before them, as real tars do.
        let mut files: Vec<Vec<u8>> = Vec::new();
        for e in &mut ents {
            if e.kind == b'1' {
                match files.last() {
                    Some(f) if *f != e.path => e.link = f.clone(),
                    _ => e.kind = b'0',
                }
            }
            if e.kind == b'0' {
                files.push(e.path.clone());
            }
        }
        ents
    })
}

proptest! {
    #![proptest_config(config(160))]

    /// Structured hostile tars, plain or compressed, in both modes.
    #[test]
    fn hostile_tars_stay_confined(ents in hostile_entries(), c in comp()) {
        let tar = |s: &Site| compress(c, &build(&ents, &s.outside()));
        check_unpack(&tar, false)?;
        if is_root() {
            check_unpack(&tar, true)?;
        }
    }

    /// Valid tars with bytes changed (and maybe cut), before or after
    /// compression.
    #[test]
    fn mutated_tars_stay_confined(
        ents in valid_entries(),
        c in comp(),
        edits in mutations(),
        cut in prop::option::weighted(0.3, 0.0..1.0f64),
        after_compression in any::<bool>(),
        fix in any::<bool>(),
    ) {
        let tar = |s: &Site| {
            let plain = build(&ents, &s.outside());
            if after_compression {
                mutate(compress(c, &plain), &edits, cut)
            } else {
                let m = mutate(plain, &edits, cut);
                compress(c, &if fix { fix_checksums(m) } else { m })
            }
        };
        check_unpack(&tar, false)?;
        if is_root() {
            check_unpack(&tar, true)?;
        }
    }
}

// The loader: whole OCI layouts and docker archives

#[derive(Clone, Debug)]
struct Layout {
    /// Layer tars (plain), as entries.
    layers: Vec<(Vec<Ent>, Comp)>,
    /// Mess with what refers to what.
    wrong_diff_id: bool,
    wrong_size: bool,
    media_type: Option<String>,
    /// Replace one blob by a symlink to the sentinel.
    symlinked_blob: bool,
    /// Extra garbage in the index/manifest/config JSON.
    extra: Value,
    docker: bool,
    docker_names: (String, String),
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        vec(
            (prop_oneof![vec(entry(), 0..5), valid_entries()], comp()),
            1..3,
        ),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.2, hostile_string()),
        prop::bool::weighted(0.2),
        json_value(),
        any::<bool>(),
        (
            prop_oneof![Just("config.json".to_string()), hostile_string()],
            prop_oneof![Just("layer.tar".to_string()), hostile_string()],
        ),
    )
        .prop_map(
            |(
                layers,
                wrong_diff_id,
                wrong_size,
                media_type,
                symlinked_blob,
                extra,
                docker,
                docker_names,
            )| Layout {
                layers,
                wrong_diff_id,
                wrong_size,
                media_type,
                symlinked_blob,
                extra,
                docker,
                docker_names,
            },
        )
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// Write the layout (OCI directory, or a docker archive file) under the site.
fn make_source(l: &Layout, site: &Site) -> std::path::PathBuf {
    let outside = site.outside();
    let tars: Vec<(Vec<u8>, Vec<u8>)> = l
        .layers
        .iter()
        .map(|(ents, c)| {
            let plain = build(ents, &outside);
            (compress(*c, &plain), plain)
        })
        .collect();
    let mut diff_ids: Vec<Digest> = tars.iter().map(|(_, p)| Digest::of_bytes(p)).collect();
    if l.wrong_diff_id {
        diff_ids[0] = Digest::of_bytes(b"not it");
    }
    let config = json!({
        "architecture": image::host_arch(),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "x": l.extra,
    });
    let config = serde_json::to_vec(&config).unwrap();
    if l.docker {
        let mut t = RawTar::default();
        let (cname, lname) = &l.docker_names;
        let manifest = json!([{
            "Config": cname,
            "RepoTags": ["fuzz:latest"],
            "Layers": (0..tars.len()).map(|i| format!("{i}/{lname}")).collect::<Vec<_>>(),
        }]);
        t = t.file("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        if cname.len() < 100 && !cname.is_empty() {
            t = if l.symlinked_blob {
                // The config is a symlink to the host's file.
                let target = subst(b"@OUT@/target", &outside);
                t.entry(
                    cname.as_bytes(),
                    b'2',
                    &target[..target.len().min(100)],
                    0o777,
                    b"",
                )
            } else {
                t.entry(cname.as_bytes(), b'0', b"", 0o644, &config)
            };
        }
        for (i, (blob, _)) in tars.iter().enumerate() {
            let name = format!("{i}/{lname}");
            if name.len() < 100 {
                t = t.entry(name.as_bytes(), b'0', b"", 0o644, blob);
            }
        }
        let p = site.root().join("archive.tar");
        fs::write(&p, t.finish()).unwrap();
        return p;
    }
    let dir = site.root().join("layout");
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let layers: Vec<Value> = tars
        .iter()
        .map(|(blob, plain)| {
            let d = write_blob(&dir, blob);
            let mt = if blob.len() == plain.len() {
                image::OCI_LAYER
            } else {
                image::OCI_LAYER_GZIP
            };
            json!({"mediaType": l.media_type.clone().unwrap_or(mt.to_string()), "digest": d, "size": blob.len()})
        })
        .collect();
    let cd = write_blob(&dir, &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_MANIFEST,
        "config": {"mediaType": image::OCI_CONFIG, "digest": cd, "size": config.len() + usize::from(l.wrong_size)},
        "layers": layers,
        "annotations": {"x": l.extra.to_string()},
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(&dir, &manifest);
    if l.symlinked_blob {
        let victim = dir.join("blobs/sha256").join(cd.hex());
        fs::remove_file(&victim).unwrap();
        std::os::unix::fs::symlink(site.root().join("sentinel/target"), &victim).unwrap();
    }
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": image::OCI_MANIFEST, "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "fuzz"}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    dir
}

/// Names of the store's blobs and layers, and its index.
fn store_state(store: &Path) -> (Vec<String>, Vec<String>, Vec<u8>) {
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(store.join(d))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (
        names("blobs/sha256"),
        names("layers"),
        fs::read(store.join("index.json")).unwrap_or_default(),
    )
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn image_loads_stay_confined_and_store_nothing_on_error(l in layout()) {
        let site = Site::new();
        let src = make_source(&l, &site);
        let store_dir = site.root().join("store");
        let store = Store::open(&store_dir).unwrap();
        let before_store = store_state(&store_dir);
        let before = site.snapshot();
        let res = image::load(&store, &src, None);
        match &res {
            Err(e) => {
                one_line(&e.to_string())?;
                prop_assert_eq!(store_state(&store_dir), before_store, "a refused load stored something");
            }
            Ok(_) => {
                for d in fs::read_dir(store_dir.join("layers")).unwrap().flatten() {
                    if !is_root() {
                        nothing_special(&d.path())?;
                    }
                }
            }
        }
        drop(store);
        // The store and the source changed (they are ours); the sentinel must not.
        let keep = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.into_iter().filter(|(k, _)| k.starts_with("sentinel")).collect()
        };
        prop_assert_eq!(keep(before), keep(site.snapshot()), "the sentinel changed ({:?})", res);
        let names: Vec<String> = fs::read_dir(site.root()).unwrap().flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        for n in names {
            prop_assert!(
                ["sentinel", "dest", "store", "layout", "archive.tar"].contains(&n.as_str()),
                "stray {n} beside the store"
            );
        }
    }
}
