//! Every kind of bad input the issue lists is refused by `Seed::from_files` (the engine of
//! `mesh seed`) with an error naming the file and the problem, and what is merely untidy is
//! normalised. PyYAML and cloud-init's MIME sniffing confirm the cases we normalise.

mod common;

use mesh_cloudinit::{
    yaml::YamlError, MetaDataError, NetworkConfigError, Seed, SeedError, UserDataError,
};

const META: &[u8] = b"instance-id: iid-test\nlocal-hostname: node\n";

fn user_data_error(user_data: &[u8]) -> UserDataError {
    match Seed::from_files(user_data, META, None, None) {
        Err(SeedError::CheckUserData(error)) => error,
        other => panic!("expected a user-data error for {user_data:?}, got {other:?}"),
    }
}

fn user_data_of(seed: &Seed) -> &[u8] {
    seed.files().into_iter().find(|(name, _)| *name == "user-data").expect("always present").1
}

#[test]
fn leading_blank_lines_and_bom_are_normalised_away() {
    let seed =
        Seed::from_files(b"\xef\xbb\xbf\n\n   \n#cloud-config\nhostname: a\n", META, None, None)
            .expect("normalised");
    assert_eq!(user_data_of(&seed), b"#cloud-config\nhostname: a\n");
}

#[test]
fn document_marker_before_header_is_rejected() {
    let error = user_data_error(b"---\n#cloud-config\nhostname: a\n");
    assert!(matches!(error, UserDataError::CheckMarkerBeforeHeader), "{error:?}");
}

#[test]
fn text_that_is_no_known_format_is_rejected() {
    let error = user_data_error(b"hostname: a\n");
    assert!(matches!(error, UserDataError::CheckUnknownFormat { .. }), "{error:?}");
    let error = user_data_error(b"#include\nhttp://example.invalid/x\n");
    assert!(matches!(error, UserDataError::CheckUnsupportedFormat { .. }), "{error:?}");
}

#[test]
fn yaml_that_does_not_parse_is_rejected() {
    // Each of these makes PyYAML raise; confirm with it so the cases stay honest.
    let broken = ["a: [1, 2\n", "a: b: c\n", "a: 'x\n", "- a\nb: c\n", "a: 1\na: 2\n"];
    let loaded = common::pyyaml_safe_load_all(&broken.map(str::to_owned));
    for (text, pyyaml) in broken.iter().zip(&loaded) {
        let error = user_data_error(format!("#cloud-config\n{text}").as_bytes());
        assert!(matches!(error, UserDataError::ParseCloudConfig(_)), "{text:?}: {error:?}");
        // Duplicate keys are the one case PyYAML accepts (keeping the last value silently).
        if !text.contains("a: 1\na: 2") {
            assert!(
                pyyaml.get("error").is_some(),
                "PyYAML accepts {text:?}; the case is mislabelled"
            );
        }
    }
}

#[test]
fn tab_indentation_is_rejected_naming_the_line() {
    // Line 3 of the file: the header line counts, as in an editor.
    let error = user_data_error(b"#cloud-config\nruncmd:\n\t- echo hi\n");
    assert!(
        matches!(error, UserDataError::ParseCloudConfig(YamlError::TabIndentation { line: 3, .. })),
        "{error:?}"
    );
    let loaded = common::pyyaml_safe_load_all(&["runcmd:\n\t- echo hi\n".to_owned()]);
    assert!(loaded[0].get("error").is_some(), "PyYAML accepts tab indentation; the case is wrong");
}

#[test]
fn non_utf8_bytes_are_rejected_with_their_offset() {
    let error = user_data_error(b"#cloud-config\nhostname: caf\xe9\n");
    assert!(matches!(error, UserDataError::Decode { offset: 27, .. }), "{error:?}");
}

#[test]
fn control_characters_are_rejected() {
    for (bytes, code) in [
        (&b"#!/bin/sh\necho \x07\n"[..], 7),
        (b"#cloud-config\na: \"\x00\"\n", 0),
        (b"#!/bin/sh\r\necho\rx\n", 13),
    ] {
        let error = user_data_error(bytes);
        assert!(
            matches!(error, UserDataError::CheckControlCharacter { code: c, .. } if c == code),
            "{bytes:?}: {error:?}"
        );
    }
}

#[test]
fn crlf_in_scripts_is_converted_to_lf() {
    let seed = Seed::from_files(b"#!/bin/sh\r\necho hi\r\n", META, None, None).expect("converted");
    assert_eq!(user_data_of(&seed), b"#!/bin/sh\necho hi\n");
}

