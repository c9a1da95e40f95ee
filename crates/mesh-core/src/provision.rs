//! What each node is given: its NoCloud seed (keys, hostname, address by MAC, repo copy,
//! readiness signal) and its QEMU command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_cloudinit::{CloudConfig, Command, DsMode, Ethernet, NetworkConfig, Seed, WriteFile};
use mesh_qemu::{Accel, Arch};

use crate::image::{BaseImage, INIT_DONE_LOCALLY};
use crate::keys::KeyPair;
use crate::plan::{MeshPlan, NodePlan, READY_PORT};
use crate::repo::{InjectedRepo, BUILD_DIR, REPO_LABEL};
use crate::Error;

/// Virtio serial number of the seed disk (`/dev/disk/by-id/virtio-cidata`).
pub const SEED_SERIAL: &str = "cidata";

/// Interface name the guest's mesh NIC gets (set by MAC, the same on every arch).
pub const GUEST_NIC: &str = "mesh0";

/// Path of the readiness script in guests.
const READY_SCRIPT: &str = "/usr/local/sbin/vmmesh-ready";
const READY_UNIT: &str = "/etc/systemd/system/vmmesh-ready.service";
/// cloud-init runs this on every boot, from within cloud-final.
const READY_PER_BOOT: &str = "/var/lib/cloud/scripts/per-boot/vmmesh-ready";

/// The init-stage modules our seed relies on: the local-stage flag (`bootcmd`), files, disk
/// growth (an overlay may be larger than its base), hostname and hosts file, SSH keys.
const INIT_MODULES: &[&str] = &[
    "bootcmd",
    "write-files",
    "growpart",
    "resizefs",
    "set_hostname",
    "update_hostname",
    "update_etc_hosts",
    "ssh",
];

/// The later modules our seed relies on: the repository copy (`runcmd`, run by
/// `scripts-user`), the readiness script (`scripts-per-boot`), the other script directories,
/// and the final message on the console.
const FINAL_MODULES: &[&str] = &[
    "runcmd",
    "scripts-per-once",
    "scripts-per-boot",
    "scripts-per-instance",
    "scripts-user",
    "final-message",
];

/// Shell lines that set `status` to `done`, `error` or `unknown` from cloud-init's result file
/// `$r` (JSON whose `v1.errors` lists every stage's errors), the words `cloud-init status`
/// prints.
const STATUS_FROM_RESULT: &str = "\
if [ ! -s \"$r\" ]; then status=unknown
elif tr -d ' \\t\\n' < \"$r\" | grep -q '\"errors\":\\[\\]'; then status=done
else status=error; fi
";

fn ready_script() -> String {
    format!(
        "#!/bin/sh\n\
         # Tells the vm-mesh host, over a virtio-serial port, that cloud-init has finished and how.\n\
         # cloud-final has finished, so its result file is there; reading it directly spares\n\
         # a Python start (`cloud-init status`), seconds under emulation.\n\
         r=/run/cloud-init/result.json\n\
         {STATUS_FROM_RESULT}\
         # Make what cloud-init wrote durable first: a node may be killed (power loss) as soon\n\
         # as it is ready, and must boot again with the same host key.\n\
         sync\n\
         echo \"VMMESH-READY $status\" > /dev/console 2>/dev/null || true\n\
         for i in $(seq 1 50); do\n\
         \x20 [ -e /dev/virtio-ports/{READY_PORT} ] && break\n\
         \x20 sleep 0.2\n\
         done\n\
         echo \"VMMESH-READY $status\" > /dev/virtio-ports/{READY_PORT}\n"
    )
}

fn ready_unit() -> String {
    format!(
        "[Unit]\n\
         Description=Tell the vm-mesh host that cloud-init has finished\n\
         After=cloud-final.service\n\
         Wants=cloud-final.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={READY_SCRIPT}\n"
    )
}

/// The shell line that copies the repository (and this arch's build output) into `/root`.
fn repo_copy_command(repo: &InjectedRepo, arch: Arch) -> String {
    let name = &repo.name;
    format!(
        "set -e; m=/run/{REPO_LABEL}; mkdir -p $m; \
         mount -t iso9660 -o ro /dev/disk/by-id/virtio-{REPO_LABEL} $m; \
         rm -rf /root/{name}; cp -a $m/{name} /root/{name}; \
         if [ -d $m/{BUILD_DIR}/{arch} ]; then cp -a $m/{BUILD_DIR}/{arch}/. /root/{name}/; fi; \
         umount $m"
    )
}

