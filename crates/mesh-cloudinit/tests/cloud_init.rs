//! The host's real cloud-init (Debian's 22.4) accepts what we write: `cloud-init schema`
//! validates our user-data, its NoCloud datasource reads our seed directory, and its network
//! renderers turn our network-config into the address on the NIC with our MAC.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command as Process;

use mesh_cloudinit::{
    multipart, CloudConfig, Command, Ethernet, FileEncoding, Nameservers, NetworkConfig, Route,
    Seed, SshHostKeys, User, WriteFile,
};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:12:34:56";

/// A config using every typed field, with values YAML 1.1 would misread if unquoted.
fn full_config() -> CloudConfig {
    let mut config = CloudConfig {
        keep_default_user: true,
        ssh_pwauth: Some(false),
        disable_root: Some(true),
        hostname: Some("node-1".into()),
        fqdn: Some("node-1.mesh.test".into()),
        manage_etc_hosts: Some(true),
        final_message: Some("up after $UPTIME s: yes".into()),
        packages: vec!["iperf3".into()],
        ..CloudConfig::default()
    };
    config.users.push(User {
        name: "mesh".into(),
        gecos: Some("Mesh: test user # yes".into()),
        sudo: Some("ALL=(ALL) NOPASSWD:ALL".into()),
        groups: vec!["adm".into(), "on".into()],
        shell: Some("/bin/bash".into()),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq mesh@host".into()],
        lock_passwd: Some(false),
        passwd: Some("$6$rounds=4096$salt$0755:12:30".into()),
        ..User::default()
    });
    config.ssh_keys = SshHostKeys {
        ed25519_private: Some(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                .into(),
        ),
        ed25519_public: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost root@node-1".into()),
        ..SshHostKeys::default()
    };
    config.write_files.push(WriteFile {
        path: "/usr/local/bin/ready".into(),
        content: "#!/bin/sh\necho 'ready: yes' > /dev/virtio-ports/mesh\n".into(),
        permissions: Some("0755".into()),
        owner: Some("root:root".into()),
        ..WriteFile::default()
    });
    config.write_files.push(WriteFile {
        defer: true,
        owner: Some("mesh:mesh".into()),
        ..WriteFile::binary("/home/mesh/blob", &[0, 1, 2, 255])
    });
    config.write_files.push(WriteFile {
        path: "/etc/gz".into(),
        content: "H4sIAAAAAAAAA8tIzcnJBwCGphA2BgAAAA==".into(),
        encoding: Some(FileEncoding::GzipBase64),
        append: true,
        ..WriteFile::default()
    });
    config.mounts.push(vec!["/dev/vdc".into(), "/srv".into(), "ext4".into(), "ro,nofail".into()]);
    config.bootcmd.push(Command::from("echo boot: on > /run/boot"));
    config.runcmd.push(Command::Argv(vec!["/usr/local/bin/ready".into(), "yes".into()]));
    config.runcmd.push(Command::from("echo '12:30' | tee /run/x # not a comment"));
    config.extra.insert("ssh_genkeytypes".into(), json!(["ed25519"]));
    config.extra.insert("timezone".into(), json!("Etc/UTC"));
    config
}

fn network() -> NetworkConfig {
    let mut net = NetworkConfig::default();
    net.ethernets.insert(
        "mesh0".into(),
        Ethernet {
            mac: MAC.into(),
            set_name: Some("mesh0".into()),
            addresses: vec!["10.77.0.2/24".into()],
            routes: vec![Route {
                to: "10.88.0.0/16".into(),
                via: "10.77.0.1".into(),
                metric: Some(100),
            }],
            nameservers: Some(Nameservers {
                addresses: vec!["10.77.0.1".into()],
                search: vec!["mesh.test".into()],
            }),
            mtu: Some(1400),
            ..Ethernet::default()
        },
    );
    net
}

