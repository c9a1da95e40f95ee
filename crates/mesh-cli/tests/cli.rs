//! The `mesh` binary as a user meets it: bad input gets one clear line and a non-zero exit
//! with nothing created; a killed `mesh up` is cleaned up by `mesh gc`; the host's root
//! network namespace is the same afterwards.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mesh(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh"));
    c.env("VM_MESH_STATE_DIR", state.join("state"));
    c.env("VM_MESH_RUNTIME_DIR", state.join("run"));
    c.env_remove("MESH_LOG");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The parts of the root namespace a mesh must never change.
fn root_netns_snapshot() -> String {
    let mut out = String::new();
    for args in [&["-d", "link"][..], &["addr"], &["route"], &["netns"]] {
        let o = run(Command::new("ip").args(args));
        let text = String::from_utf8_lossy(&o.stdout);
        // Namespaces made by tests running in parallel come and go; keep only ours out.
        for line in text.lines() {
            if args == ["netns"] && line.starts_with("vmmesh-") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn bad_input_is_one_line_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--n-x86", "0", "--n-aarch", "0", "--name", "zero"], "at least one node"),
        (&["up", "--n-x86", "1", "--name", "Bad_Name"], "invalid mesh name"),
        (&["up", "--n-x86", "1", "--name", "averyveryverylongname"], "invalid mesh name"),
        (
            &["up", "--n-x86", "1", "--name", "tmpl", "--no-repo", "--action", "echo {nope}"],
            "unknown placeholder",
        ),
        (&["up", "--n-x86", "100", "--name", "big", "--no-repo"], "at most"),
        (&["up", "--n-x86", "1", "--name", "mem", "--no-repo", "--memory", "100000000"], "memory"),
        (&["up", "-f", "/nonexistent/mesh.toml"], "cannot read mesh spec"),
        (&["image", "build", "--arch", "sparc"], "sparc"),
        (&["exec", "nosuchmesh", "--", "true"], "no mesh named nosuchmesh"),
        (&["down", "nosuchmesh"], "no mesh named nosuchmesh"),
        // Regression: names were joined onto the state root unchecked, and `down ..` removed
        // the state root's parent.
        (
            &[
                "up",
                "--n-x86",
                "1",
                "--name",
                "bp",
                "--repo",
                "/nonexistent",
                "--build",
                "echo {bogus}",
            ],
            "unknown placeholder {bogus}",
        ),
        (&["down", ".."], "invalid mesh name"),
        (&["down", "/tmp"], "invalid mesh name"),
        (&["exec", "../x", "--", "true"], "invalid mesh name"),
        (&["status", ".."], "invalid mesh name"),
        (&["node", "..", "x86-1", "kill"], "invalid mesh name"),
        (&["net", "..", "heal"], "invalid mesh name"),
    ];
    for (args, needle) in cases {
        let o = run(mesh(tmp.path()).args(*args));
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err:?}");
    }
    assert!(
        !tmp.path().join("state").exists()
            || std::fs::read_dir(tmp.path().join("state"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true)
    );
}

#[test]
fn subnet_without_room_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("mesh.toml");
    std::fs::write(&file, "name = \"tight\"\n[[nodes]]\narch = \"x86_64\"\ncount = 3\n[network]\nsubnet = \"10.5.0.0/30\"\n").expect("write");
    let o = run(mesh(tmp.path()).args(["up", "--no-repo", "-f"]).arg(&file));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot place 3 nodes"), "{}", stderr(&o));
}