/// Builds the node's cloud-config, network-config and seed.
pub fn node_seed(
    plan: &MeshPlan,
    node: &NodePlan,
    client: &KeyPair,
    host_key: &KeyPair,
    repo: Option<&InjectedRepo>,
) -> Result<Seed, Error> {
    let mut config = CloudConfig {
        hostname: Some(node.name.clone()),
        manage_etc_hosts: Some(true),
        disable_root: Some(false),
        // Password logins are off in the image's sshd configuration; `ssh_pwauth` here would
        // make cloud-init restart sshd mid-boot, which holds up cloud-final.
        ..CloudConfig::default()
    };
    config.ssh_keys.ed25519_private = Some(host_key.private_text()?);
    config.ssh_keys.ed25519_public = Some(host_key.public.clone());
    config.extra.insert("ssh_authorized_keys".into(), serde_json::json!([client.public]));
    // With `ssh_keys` given, cloud-init installs them and generates no other host keys
    // (RSA/ECDSA generation would cost seconds under TCG).
    config.extra.insert("ssh_deletekeys".into(), serde_json::json!(true));
    config.write_files.push(WriteFile {
        path: READY_SCRIPT.into(),
        content: ready_script(),
        permissions: Some("0755".into()),
        ..WriteFile::default()
    });
    config.write_files.push(WriteFile {
        path: READY_UNIT.into(),
        content: ready_unit(),
        permissions: Some("0644".into()),
        ..WriteFile::default()
    });
    if let Some(repo) = repo {
        config.runcmd.push(Command::Shell(repo_copy_command(repo, node.arch)));
    }
    // Started on every boot (a restart keeps the instance) from cloud-final's per-boot
    // scripts, without blocking: the unit is ordered after cloud-final, so it runs once this
    // boot's cloud-init has finished. Regression: an [Install] section with
    // WantedBy=multi-user.target made an ordering cycle (cloud-final is after
    // multi-user.target) and systemd silently dropped the job on every later boot.
    config.write_files.push(WriteFile {
        path: READY_PER_BOOT.into(),
        content: "#!/bin/sh\nexec systemctl start --no-block vmmesh-ready.service\n".into(),
        permissions: Some("0755".into()),
        ..WriteFile::default()
    });
    match &node.cloud_config {
        Some(serde_json::Value::Object(extra)) if !extra.is_empty() => {
            for (k, v) in extra {
                config.extra.insert(k.clone(), v.clone());
            }
        }
        // With nothing but our own settings, cloud-init runs only the modules they need:
        // every module it runs is imported and set up in emulated Python, a tenth of a second
        // to half a second each. A node's own cloud-config may need any module, so it keeps
        // the image's lists.
        _ => {
            // No default user: `users-groups` does not run with these lists, and cloud-init's
            // SSH module would otherwise try to give the image's default user (never created)
            // the key first, fail, and skip root as well. (`users: []` is refused by the
            // schema.)
            config.extra.insert("users".into(), serde_json::json!(["root"]));
            for (key, modules) in [
                ("cloud_init_modules", INIT_MODULES),
                ("cloud_config_modules", &[][..]),
                ("cloud_final_modules", FINAL_MODULES),
            ] {
                config.extra.insert(key.into(), serde_json::json!(modules));
            }
        }
    }

    // Seeds are applied in cloud-init's local stage (`dsmode: local`, below), so the init
    // stage is over before networking starts; this flag, written again on every boot, lets
    // the image skip cloud-init's network stage (see the image's drop-in for it).
    let dir = Path::new(INIT_DONE_LOCALLY).parent().unwrap_or(Path::new("/run"));
    let flag = format!("mkdir -p {} && touch {INIT_DONE_LOCALLY}", dir.display());
    match config.extra.get_mut("bootcmd") {
        Some(serde_json::Value::Array(theirs)) => theirs.insert(0, serde_json::json!(flag)),
        _ => config.bootcmd.push(Command::Shell(flag)),
    }

    let mut ethernets = BTreeMap::new();
    ethernets.insert(
        GUEST_NIC.to_owned(),
        Ethernet {
            mac: node.mac.clone(),
            set_name: Some(GUEST_NIC.to_owned()),
            addresses: vec![format!("{}/{}", node.ip, plan.prefix_len)],
            mtu: Some(plan.spec.network.mtu),
            ..Ethernet::default()
        },
    );
    let network = NetworkConfig { ethernets };
    Seed::new(&config, &node.name, Some(&network))
        .and_then(|seed| seed.with_dsmode(DsMode::Local))
        .map_err(|source| Error::Seed { node: node.name.clone(), source })
}

