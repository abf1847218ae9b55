//! The overlay's xattrs: their names in both namespaces, their values, and
//! how a user's own xattrs in the overlay's namespace are escaped so that
//! they cannot pass for markers.

use crate::override_stat;

/// Which xattr namespace the overlay's own markers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*`, as kernel overlayfs mounted by root.
    Trusted,
    /// `user.overlay.*`, as kernel overlayfs with `userxattr`.
    User,
}

/// One of the overlay's markers, in whichever namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A directory hides the layers below ([`OPAQUE`]), or holds xattr
    /// whiteouts ([`OPAQUE_HOLDS_WHITEOUTS`]).
    Opaque,
    /// Where the lower content is (see [`crate::redirect`]).
    Redirect,
    /// The lower object copied up (see [`crate::origin`]).
    Origin,
    /// A copied-up file whose data is still the lower's.
    Metacopy,
    /// A directory holding entries with origins or redirects ([`IMPURE`]).
    Impure,
    /// The shown link count (see [`crate::nlink`]).
    Nlink,
    /// An empty regular file standing for a whiteout (kernel 6.7+).
    Whiteout,
    /// A directory holding such whiteouts (kernel 6.7+).
    Whiteouts,
}

impl Key {
    /// Every marker, as [`unescape`] hides them.
    pub const ALL: [Key; 8] = [
        Key::Opaque,
        Key::Redirect,
        Key::Origin,
        Key::Metacopy,
        Key::Impure,
        Key::Nlink,
        Key::Whiteout,
        Key::Whiteouts,
    ];

    /// The name after the namespace's prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Key::Opaque => "opaque",
            Key::Redirect => "redirect",
            Key::Origin => "origin",
            Key::Metacopy => "metacopy",
            Key::Impure => "impure",
            Key::Nlink => "nlink",
            Key::Whiteout => "whiteout",
            Key::Whiteouts => "whiteouts",
        }
    }

    /// The full names, trusted first (in the order a reader of a branch of
    /// unknown origin tries them).
    pub fn names(self) -> [&'static str; 2] {
        match self {
            Key::Opaque => ["trusted.overlay.opaque", "user.overlay.opaque"],
            Key::Redirect => ["trusted.overlay.redirect", "user.overlay.redirect"],
            Key::Origin => ["trusted.overlay.origin", "user.overlay.origin"],
            Key::Metacopy => ["trusted.overlay.metacopy", "user.overlay.metacopy"],
            Key::Impure => ["trusted.overlay.impure", "user.overlay.impure"],
            Key::Nlink => ["trusted.overlay.nlink", "user.overlay.nlink"],
            Key::Whiteout => ["trusted.overlay.whiteout", "user.overlay.whiteout"],
            Key::Whiteouts => ["trusted.overlay.whiteouts", "user.overlay.whiteouts"],
        }
    }

    fn from_suffix(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

impl XattrNs {
    /// Both namespaces, trusted first.
    pub const ALL: [XattrNs; 2] = [XattrNs::Trusted, XattrNs::User];

    pub fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        }
    }

    /// The full name of `key` in this namespace.
    pub fn name(self, key: Key) -> &'static str {
        key.names()[self as usize]
    }
}

/// `opaque` of an opaque directory.
pub const OPAQUE: &[u8] = b"y";
/// `opaque` of a directory that is not opaque but holds xattr whiteouts
/// (kernel 6.7+).
pub const OPAQUE_HOLDS_WHITEOUTS: &[u8] = b"x";
/// `impure` of a directory holding entries with origins or redirects.
pub const IMPURE: &[u8] = b"y";
/// `metacopy` as written here (the kernel may add a digest; only presence counts).
pub const METACOPY: &[u8] = b"";
/// `whiteout` of a whiteout file (only presence counts).
pub const WHITEOUT: &[u8] = b"";

/// fuse-overlayfs's private namespace.
pub const FUSE_OVERLAYFS_PREFIX: &str = "user.fuseoverlayfs.";
/// Every name an opaque marker may have in the wild.
pub const OPAQUE_NAMES: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// How a user xattr name is stored in a branch: the overlay's own prefix is escaped
/// the way the kernel does (`trusted.overlay.X` → `trusted.overlay.overlay.X`).
pub fn escape(ns: XattrNs, name: &str) -> String {
    match name.strip_prefix(ns.prefix()) {
        Some(rest) => format!("{}overlay.{rest}", ns.prefix()),
        None => name.to_string(),
    }
}

/// The name a stored xattr shows as in a mount writing markers in `ns`, or
/// None for the overlay's private ones.
pub fn unescape(ns: XattrNs, stored: &str) -> Option<String> {
    if let Some(rest) = stored.strip_prefix(ns.prefix()) {
        // Our own namespace: only the escaped names of users show.
        return rest
            .strip_prefix("overlay.")
            .map(|r| format!("{}{r}", ns.prefix()));
    }
    if stored.starts_with(FUSE_OVERLAYFS_PREFIX)
        || stored == override_stat::XATTR
        || stored.starts_with(XattrNs::Trusted.prefix())
    {
        return None;
    }
    // Keys under `user.overlay.` are markers even when markers are written in
    // `trusted.` (layers made by rootless tools).
    match stored.strip_prefix(XattrNs::User.prefix()) {
        Some(key) if Key::from_suffix(key).is_some() => None,
        _ => Some(stored.to_string()),
    }
}

/// The name a layer stores for an xattr of its tar: the overlay's names are
/// escaped in both namespaces, so a tar cannot forge opaque directories or
/// redirects, and the rootless override is the layer store's alone (None).
pub fn layer_name(tar_name: &str) -> Option<String> {
    if tar_name == override_stat::XATTR {
        return None;
    }
    for ns in XattrNs::ALL {
        if tar_name.starts_with(ns.prefix()) {
            return Some(escape(ns, tar_name));
        }
    }
    Some(tar_name.to_string())
}

