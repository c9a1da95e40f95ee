//! Any string we place in a cloud-config reads back unchanged through PyYAML's `safe_load`,
//! the YAML 1.1 loader cloud-init uses.

mod common;

use mesh_cloudinit::{CloudConfig, Command, MetaData, RenderError, SshHostKeys, User, WriteFile};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Strings YAML 1.1 readers turn into something other than the same string when unquoted,
/// or that break a stream.
const LOOKALIKES: &[&str] = &[
    "yes",
    "no",
    "on",
    "off",
    "Yes",
    "ON",
    "y",
    "n",
    "true",
    "False",
    "null",
    "~",
    "",
    "0755",
    "0o755",
    "0x1F",
    "1_000",
    "12:30",
    "1:20:30",
    "<<",
    "=",
    "1e3",
    "1.0",
    ".inf",
    "-.inf",
    ".nan",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "- a",
    "? a",
    "a: b",
    "a:b",
    "#c",
    "a #c",
    "'",
    "\"",
    "\\",
    "&a",
    "*a",
    "!a",
    "!!str",
    "%a",
    "@a",
    "`a",
    "|",
    ">",
    "{a}",
    "[a]",
    ",",
    " lead",
    "trail ",
    "\t",
    "a\tb",
    "\n",
    "a\nb\n",
    "a\n\n",
    "\n\na",
    "a\r\nb",
    "\r",
    "\u{80}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{2029}",
    "\u{feff}",
    "\u{fffe}",
    "\u{0}",
    "\u{7}",
    "\u{1b}[1m",
    "\u{7f}",
    "é",
    "😀",
    "---",
    "...",
    "--- a",
    "... a",
];

/// Pieces that, glued together, hit YAML's special cases in the middle of strings too.
fn nasty_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(LOOKALIKES).prop_map(str::to_owned),
        2 => "[a-z ]{0,12}",
        1 => any::<String>(),
        1 => prop::collection::vec(any::<char>(), 0..4).prop_map(|c| c.into_iter().collect()),
        1 => "[ \t\n:#'\"\\\\-]{1,6}",
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// A cloud-config with `s` in every string-valued place we write, and the JSON PyYAML
/// must read back.
fn config_with(s: &str) -> (CloudConfig, Value) {
    let mut config = CloudConfig::default();
    config.users.push(User {
        name: "mesh".into(),
        gecos: Some(s.into()),
        shell: Some(s.into()),
        passwd: Some(s.into()),
        plain_text_passwd: Some(s.into()),
        ssh_authorized_keys: vec![s.into()],
        sudo: Some(s.into()),
        ..User::default()
    });
    config.ssh_keys = SshHostKeys {
        ed25519_private: Some(s.into()),
        ed25519_public: Some(s.into()),
        ..SshHostKeys::default()
    };
    config.write_files.push(WriteFile {
        path: "/etc/x".into(),
        content: s.into(),
        owner: Some(s.into()),
        ..WriteFile::default()
    });
    config.mounts.push(vec![s.into(), "/mnt".into()]);
    config.bootcmd.push(Command::Shell(s.into()));
    config.runcmd.push(Command::Argv(vec![s.into(), s.into()]));
    config.final_message = Some(s.into());
    config.extra.insert(format!("x-{s}"), json!({ s: [s, 1, true, null] }));

    let expected = json!({
        "users": [{
            "name": "mesh", "gecos": s, "sudo": s, "shell": s, "ssh_authorized_keys": [s],
            "passwd": s, "plain_text_passwd": s,
        }],
        "ssh_keys": { "ed25519_private": s, "ed25519_public": s },
        "write_files": [{ "path": "/etc/x", "content": s, "owner": s }],
        "mounts": [[s, "/mnt"]],
        "bootcmd": [s],
        "runcmd": [[s, s]],
        "final_message": s,
        format!("x-{s}"): { s: [s, 1, true, null] },
    });
    (config, expected)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Check,
    Skip,
}

/// Renders each string into a cloud-config and checks PyYAML reads all of them back.
///
/// With `schema`, each document is also validated against cloud-init's schema (slow: about
/// 10 ms a document, so the property test leaves it out).
fn check_round_trip(strings: &[String], schema: Schema) {
    let mut documents = Vec::new();
    let mut expected = Vec::new();
    for s in strings {
        let (config, want) = config_with(s);
        match config.render() {
            Ok(text) => {
                assert!(text.starts_with("#cloud-config\n"), "header missing: {text:?}");
                documents.push(text);
                expected.push(want);
            }
            // The only refusal allowed for arbitrary strings, and only when it is warranted.
            Err(RenderError::CheckMimeLookalike) => {
                assert!(
                    s.to_ascii_lowercase().contains("mime-version:"),
                    "spurious refusal: {s:?}"
                );
            }
            Err(e) => panic!("render failed for {s:?}: {e}"),
        }
    }
    // meta-data goes through the same emitter.
    for s in strings
        .iter()
        // An instance-id names a directory under /var/lib/cloud/instances: `.` and `..` are
        // refused like `/` (regression: the generator found `.`, which this filter let through).
        .filter(|s| {
            !s.trim().is_empty()
                && !matches!(s.as_str(), "." | "..")
                && !s.contains('/')
                && !s.chars().any(char::is_control)
        })
    {
        let meta = MetaData { instance_id: s.clone(), local_hostname: s.clone(), dsmode: None };
        documents.push(meta.render().expect("usable instance-id renders"));
        expected.push(json!({ "instance-id": s, "local-hostname": s }));
    }

    if schema == Schema::Check {
        let cloud_configs: Vec<String> =
            documents.iter().filter(|d| d.starts_with("#cloud-config\n")).cloned().collect();
        let errors = common::cloud_init_schema_errors(&cloud_configs);
        for (document, error) in cloud_configs.iter().zip(errors) {
            assert!(
                error.is_none(),
                "cloud-init's schema rejects our output: {error:?}\n{document}"
            );
        }
    }

    let loaded = common::pyyaml_safe_load_all(&documents);
    for ((document, got), want) in documents.iter().zip(&loaded).zip(&expected) {
        assert_eq!(got.get("ok"), Some(want), "PyYAML read back something else from:\n{document}");
    }
}

#[test]
fn yaml11_lookalikes_round_trip_through_pyyaml() {
    let strings: Vec<String> = LOOKALIKES.iter().map(|s| (*s).to_owned()).collect();
    check_round_trip(&strings, Schema::Check);
}

#[test]
fn long_and_multiline_values_round_trip_through_pyyaml() {
    // Long lines make the emitter fold or use block scalars; keys longer than 1024
    // characters cannot be implicit keys in YAML.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI".to_owned() + &"Q".repeat(300) + " user@host";
    let strings = vec![
        key.clone(),
        format!("{key}\n{key}\n"),
        "x ".repeat(700),
        "k".repeat(1100),
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            "b3Blbn".repeat(40)
        ),
        " \n  indented first line\n\ttab\n\n\n".to_owned(),
        "trailing spaces   \nand   \n".to_owned(),
    ];
    check_round_trip(&strings, Schema::Check);
}

proptest! {
    // Each case is a batch of strings checked by one Python process, so a run stays at a
    // few seconds while still covering thousands of strings.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_round_trip_through_pyyaml(strings in prop::collection::vec(nasty_string(), 150)) {
        check_round_trip(&strings, Schema::Skip);
    }
}