#[test]
fn crlf_inside_a_mime_script_part_is_rejected() {
    let message =
        mesh_cloudinit::multipart(&[("text/x-shellscript", "a.sh", b"#!/bin/sh\r\necho\r\n")])
            .expect("any bytes can be a part");
    let error = user_data_error(&message);
    assert!(
        matches!(&error, UserDataError::CheckPart { source, .. } if matches!(**source, UserDataError::CheckScriptCrlf)),
        "{error:?}"
    );
}

#[test]
fn mime_lookalike_text_is_treated_as_mime_like_cloud_init_does() {
    // cloud-init reads any user-data mentioning "MIME-Version:" early on as MIME; a script
    // doing so is then no valid MIME message, and we say so rather than let it be skipped.
    let error = user_data_error(b"#!/bin/sh\necho 'MIME-Version: 1.0'\n");
    assert!(matches!(error, UserDataError::ParseMime(_)), "{error:?}");
}

#[test]
fn meta_data_without_instance_id_is_rejected() {
    let error =
        Seed::from_files(b"#!/bin/sh\n", b"local-hostname: node\n", None, None).expect_err("no id");
    assert!(
        matches!(error, SeedError::CheckMetaData(MetaDataError::CheckInstanceIdMissing)),
        "{error:?}"
    );
    let error =
        Seed::from_files(b"#!/bin/sh\n", b"instance-id: ''\n", None, None).expect_err("empty id");
    assert!(
        matches!(error, SeedError::CheckMetaData(MetaDataError::CheckInstanceId { .. })),
        "{error:?}"
    );
}

#[test]
fn meta_data_near_miss_keys_are_rejected() {
    for key in ["instance_id", "InstanceId", "instance-ID", "local_hostname"] {
        let meta = format!("instance-id: iid-1\n{key}: x\n");
        let meta =
            if key.starts_with('i') { meta.replacen("instance-id: iid-1\n", "", 1) } else { meta };
        let error = Seed::from_files(b"#!/bin/sh\n", meta.as_bytes(), None, None).expect_err(key);
        assert!(
            matches!(&error, SeedError::CheckMetaData(MetaDataError::CheckNearMissKey { key: k, .. }) if k == key),
            "{key}: {error:?}"
        );
    }
}

#[test]
fn network_config_with_wrapper_or_unknown_version_is_rejected() {
    type Expect = fn(&NetworkConfigError) -> bool;
    let cases: [(&[u8], Expect); 4] = [
        (b"network:\n  version: 2\n  ethernets: {}\n", |e| {
            matches!(e, NetworkConfigError::CheckNetworkWrapper)
        }),
        (b"version: 3\nethernets: {}\n", |e| matches!(e, NetworkConfigError::CheckVersion { .. })),
        (b"version: '2'\n", |e| matches!(e, NetworkConfigError::CheckVersion { .. })),
        (b"ethernets: {}\n", |e| matches!(e, NetworkConfigError::CheckVersion { .. })),
    ];
    for (network, expected) in cases {
        match Seed::from_files(b"#!/bin/sh\n", META, Some(network), None) {
            Err(SeedError::CheckNetworkConfig(error)) => {
                assert!(expected(&error), "{network:?}: {error:?}")
            }
            other => panic!("{network:?} was not rejected as network-config: {other:?}"),
        }
    }
}

#[test]
fn bad_vendor_data_is_rejected_as_vendor_data() {
    let error =
        Seed::from_files(b"#!/bin/sh\n", META, None, Some(b"\tnot: yaml\n")).expect_err("bad");
    assert!(matches!(error, SeedError::CheckVendorData(_)), "{error:?}");
}

#[test]
fn good_inputs_pass_through_byte_for_byte() {
    let user = b"#cloud-config\nhostname: a\n";
    let network = b"version: 2\nethernets:\n  e0:\n    match: {macaddress: '52:54:00:00:00:01'}\n";
    let seed = Seed::from_files(user, META, Some(network), Some(b"#!/bin/sh\n")).expect("valid");
    let files = seed.files();
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["user-data", "meta-data", "network-config", "vendor-data"]);
    assert_eq!(files[0].1, user);
    assert_eq!(files[1].1, META);
    assert_eq!(files[2].1, network);
    assert_eq!(seed.instance_id(), "iid-test");
}

#[test]
fn errors_after_leading_blank_lines_name_the_files_line() {
    let error = user_data_error(b"\n\n\n#cloud-config\nhostname: a\nhostname: b\n");
    assert!(error.to_string().contains("line 6"), "{error}");
    let error = user_data_error(b"\r\n\n#cloud-config\nruncmd:\n\t- x\n");
    assert!(error.to_string().contains("line 5"), "{error}");
}
