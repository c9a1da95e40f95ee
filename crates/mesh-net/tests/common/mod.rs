//! Helpers shared by the integration tests: unique names, the `ip` tool as an independent
//! reader, and guards that always remove the namespaces a test made.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_net::{Created, MeshNetworkSpec, Netns};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A namespace name unique to this process and call: `mnt-PID-N`.
pub fn unique_ns() -> String {
    format!("mnt-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs a tool and returns its stdout, failing the test with the tool's name if it is
/// missing or fails.
pub fn run(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{tool}` (is it installed?): {e}"));
    assert!(
        output.status.success(),
        "`{tool} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

/// `ip ARGS` parsed as JSON.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run("ip", args)).expect("ip -j prints JSON")
}

/// Names listed by `ip netns list`.
pub fn ip_netns_names() -> Vec<String> {
    run("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Deletes the listed namespaces when dropped, also when the test panics.
pub struct NsGuard(pub Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Netns::delete_if_exists(name);
        }
    }
}

/// A spec with `taps` taps and MTU 1400 (not the default, so the test sees it was set).
pub fn spec(netns: &str, taps: usize) -> MeshNetworkSpec {
    MeshNetworkSpec {
        netns: netns.into(),
        bridge: "meshbr".into(),
        gateway: Ipv4Addr::new(10, 200, 0, 1),
        prefix_len: 24,
        mtu: 1400,
        taps: (0..taps).map(|i| mesh_net::tap_name(netns, i)).collect(),
    }
}

/// A journal that remembers everything in a vector.
pub fn recorder(log: &mut Vec<Created>) -> impl FnMut(&Created) -> std::io::Result<()> + Send + '_ {
    move |object: &Created| {
        log.push(object.clone());
        Ok(())
    }
}

/// A multi-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime starts")
}
