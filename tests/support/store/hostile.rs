//! A store under attack: hostile layer tars are imported, and each must be
//! refused with one line naming the entry (storing nothing) or confined to
//! its layer, with a directory outside the store left exactly as it was.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{Env, all_paths};

pub struct Hostile {
    pub env: Env,
    /// A directory outside the store that the tars aim at.
    pub outside: std::path::PathBuf,
}

impl Hostile {
    pub fn new() -> Hostile {
        let env = Env::new();
        let outside = env.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("target"), "precious").unwrap();
        // Store exists before the hostile imports.
        env.init_store();
        Hostile { env, outside }
    }

    pub fn import(&self, name: &str, tar: Vec<u8>) -> std::process::Output {
        let p = self.env.path().join(format!("{name}.tar"));
        fs::write(&p, tar).unwrap();
        self.env
            .um_out(&["image", "import", &p.display().to_string(), "--tag", name])
    }

    /// The tar must be refused, with `want` in the one-line message, and store nothing.
    pub fn refused(&self, name: &str, tar: Vec<u8>, want: &str) {
        let before = self.env.contents();
        let p = self.env.path().join(format!("{name}.tar"));
        fs::write(&p, tar).unwrap();
        let err = self
            .env
            .um_fail(&["image", "import", &p.display().to_string(), "--tag", name]);
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        assert_eq!(
            self.env.contents(),
            before,
            "{name}: refused import stored something"
        );
        self.untouched(name);
    }

    pub fn untouched(&self, name: &str) {
        assert_eq!(
            all_paths(&self.outside),
            vec!["target".to_string()],
            "{name}: wrote outside"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("target")).unwrap(),
            "precious",
            "{name}"
        );
        assert_eq!(
            fs::metadata(self.outside.join("target")).unwrap().nlink(),
            1,
            "{name}"
        );
        // Nothing beside the store, the tars and the outside dir appeared.
        for e in fs::read_dir(self.env.path()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                n == "store" || n == "outside" || n.ends_with(".tar"),
                "{name}: stray {n}"
            );
        }
        let tmp = self.env.store().join("tmp");
        // Staging is cleaned by the next command.
        self.env.um(&["image", "ls"]);
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "{name}: staging left behind"
        );
    }
}
