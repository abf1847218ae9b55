//! `unionmount image save` output read back by podman: `podman load` of a
//! docker-archive and of an OCI archive, for an image made by umoci (gzip
//! layers with whiteouts and an opaque directory) and for a committed one
//! (zstd layers). Podman keeps all its state in the test's directory (vfs
//! storage, private containers.conf and storage.conf); `load` needs no runtime.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use layerstore::serde_json::{self, Value};
use support::store::*;

/// podman with every path under `t`.
struct Podman {
    t: PathBuf,
}

impl Podman {
    fn new(t: &Path) -> Podman {
        let t = t.join("podman");
        for d in ["root", "run", "tmp"] {
            fs::create_dir_all(t.join(d)).expect("mkdir");
        }
        let p = |s: &str| t.join(s).display().to_string();
        fs::write(
            t.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\nimage_copy_tmp_dir = \"{}\"\n\
                 [containers]\nnetns = \"none\"\n",
                p("events.log"),
                p("tmp")
            ),
        )
        .expect("write containers.conf");
        fs::write(
            t.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p("root"),
                p("run")
            ),
        )
        .expect("write storage.conf");
        fs::write(t.join("registries.conf"), "").expect("write registries.conf");
        Podman { t }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.t.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.t.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.t.join("registries.conf"))
            .env("TMPDIR", self.t.join("tmp"))
            .arg("--root")
            .arg(self.t.join("root"))
            .arg("--runroot")
            .arg(self.t.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }

    fn inspect(&self, image: &str) -> Value {
        let v: Value = serde_json::from_str(&self.run(&["image", "inspect", image]))
            .expect("podman image inspect JSON");
        v[0].clone()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs image mounts are plain directories, but keep podman's books straight.
        let _ = self
            .cmd()
            .args(["image", "unmount", "--all"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Save `image` as docker-archive and as oci-archive, `podman load` both and
/// check podman's view: names, id (the config digest), layers (the diff ids,
/// in order) and, if given, the merged tree against `reference`.
fn check_podman_load(env: &Env, pm: &Podman, image: &str, name: &str, reference: Option<&Path>) {
    let ours: Value =
        serde_json::from_str(&env.um(&["image", "inspect", image])).expect("inspect JSON");
    let diff_ids: Vec<String> = ours["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["diffId"].as_str().expect("diffId").to_string())
        .collect();
    assert!(!diff_ids.is_empty());
    let config = ours["manifest"]["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    for (format, file) in [("docker-archive", "da.tar"), ("oci-archive", "oa.tar")] {
        let out = env.path().join(format!("{name}-{file}"));
        let tag = format!("localhost/{name}:{}", format.replace('-', ""));
        env.um(&[
            "image",
            "save",
            image,
            "--format",
            format,
            &out.display().to_string(),
            "--ref",
            &tag,
        ]);
        let loaded = pm.run(&["load", "-i", &out.display().to_string()]);
        assert!(
            loaded.contains(&tag),
            "{format}: podman load said:\n{loaded}"
        );
        let images = pm.run(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
        assert!(
            images
                .lines()
                .any(|l| l.starts_with(&format!("{tag} ")) && config.contains(&l[tag.len() + 1..])),
            "{format}: {tag} with id {config} missing from podman images:\n{images}"
        );
        let v = pm.inspect(&tag);
        assert_eq!(
            v["Id"].as_str().map(|id| format!("sha256:{id}")),
            Some(config.clone()),
            "{format}: image id"
        );
        let layers: Vec<String> = v["RootFS"]["Layers"]
            .as_array()
            .expect("RootFS.Layers")
            .iter()
            .map(|l| l.as_str().expect("layer").to_string())
            .collect();
        assert_eq!(layers, diff_ids, "{format}: podman's layers are ours");
        if let Some(reference) = reference {
            let dir = pm.run(&["image", "mount", &tag]);
            assert_same_tree(Path::new(dir.trim()), reference);
            pm.run(&["image", "unmount", &tag]);
        }
    }
}

#[test]
fn podman_loads_saved_docker_and_oci_archives() {
    let test = "podman_loads_saved_docker_and_oci_archives";
    if !need_root(test) || !need_tools(test, &["podman", "umoci"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = podman_fixture(t);
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    let pm = Podman::new(t);

    // Three gzip layers: files deleted, a directory replaced, an opaque
    // directory. Podman applies the whiteouts the way umoci does.
    check_podman_load(&env, &pm, "v3", "umoci", Some(&fx.reference));

    // A committed image: a zstd layer on top, with a deletion and a
    // directory replaced by a file.
    let upper = t.join("upper");
    fs::create_dir_all(upper.join("some")).expect("mkdir");
    fs::write(upper.join("replaced"), "now a file\n").expect("write");
    fs::create_dir_all(upper.join("etc")).expect("mkdir");
    fs::write(upper.join("some/committed"), "from commit\n").expect("write");
    run(Command::new("mknod")
        .arg(upper.join("etc/hostname"))
        .args(["c", "0", "0"]));
    let out = env.um(&[
        "commit",
        &upper.display().to_string(),
        "--tag",
        "committed",
        "--from",
        "v3",
    ]);
    // The new image's short id, as `image ls` shows it.
    let id = out.trim();
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    assert!(env.um(&["image", "ls"]).contains(id), "{out}");
    let inspect = env.um(&["image", "inspect", "committed"]);
    assert!(inspect.contains("tar+zstd"), "{inspect}");
    check_podman_load(&env, &pm, "committed", "committed", None);
    let dir = pm.run(&["image", "mount", "localhost/committed:dockerarchive"]);
    let dir = Path::new(dir.trim());
    assert_eq!(
        fs::read_to_string(dir.join("some/committed")).expect("committed file"),
        "from commit\n"
    );
    assert!(dir.join("some/dir/y").is_file(), "lower layers are there");
    assert_eq!(
        fs::read_to_string(dir.join("replaced")).expect("replaced"),
        "now a file\n"
    );
    assert!(
        fs::symlink_metadata(dir.join("etc/hostname")).is_err(),
        "the committed whiteout deletes etc/hostname"
    );
    pm.run(&["image", "unmount", "localhost/committed:dockerarchive"]);
}