/// The QEMU command line of `node`.
pub fn vm_command(
    plan: &MeshPlan,
    node: &NodePlan,
    image: &BaseImage,
    accel: Accel,
    repo: Option<&InjectedRepo>,
) -> Result<mesh_qemu::QemuCommand, Error> {
    let mut drives = vec![
        mesh_qemu::Drive {
            path: node.overlay(),
            format: mesh_qemu::ImageFormat::Qcow2,
            read_only: false,
            serial: Some("root".into()),
        },
        mesh_qemu::Drive {
            path: node.seed(),
            format: mesh_qemu::ImageFormat::Raw,
            read_only: true,
            serial: Some(SEED_SERIAL.into()),
        },
    ];
    if let Some(repo) = repo {
        drives.push(mesh_qemu::Drive {
            path: repo.image.clone(),
            format: mesh_qemu::ImageFormat::Raw,
            read_only: true,
            serial: Some(REPO_LABEL.into()),
        });
    }
    let boot = match (image.kernel_path(), image.cmdline()) {
        (Some(kernel), Some(cmdline)) => {
            mesh_qemu::Boot::Direct { kernel, initrd: image.initrd_path(), cmdline }
        }
        _ => firmware_boot(node)?,
    };
    let spec = mesh_qemu::VmSpec {
        name: node.name.clone(),
        arch: node.arch,
        accel,
        cpu_model: None,
        cpus: node.cpus,
        memory_mib: node.memory_mib,
        boot,
        drives,
        nics: vec![mesh_qemu::Nic { tap: node.tap.clone(), mac: node.mac.clone() }],
        serial_log: node.serial_log(),
        qmp_socket: node.qmp_socket.clone(),
        virtio_serial: vec![mesh_qemu::VirtioSerialPort {
            name: READY_PORT.into(),
            socket: node.ready_socket.clone(),
        }],
    };
    let mut cmd = spec
        .command_with_console(&node.console_socket())
        .map_err(|source| Error::VmSpec { node: node.name.clone(), source })?;
    // QEMU writes its own PID, so a crash between spawn and journal still leaves a trace.
    cmd.args.push("-pidfile".into());
    cmd.args.push(node.dir.join("qemu.pid").display().to_string());
    let _ = plan;
    Ok(cmd)
}

