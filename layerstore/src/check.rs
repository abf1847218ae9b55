//! fsck's deep check of an unpacked layer: every object its tar describes is
//! there, with the right type, size, content, link target and whiteout form.
//! (Read-only: repairs re-unpack the whole layer.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ondisk::override_stat::{self, OverrideStat};
use ondisk::whiteout::{Marker, classify};
use ondisk::xattr::{self, Key, XattrNs};

use crate::digest::{Digest, HashingReader};
use crate::unpack::{self, UnpackOptions, split_path};
use crate::{Context, Error, Result};

#[derive(Debug, PartialEq)]
enum Expect {
    Dir,
    File { size: u64, digest: Digest },
    Symlink(Vec<u8>),
    Link,
    Whiteout,
    Special,
}

/// Compare the layer tree at `dir` with the layer stream `blob`; return the
/// differences (empty when the tree is intact).
pub fn check_layer(blob: impl Read, dir: &Path, opts: UnpackOptions) -> Result<Vec<String>> {
    let (_, plain) = unpack::decompress(blob).at(dir)?;
    // Guarded like an unpack: fsck must not be the way round the metadata bounds.
    let mut ar = tar::Archive::new(unpack::HeaderGuard::new(plain));
    let mut want: BTreeMap<Vec<u8>, Expect> = BTreeMap::new();
    let mut opaque: BTreeSet<Vec<u8>> = BTreeSet::new();
    // Owner, group and mode of files and directories (the last entry wins).
    let mut owners: BTreeMap<Vec<u8>, (u32, u32, u32)> = BTreeMap::new();
    let bad = |e: io::Error| {
        Error::invalid(
            dir.display().to_string(),
            format!("layer tar: {}", crate::unpack::tar_error(&e)),
        )
    };
    for entry in ar.entries().map_err(bad)? {
        let mut e = entry.map_err(bad)?;
        use tar::EntryType as T;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            continue;
        }
        let raw = e.path_bytes().into_owned();
        let Ok(comps) = split_path(&raw) else {
            continue;
        };
        let Some((name, parent)) = comps.split_last() else {
            continue;
        };
        let parent = parent.join(&b'/');
        let path = comps.join(&b'/');
        let marker = classify(name).unwrap_or(Marker::AufsMeta);
        if matches!(
            kind,
            T::Directory | T::Regular | T::Continuous | T::GNUSparse
        ) && let Ok(m) = unpack::read_meta(&mut e, "")
        {
            owners.insert(path.clone(), (m.uid, m.gid, m.mode & 0o7777));
        }
        let expect = match (marker, opts.privileged) {
            (Marker::AufsMeta, _) => continue,
            (Marker::Opaque, true) => {
                opaque.insert(parent);
                continue;
            }
            (Marker::Whiteout(t), true) => {
                let mut p = parent.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(t);
                replace(&mut want, p, Expect::Whiteout);
                continue;
            }
            _ => match kind {
                T::Directory => Expect::Dir,
                T::Regular | T::Continuous | T::GNUSparse => {
                    let mut h = HashingReader::new(&mut e);
                    io::copy(&mut h, &mut io::sink()).map_err(bad)?;
                    let (digest, size) = h.finish();
                    Expect::File { size, digest }
                }
                T::Symlink => Expect::Symlink(
                    e.link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default(),
                ),
                T::Link => Expect::Link,
                _ => Expect::Special,
            },
        };
        replace(&mut want, path, expect);
    }
    let mut problems = Vec::new();
    for (path, exp) in &want {
        let shown = String::from_utf8_lossy(path).into_owned();
        let p = dir.join(std::ffi::OsStr::from_bytes(path));
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(_) => {
                problems.push(format!("{shown}: missing"));
                continue;
            }
        };
        let ft = m.file_type();
        let ok = match exp {
            Expect::Dir => ft.is_dir(),
            Expect::File { size, digest } => {
                ft.is_file()
                    && m.len() == *size
                    && matches!(
                        File::open(&p).and_then(|f| HashingReader::new(f).finish_to_end()),
                        Ok((d, _)) if &d == digest
                    )
            }
            Expect::Symlink(t) => {
                ft.is_symlink()
                    && fs::read_link(&p)
                        .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == t.as_slice())
            }
            Expect::Link => !ft.is_dir(),
            Expect::Whiteout => ft.is_char_device() && m.rdev() == 0,
            // A device without privilege is an empty file.
            Expect::Special => !ft.is_dir(),
        };
        if !ok {
            problems.push(format!("{shown}: differs from the layer tar ({exp:?})"));
            continue;
        }
        if let (Expect::Dir | Expect::File { .. }, Some(&(uid, gid, mode))) =
            (exp, owners.get(path))
        {
            let got = if opts.privileged {
                (m.uid(), m.gid(), m.mode() & 0o7777)
            } else {
                let mut v = [0u8; 64];
                match rustix::fs::lgetxattr(&p, override_stat::XATTR, &mut v[..]) {
                    Ok(n) => OverrideStat::parse(&v[..n])
                        .map(|o| (o.uid, o.gid, o.mode))
                        .unwrap_or_default(),
                    Err(_) => Default::default(),
                }
            };
            if got != (uid, gid, mode) {
                problems.push(format!(
                    "{shown}: owner {}:{} mode {:o}, the layer tar says {uid}:{gid} mode {mode:o}",
                    got.0, got.1, got.2
                ));
            }
        }
    }
    for d in &opaque {
        let p = dir.join(std::ffi::OsStr::from_bytes(d));
        let mut v = [0u8; 4];
        let opaque = XattrNs::Trusted.name(Key::Opaque);
        let ok = matches!(rustix::fs::lgetxattr(&p, opaque, &mut v[..]), Ok(n) if v[..n] == *xattr::OPAQUE);
        if !ok {
            problems.push(format!(
                "{}: opaque marker missing",
                String::from_utf8_lossy(d)
            ));
        }
    }
    Ok(problems)
}

/// Record what a path should be; a non-directory hides what was below it.
fn replace(want: &mut BTreeMap<Vec<u8>, Expect>, path: Vec<u8>, exp: Expect) {
    // Below a non-directory nothing was unpacked (a whiteout there is skipped).
    for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
        if want.get(&path[..i]).is_some_and(|e| *e != Expect::Dir) {
            return;
        }
    }
    if exp != Expect::Dir {
        let mut prefix = path.clone();
        prefix.push(b'/');
        let below: Vec<Vec<u8>> = want
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            want.remove(&k);
        }
    }
    if exp == Expect::Dir && want.get(&path) == Some(&Expect::Dir) {
        return;
    }
    want.insert(path, exp);
}