/// `cloud-init schema --config-file`, which must call the document valid.
fn schema_check(dir: &Path, name: &str, user_data: &[u8]) -> (bool, String) {
    common::require("cloud-init", "cloud-init");
    let path = dir.join(name);
    fs::write(&path, user_data).expect("write temp file");
    let output =
        common::run(Process::new("cloud-init").arg("schema").arg("--config-file").arg(&path), b"");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && text.contains("Valid cloud-config"), text)
}

#[test]
fn cloud_init_schema_validates_every_user_data_we_emit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let minimal = CloudConfig::default();
    let runcmd_only = CloudConfig { runcmd: vec![Command::from("true")], ..CloudConfig::default() };
    for (name, config) in [("full", full_config()), ("minimal", minimal), ("runcmd", runcmd_only)] {
        let text = config.render().expect("valid config");
        let (valid, report) = schema_check(dir.path(), name, text.as_bytes());
        assert!(valid, "cloud-init schema rejected our {name} config:\n{report}\n---\n{text}");
    }

    // The checker is not a rubber stamp: a misspelt type fails it.
    let (valid, _) = schema_check(dir.path(), "bad", b"#cloud-config\nssh_pwauth: [1]\nusers: 5\n");
    assert!(
        !valid,
        "cloud-init schema accepted an invalid document; the check above proves nothing"
    );
}

/// Reads a NoCloud seed directory with cloud-init's own datasource class and reports what
/// cloud-init sees, as JSON.
const NOCLOUD_READER: &str = r#"
import json, sys
from cloudinit import helpers
from cloudinit.sources.DataSourceNoCloud import DataSourceNoCloud
cloud_dir = sys.argv[1]
paths = helpers.Paths({"cloud_dir": cloud_dir, "run_dir": cloud_dir + "/run"})
# fs_label None: look only at the seed directory, never probe the host's block devices.
ds = DataSourceNoCloud(sys_cfg={"datasource": {"NoCloud": {"fs_label": None}}}, distro=None, paths=paths)
if not ds.get_data():
    sys.exit("NoCloud did not claim the seed directory")
text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
parts = [
    {"type": p.get_content_type(), "payload": p.get_payload(decode=True).decode("utf-8")}
    for p in ds.get_userdata().walk() if p.get_content_maintype() != "multipart"
]
json.dump({
    "dsname": ds.dsname,
    "seed": ds.seed,
    "instance_id": ds.get_instance_id(),
    "local_hostname": ds.metadata.get("local-hostname"),
    "user_data": text(ds.userdata_raw),
    "vendor_data": text(ds.vendordata_raw),
    "network_config": ds.network_config,
    "parts": parts,
}, sys.stdout)
"#;

fn read_with_nocloud(seed: &Seed) -> Value {
    common::require(common::SYSTEM_PYTHON, "cloud-init");
    let cloud_dir = tempfile::tempdir().expect("temp dir");
    let seed_dir = cloud_dir.path().join("seed/nocloud");
    fs::create_dir_all(&seed_dir).expect("seed dir");
    for (name, contents) in seed.files() {
        fs::write(seed_dir.join(name), contents).expect("write seed file");
    }
    let stdout = common::run_ok(
        Process::new(common::SYSTEM_PYTHON).arg("-c").arg(NOCLOUD_READER).arg(cloud_dir.path()),
    );
    serde_json::from_str(&stdout).expect("reader prints JSON")
}

