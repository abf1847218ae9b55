//! Long imports, loads and commits draw progress bars on a terminal and stay
//! quiet otherwise: with stderr piped only the result line is printed.

mod support;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use support::store::*;

/// A root filesystem of `mib` MiB of incompressible data (several progress
/// steps, past the size where a bar is drawn).
fn big_rootfs(dir: &Path, mib: usize) {
    fs::create_dir_all(dir.join("data")).expect("mkdir");
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut f = fs::File::create(dir.join("data/blob")).expect("create");
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for b in buf.chunks_mut(8) {
            // xorshift: fast, and zstd cannot shrink it.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write");
    }
}

/// Run `unionmount ARGS` with stdout and stderr piped: it must succeed,
/// print nothing on stderr and exactly one line on stdout, starting `want`;
/// that line.
fn quiet(env: &Env, args: &[&str], want: &str) -> String {
    let out = env.um_out(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert_eq!(stderr, "", "{args:?}: nothing on a piped stderr");
    assert_eq!(stdout.lines().count(), 1, "{args:?}: one line:\n{stdout}");
    assert!(stdout.starts_with(want), "{args:?}: {stdout}");
    stdout.trim_end().to_string()
}

#[test]
fn piped_output_is_the_result_line_only() {
    let env = Env::new();
    let t = env.path();
    let root = t.join("rootfs");
    big_rootfs(&root, 24);
    let tar = t.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let tar_s = tar.display().to_string();
    // Import and commit print the new image's id, as `image ls` shows it.
    let id = quiet(&env, &["image", "import", &tar_s, "--tag", "big"], "");
    assert_eq!(id, env.short_id("big"));
    let root_s = root.display().to_string();
    let id = quiet(&env, &["image", "import", &root_s, "--tag", "dir"], "");
    assert_eq!(id, env.short_id("dir"));
    let saved = t.join("big.oci.tar");
    let saved_s = saved.display().to_string();
    let out = env.um_out(&["image", "save", "big", "--format", "oci-archive", &saved_s]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // Into a fresh store, so every blob and layer is read, hashed and unpacked.
    let env2 = Env::new();
    let line = quiet(&env2, &["image", "load", &saved_s], "Loaded image: big (");
    assert_eq!(
        line,
        format!("Loaded image: big ({})", env2.short_id("big"))
    );
    // From standard input, as `… | unionmount image load -`.
    let env3 = Env::new();
    let out = Command::new(bin())
        .args(["image", "load", "-"])
        .env("UNIONMOUNT_STORE", env3.store())
        .stdin(fs::File::open(&saved).expect("open"))
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().count() == 1 && stdout.starts_with("Loaded image: big ("),
        "{stdout}"
    );
    let upper = t.join("upper");
    big_rootfs(&upper, 8);
    let upper_s = upper.display().to_string();
    let id = quiet(
        &env2,
        &["commit", &upper_s, "--tag", "next", "--from", "big"],
        "",
    );
    assert_eq!(id, env2.short_id("next"));
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let test = "a_terminal_gets_a_progress_bar";
    if !need_tools(test, &["script", "tar"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let root = t.join("rootfs");
    big_rootfs(&root, 24);
    let tar = t.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    // `script` gives the command a terminal and copies what it draws.
    let typescript = t.join("typescript");
    let cmd = format!("{} image import {} --tag big", bin(), tar.display());
    run(Command::new("script")
        .args(["-q", "-e", "-c", &cmd])
        .arg(&typescript)
        .env("UNIONMOUNT_STORE", env.store())
        .stdin(std::process::Stdio::null()));
    let seen = String::from_utf8_lossy(&fs::read(&typescript).expect("typescript")).into_owned();
    assert!(seen.contains(&env.short_id("big")), "{seen}");
    assert!(
        seen.contains(&format!("importing {}", tar.display())) && seen.contains("MiB"),
        "a bar with the task and byte counts:\n{seen}"
    );
}
