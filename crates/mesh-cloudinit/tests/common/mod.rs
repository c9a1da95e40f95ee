//! Helpers shared by the integration tests: finding the independent readers and running them.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The interpreter cloud-init itself runs under, with the PyYAML it uses.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Fails the test, naming the Debian package, when `tool` is not installed.
pub fn require(tool: &str, package: &str) {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).exists()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"].iter().any(|dir| Path::new(dir).join(tool).exists())
    };
    assert!(found, "{tool} is required for this test: install the Debian package {package}");
}

/// Runs a command to completion, feeding `stdin`, and returns its output.
pub fn run(command: &mut Command, stdin: &[u8]) -> Output {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {described}: {e}"));
    let mut input = child.stdin.take().expect("stdin was piped");
    input.write_all(stdin).unwrap_or_else(|e| panic!("cannot feed {described}: {e}"));
    drop(input);
    child.wait_with_output().unwrap_or_else(|e| panic!("cannot wait for {described}: {e}"))
}

/// Runs a command and returns its stdout, failing the test with its stderr if it fails.
pub fn run_ok(command: &mut Command) -> String {
    let described = format!("{command:?}");
    let output = run(command, b"");
    assert!(
        output.status.success(),
        "{described} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

/// Loads each document with PyYAML's `safe_load` (the loader cloud-init uses), in one Python
/// process, and returns the results as JSON (`{"error": ...}` for a document PyYAML rejects).
pub fn pyyaml_safe_load_all(documents: &[String]) -> Vec<serde_json::Value> {
    require(SYSTEM_PYTHON, "python3-yaml");
    let script = r#"
import json, sys, yaml
out = []
for doc in json.load(sys.stdin):
    try:
        out.append({"ok": yaml.safe_load(doc)})
    except Exception as e:
        out.append({"error": str(e)})
json.dump(out, sys.stdout)
"#;
    let input = serde_json::to_vec(documents).expect("strings serialize");
    let output = run(Command::new(SYSTEM_PYTHON).arg("-c").arg(script), &input);
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("python wrote JSON");
    assert_eq!(results.len(), documents.len());
    results
}

/// Validates each cloud-config document against cloud-init's own JSON schema (the check
/// behind `cloud-init schema --config-file`), in one Python process. Returns one entry per
/// document: `None` when valid, else cloud-init's complaint.
pub fn cloud_init_schema_errors(documents: &[String]) -> Vec<Option<String>> {
    require(SYSTEM_PYTHON, "cloud-init");
    let script = r#"
import json, sys, yaml
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
schema = get_schema()
out = []
for doc in json.load(sys.stdin):
    try:
        config = yaml.safe_load(doc)
        if not isinstance(config, dict):
            raise ValueError("not a YAML dict")
        validate_cloudconfig_schema(config, schema, strict=True, log_details=False)
        out.append(None)
    except Exception as e:
        out.append(str(e))
json.dump(out, sys.stdout)
"#;
    let input = serde_json::to_vec(documents).expect("strings serialize");
    let output = run(Command::new(SYSTEM_PYTHON).arg("-c").arg(script), &input);
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Option<String>> =
        serde_json::from_slice(&output.stdout).expect("python wrote JSON");
    assert_eq!(results.len(), documents.len());
    results
}