#[test]
fn nocloud_datasource_reads_our_seed_directory() {
    let config = full_config();
    let seed = Seed::new(&config, "node-1", Some(&network()))
        .expect("valid seed")
        .with_vendor_data(b"#cloud-config\nntp: {enabled: false}\n")
        .expect("valid vendor-data");
    let seen = read_with_nocloud(&seed);

    assert_eq!(seen["dsname"], "NoCloud");
    assert_eq!(seen["instance_id"], seed.instance_id());
    assert_eq!(seen["local_hostname"], "node-1");
    assert_eq!(seen["user_data"], config.render().expect("valid"));
    assert_eq!(seen["vendor_data"], "#cloud-config\nntp: {enabled: false}\n");
    assert_eq!(
        seen["network_config"],
        json!({
            "version": 2,
            "ethernets": { "mesh0": {
                "match": { "macaddress": MAC },
                "set-name": "mesh0",
                "dhcp4": false,
                "dhcp6": false,
                "addresses": ["10.77.0.2/24"],
                "routes": [{ "to": "10.88.0.0/16", "via": "10.77.0.1", "metric": 100 }],
                "nameservers": { "addresses": ["10.77.0.1"], "search": ["mesh.test"] },
                "mtu": 1400,
            }},
        })
    );
}

#[test]
fn nocloud_datasource_splits_our_multipart_user_data() {
    let script = b"#!/bin/sh\necho from-part-two\n";
    let message = multipart(&[
        ("text/cloud-config", "config.yaml", b"#cloud-config\nhostname: node-2\n"),
        ("text/x-shellscript", "hello.sh", script),
        (
            "text/x-shellscript",
            "bytes.sh",
            "#!/bin/sh\necho 'caf\u{e9} \u{2014} 12:30'\n".as_bytes(),
        ),
    ])
    .expect("valid parts");
    let seed = Seed::from_files(
        &message,
        b"instance-id: iid-multipart\nlocal-hostname: node-2\n",
        None,
        None,
    )
    .expect("our multipart is accepted by our own checks");
    let seen = read_with_nocloud(&seed);

    assert_eq!(seen["instance_id"], "iid-multipart");
    let parts = seen["parts"].as_array().expect("parts list");
    let summary: Vec<(&str, &str)> = parts
        .iter()
        .map(|p| (p["type"].as_str().unwrap_or(""), p["payload"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        [
            ("text/cloud-config", "#cloud-config\nhostname: node-2\n"),
            ("text/x-shellscript", "#!/bin/sh\necho from-part-two\n"),
            ("text/x-shellscript", "#!/bin/sh\necho 'caf\u{e9} \u{2014} 12:30'\n"),
        ]
    );
}

#[test]
fn cloud_init_renders_our_network_config_onto_the_mac() {
    common::require("cloud-init", "cloud-init");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("network-config");
    fs::write(&input, network().render().expect("valid")).expect("write");

    // networkd matches by MAC in the .network file; ENI renames by MAC in a udev rule.
    let mac_match = format!("macaddress={MAC}");
    let udev_match = format!("attr{{address}}==\"{MAC}\", name=\"mesh0\"");
    let expectations: [(&str, &str, Vec<&str>); 3] = [
        (
            "networkd",
            "etc/systemd/network/10-cloud-init-mesh0.network",
            vec![
                &mac_match,
                "name=mesh0",
                "10.77.0.2/24",
                "mtu",
                "1400",
                "10.88.0.0/16",
                "10.77.0.1",
            ],
        ),
        (
            "eni",
            "etc/network/interfaces.d/50-cloud-init",
            vec![
                "iface mesh0 inet static",
                "10.77.0.2/24",
                "mtu 1400",
                "10.88.0.0/16",
                "10.77.0.1",
            ],
        ),
        ("eni", "etc/udev/rules.d/70-persistent-net.rules", vec![&udev_match]),
    ];
    for (kind, file, needles) in expectations {
        let out = dir.path().join(kind);
        common::run_ok(
            Process::new("cloud-init")
                .args([
                    "devel",
                    "net-convert",
                    "--kind",
                    "yaml",
                    "--distro",
                    "debian",
                    "--output-kind",
                    kind,
                ])
                .arg("--network-data")
                .arg(&input)
                .arg("--directory")
                .arg(&out),
        );
        let rendered =
            fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{kind}: no {file}: {e}"));
        let lowered = rendered.to_ascii_lowercase();
        for needle in needles {
            assert!(lowered.contains(needle), "{kind} {file} lacks {needle}:\n{rendered}");
        }
    }
}
