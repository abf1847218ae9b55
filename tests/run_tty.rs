//! `run -t` and `-i` as `docker run` and podman have them: `-it` gives an
//! interactive shell on a terminal of the container's own (`tty` names
//! /dev/pts/0), sized as the user's and resized with it, with job control,
//! the user's terminal raw while attached and restored after; `-i` alone
//! attaches stdin without a terminal; without `-i` stdin is /dev/null. The
//! `-it` tests drive the runner through a real pseudo-terminal, as a user's
//! shell would start it (`setsid --ctty`: its controlling terminal).

mod support;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, unlockpt};
use rustix::termios::{LocalModes, Winsize, tcgetattr, tcsetwinsize};
use support::run::{Env, bin, processes_naming, wait_until};

fn size(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A user at a terminal: the master of a pseudo-terminal whose slave is the
/// runner's controlling terminal and stdio.
struct User {
    master: File,
    runner: Child,
    /// Everything read from the master and not yet looked at.
    seen: String,
    /// The terminal's local modes before the runner started.
    initial: LocalModes,
}

impl User {
    /// `unionmount ARGS…` on a new terminal of `rows`×`cols`.
    fn start(env: &Env, args: &[&str], rows: u16, cols: u16) -> User {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = openpt(flags).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        tcsetwinsize(&master, size(rows, cols)).expect("window size");
        let initial = tcgetattr(&master).expect("tcgetattr").local_modes;
        let slave: OwnedFd = ioctl_tiocgptpeer(&master, flags).expect("pty slave");
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let runner = Command::new("setsid")
            .arg("--ctty")
            .arg(bin())
            .arg(args[0])
            .arg("--store")
            .arg(&env.store)
            .args(&args[1..])
            .stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(dup(&slave))
            .spawn()
            .expect("setsid unionmount");
        drop(slave);
        User {
            master: File::from(master),
            runner,
            seen: String::new(),
            initial,
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .expect("typing");
    }

    /// Wait (a minute at most) until `found` finds its answer in the output
    /// (and how much of it that used up).
    fn wait_for<T>(&mut self, what: &str, found: impl Fn(&str) -> Option<(T, usize)>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((v, used)) = found(&self.seen) {
                self.seen.drain(..used);
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
            let timeout = Timespec::try_from(left).expect("timeout");
            let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0);
            let mut buf = [0u8; 4096];
            match (ready, (&self.master).read(&mut buf)) {
                (1.., Ok(n)) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("no {what} on the terminal; it shows:\n{}", self.seen),
            }
        }
    }

    fn expect(&mut self, want: &str) {
        self.wait_for(want, |s| s.find(want).map(|at| ((), at + want.len())));
    }

    /// The rest of the line after `key`.
    fn value(&mut self, key: &str) -> String {
        self.wait_for(key, |s| {
            let at = s.find(key)?;
            let nl = at + s[at..].find('\n')?;
            let v = s[at + key.len()..nl].trim_end_matches('\r').to_string();
            Some((v, nl + 1))
        })
    }

    /// The runner's exit status (a minute at most).
    fn exit_status(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.runner.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "runner still runs:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The user's terminal goes away (its window closed): the master closes.
    fn hang_up(&mut self) {
        self.master = File::open("/dev/null").expect("/dev/null");
    }

    fn terminal_modes(&self) -> LocalModes {
        tcgetattr(self.master.as_fd())
            .expect("tcgetattr")
            .local_modes
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self.runner.kill();
        let _ = self.runner.wait();
    }
}

/// util-linux's `setsid --ctty`, which gives the runner its terminal.
fn has_setsid() -> bool {
    let ok = Command::new("setsid")
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--ctty"));
    let missing = if ok {
        vec![]
    } else {
        vec!["setsid --ctty (util-linux)".to_string()]
    };
    support::can_run("run -t tests", &missing)
}

/// `run -it IMG sh`, then the shell's terminal, size, job control and status.
fn interactive_shell(env: &Env, extra: &[&str]) {
    let mut args = vec!["run", "--rm", "-it"];
    args.extend(extra);
    args.extend(["t", "sh"]);
    let mut user = User::start(env, &args, 33, 111);
    user.expect("# ");
    let modes = user.terminal_modes();
    assert!(
        !modes.intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG),
        "the user's terminal is raw while attached: {modes:?}"
    );
    // Quotes split each key, so that the echo of the typed line holds none.
    user.type_line(r#"echo "T""=$(tty)""#);
    assert_eq!(user.value("T="), "/dev/pts/0");
    user.type_line(r#"echo "S""=$(stty size)""#);
    assert_eq!(user.value("S="), "33 111");
    // Job control: a command runs as a job of its own (a process group)
    // in the terminal's foreground, in the session of pid 1.
    user.type_line("cat /proc/self/stat");
    let stat = user.value("(cat) ");
    let f: Vec<i64> = stat
        .split_whitespace()
        .skip(1)
        .take(5)
        .map(|x| x.parse().expect("a number"))
        .collect();
    let (pgrp, session, tpgid) = (f[1], f[2], f[4]);
    user.type_line(r#"echo "P""=$$""#);
    let shell: i64 = user.value("P=").parse().expect("the shell's pid");
    assert_eq!(session, 1, "pid 1 leads the session: {stat}");
    assert_ne!(pgrp, shell, "cat is a job of its own: {stat}");
    assert_eq!(pgrp, tpgid, "cat's job is in the foreground: {stat}");
    // The user's terminal grows: so does the container's.
    tcsetwinsize(user.master.as_fd(), size(44, 122)).expect("resize");
    let mut now = String::new();
    for _ in 0..50 {
        user.type_line(r#"echo "S""=$(stty size)""#);
        now = user.value("S=");
        if now == "44 122" {
            break;
        }
    }
    assert_eq!(now, "44 122", "the resize reached the container");
    // ^C is a key like any other (the user's terminal is raw): the
    // container's terminal turns it into SIGINT for its foreground job.
    let sleep = format!("sleep {}", 4000 + std::process::id() % 1000);
    user.type_line(&sleep);
    let needle = sleep.replace(' ', "\0");
    let in_front = wait_until(60, || {
        processes_naming(&needle).iter().any(|pid| foreground(*pid))
    });
    assert!(in_front, "{sleep} runs in the foreground");
    user.master.write_all(b"\x03").expect("typing ^C");
    user.type_line(r#"echo "C""=$?""#);
    assert_eq!(user.value("C="), "130", "sleep ended by SIGINT");
    user.type_line("exit 3");
    assert_eq!(user.exit_status(), 3, "{}", user.seen);
    assert_eq!(
        user.terminal_modes(),
        user.initial,
        "the user's terminal is restored"
    );
}

/// The process is in its terminal's foreground process group.
fn foreground(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    f.len() > 5 && f[2] == f[5]
}

#[test]
fn run_it_gives_an_interactive_shell_on_a_terminal() {
    let Some(env) = Env::new() else { return };
    if !has_setsid() {
        return;
    }
    interactive_shell(&env, &[]);
}

#[test]
fn run_it_with_init_gives_the_shell_the_terminal() {
    let Some(env) = Env::new() else { return };
    if !has_setsid() {
        return;
    }
    interactive_shell(&env, &["--init"]);
}

#[test]
fn a_hang_up_ends_the_container() {
    let Some(env) = Env::new() else { return };
    if !has_setsid() {
        return;
    }
    // A shell as pid 1 ignores the forwarded SIGHUP (the kernel shields a
    // namespace's init from signals it does not handle): the container's
    // own terminal hangs up too, and the shell ends on it.
    for extra in [&[][..], &["--init"][..]] {
        let mut args = vec!["run", "--rm", "-it"];
        args.extend(extra);
        args.extend(["t", "sh", "-c", "echo ready; read x; echo read $?"]);
        let mut user = User::start(&env, &args, 24, 80);
        user.expect("ready");
        user.hang_up();
        assert_ne!(user.exit_status(), 0);
    }
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

/// `unionmount ARGS…` with `input` on its stdin (a pipe); (status, stdout).
fn piped(env: &Env, input: &str, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(bin())
        .arg(args[0])
        .arg("--store")
        .arg(&env.store)
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unionmount");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("writing stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("unionmount");
    let o = support::run::Out::from(out);
    (o.code, o.stdout)
}

#[test]
fn stdin_is_attached_with_i_only() {
    let Some(env) = Env::new() else { return };
    let run = |args: &[&str]| piped(&env, "hello\n", args);
    assert_eq!(
        run(&["run", "--rm", "-i", "t", "cat"]),
        (0, "hello\n".into())
    );
    // Without -i the command reads /dev/null, as Docker's does.
    assert_eq!(
        run(&["run", "--rm", "t", "sh", "-c", "cat; echo end"]),
        (0, "end\n".into())
    );
    assert_eq!(
        run(&["run", "--rm", "t", "sh", "-c", "readlink /proc/self/fd/0"]),
        (0, "/dev/null\n".into())
    );
    // Without -t there is no terminal, with it one, even when the runner's
    // stdio are pipes.
    assert_eq!(run(&["run", "--rm", "-i", "t", "tty"]).0, 1);
    let (code, out) = run(&[
        "run",
        "--rm",
        "-t",
        "t",
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo in",
    ]);
    assert_eq!((code, out.as_str()), (0, "/dev/pts/0\r\nin\r\n"));
    // --init too.
    assert_eq!(
        run(&["run", "--rm", "--init", "-i", "t", "cat"]),
        (0, "hello\n".into())
    );
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn the_record_keeps_tty_and_interactive() {
    let Some(env) = Env::new() else { return };
    let run = |args: &[&str]| piped(&env, "hello\n", args);
    assert_eq!(run(&["create", "--name", "term", "-t", "t", "tty"]).0, 0);
    let dir = env.container_dir("term").expect("container term");
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    assert!(config.contains("\"tty\": true"), "{config}");
    assert_eq!(run(&["start", "term"]), (0, "/dev/pts/0\r\n".into()));
    // Created with -i: stdin attached at each start.
    assert_eq!(run(&["create", "--name", "in", "-i", "t", "cat"]).0, 0);
    assert_eq!(run(&["start", "in"]), (0, "hello\n".into()));
    // Created without: attached with start -i only.
    assert_eq!(run(&["create", "--name", "plain", "t", "cat"]).0, 0);
    assert_eq!(run(&["start", "plain"]), (0, String::new()));
    assert_eq!(run(&["start", "-i", "plain"]), (0, "hello\n".into()));
}
