//! End to end on real guests: two x86_64 and one aarch64 Debian 12 node from the built base
//! images, real cloud-init, a real repository injected and built per arch; everything is
//! checked from inside the guests, then the mesh is torn down and must leave nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_core::image::{BuildOptions, ImageStore};
use mesh_core::{Mesh, MeshSpec, SpecOverrides, UpOptions};
use mesh_qemu::Arch;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies the fixture into a fresh git repository (modes and symlinks as committed).
fn fixture_repo(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    let repo = dir.join("wire");
    sh(Command::new("cp").arg("-a").arg(&src).arg(&repo));
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "-A"],
        vec!["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fixture"],
    ] {
        sh(Command::new("git").current_dir(&repo).args(&args));
    }
    repo
}

/// The listing every side computes the same way: path, type, mode, link target, and the
/// content hash of regular files. Runs on the host and in guests (GNU find, coreutils).
const LISTING: &str = "cd \"$1\" && find . -path ./.git -prune -o -printf '%P|%y|%m|%l\\n' | sort \
     && find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum";

fn host_listing(dir: &Path) -> String {
    sh(Command::new("sh").arg("-c").arg(LISTING).arg("sh").arg(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mesh_injects_repo_builds_per_arch_and_tears_down() {
    let store = ImageStore::open_default().expect("image store");
    for arch in [Arch::X86_64, Arch::Aarch64] {
        store
            .build(arch, &BuildOptions::default())
            .unwrap_or_else(|e| panic!("base image for {arch} (needs mmdebstrap etc.): {e}"));
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = fixture_repo(tmp.path());
    let reference = tmp.path().join("reference");
    sh(Command::new("git").arg("clone").arg("-q").arg(&repo).arg(&reference));

    let name = format!("e2e{}", std::process::id() % 100000);
    let spec = MeshSpec::resolve(
        None,
        &SpecOverrides {
            name: Some(name.clone()),
            n_x86: Some(2),
            n_aarch: Some(1),
            repo: Some(repo.display().to_string()),
            build: Some("sh scripts/build.sh".into()),
            ..Default::default()
        },
    )
    .expect("spec");

    let mut mesh = Mesh::up(&spec, UpOptions::default()).await.expect("mesh up");
    let netns = mesh.plan.netns.clone();
    let state = mesh.plan.paths.state.clone();
    let readiness = mesh.wait_ready().await.to_vec();
    for r in &readiness {
        assert!(
            r.is_ready(),
            "{} not ready after {}: {:?}\n{}",
            r.node,
            r.phase,
            r.error,
            r.serial_tail.clone().unwrap_or_default()
        );
        assert_eq!(r.cloud_init_status.as_deref(), Some("done"));
    }

    // The built-in check: every node reaches every other over the mesh.
    let check = mesh.check(Duration::from_secs(120)).await.expect("check");
    for r in &check {
        assert!(r.ok(), "{}: {}", r.node, r.stderr);
    }

    // cloud-init from inside: done, NoCloud, our address on the NIC with our MAC.
    let facts = mesh
        .exec(
            "cloud-init status --long; echo ---; ip -o -4 addr show; echo ---; \
             echo iid=$(cat /var/lib/cloud/data/instance-id); cat /sys/class/net/mesh0/address",
            &[],
            Duration::from_secs(120),
        )
        .await
        .expect("exec");
    for (r, node) in facts.iter().zip(&mesh.plan.nodes) {
        assert!(r.ok(), "{}: {}", r.node, r.stderr);
        assert!(r.stdout.contains("status: done"), "{}: {}", r.node, r.stdout);
        assert!(r.stdout.contains("DataSourceNoCloud"), "{}: {}", r.node, r.stdout);
        assert!(!r.stdout.to_lowercase().contains("errors: ["), "{}: {}", r.node, r.stdout);
        assert!(
            r.stdout.contains(&format!("mesh0    inet {}/", node.ip)),
            "{}: {}",
            r.node,
            r.stdout
        );
        assert!(r.stdout.trim_end().ends_with(&node.mac), "{}: {}", r.node, r.stdout);
        // The instance-id the guest runs with is the one in the seed we wrote (read back from
        // the seed image by isoinfo, an independent reader).
        let meta =
            sh(Command::new("isoinfo").args(["-R", "-x", "/meta-data", "-i"]).arg(node.seed()));
        let iid = meta
            .lines()
            .find_map(|l| l.strip_prefix("instance-id:"))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .expect("instance-id in meta-data");
        assert!(r.stdout.contains(&format!("iid={iid}\n")), "{}: want {iid}: {}", r.node, r.stdout);
    }

    // The repository tree arrived intact: modes, symlinks (dangling too), contents.
    let want = host_listing(&reference);
    let script = format!("sh -c '{}' sh /root/wire", LISTING.replace('\'', "'\\''"));
    let got = mesh
        .exec(&script.replace('{', "{{").replace('}', "}}"), &[], Duration::from_secs(120))
        .await
        .expect("exec");
    for r in &got {
        assert!(r.ok(), "{}: {}", r.node, r.stderr);
        // The node's own build output is overlaid on the tree: drop it before comparing.
        let tree: String = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("bin") && !l.contains("  ./bin/"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(tree, want, "repo tree differs on {}", r.node);
    }

    // Cross-architecture: the buggy fold differs between arches, the fixed one agrees.
    let wire = mesh
        .exec(
            "/root/wire/bin/wire buggy && /root/wire/bin/wire fixed",
            &[],
            Duration::from_secs(120),
        )
        .await
        .expect("exec");
    let mut buggy: BTreeMap<String, String> = BTreeMap::new();
    let mut fixed: BTreeMap<String, String> = BTreeMap::new();
    for r in &wire {
        assert!(r.ok(), "{}: {}", r.node, r.stderr);
        for line in r.stdout.lines() {
            if let Some(v) = line.strip_prefix("buggy ") {
                buggy.insert(r.arch.clone(), v.to_owned());
            }
            if let Some(v) = line.strip_prefix("fixed ") {
                fixed.insert(r.arch.clone(), v.to_owned());
            }
        }
    }
    assert_eq!(buggy.len(), 2, "{wire:?}");
    assert_ne!(buggy["x86_64"], buggy["aarch64"], "char signedness should differ between arches");
    assert_eq!(fixed["x86_64"], fixed["aarch64"]);

    let report = mesh.teardown().await.expect("teardown");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(!mesh_net::Netns::exists(&netns), "namespace {netns} left behind");
    assert!(!state.exists(), "state dir left behind");
}