/// The name an xattr of a layer (or an upper) goes into a tar as, or None
/// for the overlay's markers and the rootless override: the inverse of
/// [`layer_name`].
pub fn tar_name(layer_name: &str) -> Option<String> {
    if layer_name == override_stat::XATTR {
        return None;
    }
    for ns in XattrNs::ALL {
        if let Some(rest) = layer_name.strip_prefix(ns.prefix()) {
            return rest
                .strip_prefix("overlay.")
                .map(|r| format!("{}{r}", ns.prefix()));
        }
    }
    Some(layer_name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_kernels() {
        assert_eq!(XattrNs::Trusted.prefix(), "trusted.overlay.");
        assert_eq!(XattrNs::User.prefix(), "user.overlay.");
        for key in Key::ALL {
            for ns in XattrNs::ALL {
                assert_eq!(ns.name(key), format!("{}{}", ns.prefix(), key.suffix()));
            }
            assert_eq!(Key::from_suffix(key.suffix()), Some(key));
        }
        let suffixes: Vec<&str> = Key::ALL.iter().map(|k| k.suffix()).collect();
        assert_eq!(
            suffixes,
            [
                "opaque",
                "redirect",
                "origin",
                "metacopy",
                "impure",
                "nlink",
                "whiteout",
                "whiteouts"
            ]
        );
        assert_eq!(XattrNs::Trusted.name(Key::Opaque), "trusted.overlay.opaque");
        assert_eq!(XattrNs::User.name(Key::Redirect), "user.overlay.redirect");
        assert_eq!(
            Key::Whiteout.names(),
            ["trusted.overlay.whiteout", "user.overlay.whiteout"]
        );
        assert_eq!(OPAQUE_NAMES[2], "user.fuseoverlayfs.opaque");
    }

    #[test]
    fn values_are_the_kernels() {
        assert_eq!(OPAQUE, b"y");
        assert_eq!(OPAQUE_HOLDS_WHITEOUTS, b"x");
        assert_eq!(IMPURE, b"y");
        assert_eq!(METACOPY, b"");
        assert_eq!(WHITEOUT, b"");
    }

    #[test]
    fn overlay_xattrs_escape_both_ways() {
        let ns = XattrNs::Trusted;
        assert_eq!(
            escape(ns, "trusted.overlay.foo"),
            "trusted.overlay.overlay.foo"
        );
        assert_eq!(escape(ns, "user.foo"), "user.foo");
        assert_eq!(
            unescape(ns, "trusted.overlay.overlay.foo").as_deref(),
            Some("trusted.overlay.foo")
        );
        assert_eq!(unescape(ns, "trusted.overlay.opaque"), None);
        assert_eq!(unescape(ns, "user.overlay.redirect"), None);
        assert_eq!(
            unescape(ns, "user.overlay.mine").as_deref(),
            Some("user.overlay.mine")
        );
        assert_eq!(unescape(ns, "user.fuseoverlayfs.opaque"), None);
        assert_eq!(unescape(ns, "user.containers.override_stat"), None);
        assert_eq!(
            unescape(ns, "security.capability").as_deref(),
            Some("security.capability")
        );
        let user = XattrNs::User;
        assert_eq!(escape(user, "user.overlay.x"), "user.overlay.overlay.x");
        assert_eq!(unescape(user, "user.overlay.opaque"), None);
        assert_eq!(unescape(user, "trusted.overlay.opaque"), None);
        assert_eq!(
            unescape(user, "user.overlay.overlay.x").as_deref(),
            Some("user.overlay.x")
        );
        for name in ["user.a", "trusted.overlay.b", "user.overlay.c"] {
            let stored = escape(ns, name);
            assert_eq!(unescape(ns, &stored).as_deref(), Some(name));
        }
        for name in ["user.a", "user.overlay.c"] {
            let stored = escape(user, name);
            assert_eq!(unescape(user, &stored).as_deref(), Some(name));
        }
        // With markers in `user.`, the trusted namespace is the kernel's own
        // (root's mounts) and stays hidden.
        assert_eq!(escape(user, "trusted.overlay.b"), "trusted.overlay.b");
        assert_eq!(unescape(user, "trusted.overlay.b"), None);
    }

    #[test]
    fn a_layer_escapes_overlay_xattrs_of_its_tar() {
        assert_eq!(layer_name("user.foo").as_deref(), Some("user.foo"));
        assert_eq!(
            layer_name("trusted.overlay.opaque").as_deref(),
            Some("trusted.overlay.overlay.opaque")
        );
        assert_eq!(
            layer_name("user.overlay.redirect").as_deref(),
            Some("user.overlay.overlay.redirect")
        );
        assert_eq!(layer_name("user.containers.override_stat"), None);
    }

    #[test]
    fn a_tar_gets_the_users_xattrs_back() {
        assert_eq!(tar_name("trusted.overlay.opaque"), None);
        assert_eq!(tar_name("user.overlay.origin"), None);
        assert_eq!(tar_name("user.containers.override_stat"), None);
        assert_eq!(
            tar_name("trusted.overlay.overlay.opaque").as_deref(),
            Some("trusted.overlay.opaque")
        );
        assert_eq!(tar_name("user.foo").as_deref(), Some("user.foo"));
        for name in ["user.a", "trusted.overlay.b", "user.overlay.c"] {
            let stored = layer_name(name).expect("kept");
            assert_eq!(tar_name(&stored).as_deref(), Some(name));
        }
    }
}