#[test]
fn killed_up_is_collected_by_gc() {
    mesh_core::image::ImageStore::open_default()
        .and_then(|s| s.build(mesh_qemu::Arch::X86_64, &Default::default()))
        .expect("x86_64 base image (mmdebstrap and friends must be installed)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = root_netns_snapshot();
    let name = format!("crash{}", std::process::id() % 100000);
    let mut child = mesh(tmp.path())
        .args(["up", "--n-x86", "1", "--no-repo", "--accel", "tcg", "--name", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mesh up");

    // Wait until QEMU is recorded as started, then kill -9 the owner mid-boot.
    let journal = tmp.path().join("state").join(&name).join("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut qemu_pid = None;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&journal) {
            if let Some(line) = text.lines().find(|l| l.contains("\"kind\":\"qemu\"")) {
                let v: serde_json::Value = serde_json::from_str(line).expect("journal line");
                qemu_pid = v["pid"].as_u64();
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mesh up exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let qemu_pid = qemu_pid.expect("QEMU started within 120 s");
    child.kill().expect("kill -9 mesh up");
    child.wait().expect("reap");
    assert!(Path::new(&format!("/proc/{qemu_pid}")).exists(), "QEMU should outlive its owner");

    let st = run(mesh(tmp.path()).args(["status", "--json"]));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("\"stale\""),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );

    let o = run(mesh(tmp.path()).arg("gc"));
    assert!(o.status.success(), "gc: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&name));

    // Nothing of that mesh remains: process, namespace, sockets, state.
    std::thread::sleep(Duration::from_millis(200));
    let stat = std::fs::read_to_string(format!("/proc/{qemu_pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "QEMU {qemu_pid} still alive: {stat}");
    assert!(!Path::new(&format!("/run/netns/vmmesh-{name}")).exists());
    assert!(!tmp.path().join("state").join(&name).exists());
    assert!(!tmp.path().join("run").join(&name).exists());
    assert_eq!(root_netns_snapshot(), before, "root namespace changed");
}

#[test]
fn down_with_a_path_for_a_name_deletes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let victim = tmp.path().join("victim");
    std::fs::create_dir_all(victim.join("inside")).expect("mkdir");
    let o = run(mesh(tmp.path()).arg("down").arg(&victim));
    assert!(!o.status.success());
    assert!(victim.join("inside").exists(), "mesh down removed {}", victim.display());
    let o = run(mesh(tmp.path()).args(["down", ".."]));
    assert!(!o.status.success());
    assert!(victim.exists());
}

#[test]
fn ctrl_c_during_the_build_tears_down_and_stops_the_build() {
    mesh_core::image::ImageStore::open_default()
        .and_then(|s| s.build(mesh_qemu::Arch::X86_64, &Default::default()))
        .expect("x86_64 base image (mmdebstrap and friends must be installed)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("f"), "x").expect("write");
    for args in [
        &["init", "-q"][..],
        &["add", "f"],
        &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "f"],
    ] {
        assert!(run(Command::new("git").current_dir(&repo).args(args)).status.success());
    }
    let marker = tmp.path().join("build-started");
    let name = format!("int{}", std::process::id() % 100000);
    // A sleep whose command line is unique to this test, to look for afterwards.
    let sleeper = format!("300.{}", std::process::id());
    let build = format!("touch {}; exec sleep {sleeper}", marker.display());
    let child = mesh(tmp.path())
        .args(["up", "--n-x86", "1", "--accel", "tcg", "--name", &name, "--build", &build])
        .arg("--repo")
        .arg(&repo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mesh up");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill on the PID of our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tearing the mesh down"));
    assert!(!tmp.path().join("state").join(&name).exists(), "state left behind");
    assert!(!tmp.path().join("run").join(&name).exists(), "runtime dir left behind");
    // The build's `sleep` is gone too: its whole process group was killed.
    std::thread::sleep(Duration::from_millis(300));
    let leftover = std::fs::read_dir("/proc").expect("proc").flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&sleeper))
            .unwrap_or(false)
    });
    assert!(!leftover, "the build command outlived mesh up");
}

#[test]
fn output_that_cannot_be_written_is_one_line_and_status_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["status"][..], &["--help"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        let o = run(mesh(dir.path()).args(args).stdout(full));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("cannot write to standard output"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_state_path_that_is_not_a_directory_is_an_error_not_an_empty_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("state"), "not a directory").expect("state file");
    for args in [&["status"][..], &["down", "--all"]] {
        let o = run(mesh(dir.path()).args(args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("state directory"), "{args:?}: {err}");
    }
}