fn firmware_boot(node: &NodePlan) -> Result<mesh_qemu::Boot, Error> {
    match node.arch {
        Arch::X86_64 => Ok(mesh_qemu::Boot::Bios),
        Arch::Aarch64 => {
            let vars = node.dir.join("efivars.fd");
            let code = PathBuf::from("/usr/share/AAVMF/AAVMF_CODE.fd");
            let template = PathBuf::from("/usr/share/AAVMF/AAVMF_VARS.fd");
            std::fs::copy(&template, &vars)
                .map_err(|source| Error::Io { path: template.clone(), source })?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&vars)
                .map_err(|source| Error::Io { path: vars.clone(), source })?;
            f.set_len(64 << 20).map_err(|source| Error::Io { path: vars.clone(), source })?;
            Ok(mesh_qemu::Boot::Firmware { code, vars })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(result: Option<&str>) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("result.json");
        if let Some(text) = result {
            std::fs::write(&path, text).expect("write result");
        }
        let script = format!("r='{}'\n{STATUS_FROM_RESULT}echo $status", path.display());
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().expect("sh");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn guest_status_is_read_from_the_result_file() {
        // The layouts cloud-init writes (indented and compact) and the ones it must not take.
        assert_eq!(
            status_of(Some("{\n \"v1\": {\n  \"datasource\": \"DataSourceNoCloud\",\n  \"errors\": []\n }\n}\n")),
            "done"
        );
        assert_eq!(status_of(Some(r#"{"v1":{"datasource":"x","errors":[]}}"#)), "done");
        assert_eq!(
            status_of(Some("{\n \"v1\": {\n  \"errors\": [\n   \"('scripts_user', RuntimeError())\"\n  ]\n }\n}\n")),
            "error"
        );
        assert_eq!(status_of(Some("")), "unknown");
        assert_eq!(status_of(None), "unknown");
        assert!(ready_script().contains("r=/run/cloud-init/result.json\nif [ ! -s"));
    }

    fn user_data(cloud_config: Option<serde_json::Value>) -> String {
        seed_file(cloud_config, "user-data")
    }

    fn seed_file(cloud_config: Option<serde_json::Value>, name: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = crate::keys::ensure_key(&dir.path().join("client"), "c").expect("key");
        let host = crate::keys::ensure_key(&dir.path().join("host"), "h").expect("key");
        let spec = crate::MeshSpec::resolve(
            None,
            &crate::SpecOverrides { name: Some("t".into()), n_x86: Some(1), ..Default::default() },
        )
        .expect("spec");
        let plan = MeshPlan::with_paths(
            &spec,
            crate::MeshPaths { state: dir.path().into(), runtime: dir.path().into() },
        )
        .expect("plan");
        let mut node = plan.nodes[0].clone();
        node.cloud_config = cloud_config;
        let seed = node_seed(&plan, &node, &client, &host, None).expect("seed");
        let files = seed.files();
        let (_, file) = files.iter().find(|(n, _)| *n == name).expect("file in the seed");
        String::from_utf8(file.to_vec()).expect("utf-8")
    }

    fn yaml(text: &str) -> serde_json::Value {
        serde_saphyr::from_str(text).expect("user-data is YAML")
    }

    #[test]
    fn our_own_seed_names_only_the_modules_it_needs() {
        let ud = yaml(&user_data(None));
        assert_eq!(ud["cloud_init_modules"], serde_json::json!(INIT_MODULES));
        assert_eq!(ud["cloud_config_modules"], serde_json::json!([]));
        assert_eq!(ud["cloud_final_modules"], serde_json::json!(FINAL_MODULES));
        // What the seed sets must have its module in the lists.
        assert!(ud["write_files"].is_array() && INIT_MODULES.contains(&"write-files"));
        assert!(ud["ssh_keys"].is_object() && INIT_MODULES.contains(&"ssh"));
        assert!(ud["hostname"].is_string() && INIT_MODULES.contains(&"set_hostname"));
        assert!(ud["bootcmd"].is_array() && INIT_MODULES.contains(&"bootcmd"));
        // Regression: without users-groups, a default user in `users` (the image's, when the
        // key is absent) made the SSH module fail before it gave root the mesh's key.
        assert_eq!(ud["users"], serde_json::json!(["root"]));
        assert!(ud["ssh_authorized_keys"].is_array() && ud["disable_root"] == false);
    }

    #[test]
    fn host_cloud_init_accepts_the_user_data_of_our_seeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, extra) in
            [("ours", None), ("extra", Some(serde_json::json!({ "packages": ["jq"] })))]
        {
            let path = dir.path().join(name);
            std::fs::write(&path, user_data(extra)).expect("write");
            let out = std::process::Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(&path)
                .output()
                .expect("cloud-init (Debian package cloud-init) is needed for this test");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("Valid cloud-config"), "{name}: {text}");
        }
    }

    #[test]
    fn a_nodes_own_cloud_config_keeps_the_images_module_lists() {
        let ud = yaml(&user_data(Some(serde_json::json!({ "packages": ["jq"] }))));
        assert_eq!(ud["packages"], serde_json::json!(["jq"]));
        for key in ["cloud_init_modules", "cloud_config_modules", "cloud_final_modules"] {
            assert!(ud.get(key).is_none(), "{key} set");
        }
    }

    #[test]
    fn the_init_stage_runs_locally_and_says_so_on_every_boot() {
        let md = yaml(&seed_file(None, "meta-data"));
        assert_eq!(md["dsmode"], "local");
        let flag = format!("mkdir -p /run/vm-mesh && touch {INIT_DONE_LOCALLY}");
        assert_eq!(yaml(&user_data(None))["bootcmd"], serde_json::json!([flag]));
        // A node's own bootcmd is kept, after the flag.
        let theirs = serde_json::json!({ "bootcmd": ["echo hi"] });
        assert_eq!(yaml(&user_data(Some(theirs)))["bootcmd"], serde_json::json!([flag, "echo hi"]));
    }
}
