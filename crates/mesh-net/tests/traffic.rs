//! Two test "hosts" (namespaces joined to the mesh bridge by veth pairs, standing in for
//! VMs) exchange traffic, checked with `ping` and `iperf3` run inside them, while the link
//! controls cut and restore it and a 1 mbit/s tbf slows it down. `ip`/`tc` are the
//! independent readers of the state the controls set.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mesh_net::{MeshNetwork, NetHandle, Netns};

const H1_ADDR: &str = "10.200.0.11";
const H2_ADDR: &str = "10.200.0.12";

/// One `ping -c 1 -W 1` from inside `netns`.
fn ping(netns: &Netns, target: &str) -> bool {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "1", "-n", "-q", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    netns.prepare_command(&mut cmd);
    cmd.status().expect("cannot run `ping` (is iputils-ping installed?)").success()
}

/// Pings until one answer comes back, for up to 5 s (ARP and the bridge's FDB may need a
/// moment after a change).
fn pings_within_5s(netns: &Netns, target: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ping(netns, target) {
            return true;
        }
    }
    false
}

/// Starts a one-shot iperf3 server inside `netns`.
fn iperf_server(netns: &Netns, bind: &str) -> Child {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-B", bind, "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null());
    netns.prepare_command(&mut cmd);
    cmd.spawn().expect("cannot run `iperf3` (is it installed?)")
}

/// Kills and reaps a child process (one this test started) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Throughput in bit/s of a `seconds`-long TCP transfer from `client` to the iperf3 server
/// at H2_ADDR inside `server`, as the receiver counted it.
fn throughput(client: &Netns, server: &Netns, seconds: u32) -> f64 {
    let _server_process = KillOnDrop(iperf_server(server, H2_ADDR));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-c", H2_ADDR, "-p", "5201", "-t", &seconds.to_string(), "-J"]);
        client.prepare_command(&mut cmd);
        let output = cmd.output().expect("cannot run `iperf3` (is it installed?)");
        // iperf3 3.12 exits 0 even when it cannot connect; the JSON says what happened.
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(rate) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            return rate;
        }
        // The server may not listen yet.
        assert!(Instant::now() < deadline, "iperf3 client keeps failing: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hosts_talk_over_the_bridge_and_the_link_controls_bite() {
    let (mesh, h1_name, h2_name) = (unique_ns(), unique_ns(), unique_ns());
    let _guard = NsGuard(vec![mesh.clone(), h1_name.clone(), h2_name.clone()]);
    let rt = runtime();

    let spec = spec(&mesh, 2);
    let mut journal = Vec::new();
    let net =
        rt.block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal))).expect("network");
    let h1 = Netns::create(&h1_name).expect("host 1");
    let h2 = Netns::create(&h2_name).expect("host 2");

    // Each host: a veth whose bridge-side end is a bridge port, like a VM's tap.
    rt.block_on(async {
        let bridge_index = net.handle().link_index(&spec.bridge).await.expect("bridge index");
        for (port, host, addr) in [("vh1", &h1, H1_ADDR), ("vh2", &h2, H2_ADDR)] {
            net.handle().create_veth(port, "eth0", host).await.expect("veth");
            net.handle().enslave(port, bridge_index, spec.mtu).await.expect("enslave");
            let inside = NetHandle::open(host).await.expect("handle in host");
            inside.set_link_up("lo", true).await.expect("lo up");
            run("ip", &["-n", host.name(), "link", "set", "eth0", "mtu", "1400", "up"]);
            run("ip", &["-n", host.name(), "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
    });

    assert!(pings_within_5s(&h1, H2_ADDR), "h1 reaches h2 across the bridge");
    assert!(ping(&h1, "10.200.0.1"), "h1 reaches the gateway");

    // Link down: no traffic; up again: back.
    rt.block_on(net.handle().set_link_up("vh2", false)).expect("down");
    let shown = ip_json(&["-n", &mesh, "-j", "link", "show", "vh2"]);
    assert!(!shown[0]["flags"].as_array().expect("flags").contains(&"UP".into()), "{shown}");
    assert!(!ping(&h1, H2_ADDR), "no traffic with the port down");
    rt.block_on(net.handle().set_link_up("vh2", true)).expect("up");
    assert!(pings_within_5s(&h1, H2_ADDR), "traffic is back");

    // Detached from the bridge: no traffic; re-attached: back.
    rt.block_on(net.handle().set_master("vh2", None)).expect("detach");
    let shown = ip_json(&["-n", &mesh, "-j", "link", "show", "vh2"]);
    assert!(shown[0].get("master").is_none(), "{shown}");
    assert!(!ping(&h1, H2_ADDR), "no traffic with the port detached");
    rt.block_on(net.handle().set_master("vh2", Some(&spec.bridge))).expect("attach");
    let shown = ip_json(&["-n", &mesh, "-j", "link", "show", "vh2"]);
    assert_eq!(shown[0]["master"], spec.bridge.as_str());
    assert!(pings_within_5s(&h1, H2_ADDR), "traffic is back");

    // Both ports isolated: they cannot reach each other, only the gateway.
    for port in ["vh1", "vh2"] {
        rt.block_on(net.handle().set_port_isolated(port, true)).expect("isolate");
    }
    let shown = ip_json(&["-n", &mesh, "-d", "-j", "link", "show", "vh1"]);
    assert_eq!(shown[0]["linkinfo"]["info_slave_data"]["isolated"], true, "{shown}");
    assert!(!ping(&h1, H2_ADDR), "isolated ports do not talk");
    assert!(ping(&h1, "10.200.0.1"), "the gateway is not a port and still answers");
    rt.block_on(net.handle().set_port_isolated("vh1", false)).expect("lift isolation");
    assert!(pings_within_5s(&h1, H2_ADDR), "one isolated port may talk to a non-isolated one");
    rt.block_on(net.handle().set_port_isolated("vh2", false)).expect("lift isolation");
    let links = rt.block_on(net.handle().links()).expect("dump");
    assert!(links
        .iter()
        .filter(|l| l.name.starts_with("vh"))
        .all(|l| l.port_isolated == Some(false)));

    // Rate limit towards h2: about 1 mbit/s.
    let unlimited = throughput(&h1, &h2, 1);
    rt.block_on(net.handle().set_tbf("vh2", 1_000_000, 4096, 50_000)).expect("tbf");
    let tc = run("tc", &["-n", &mesh, "-j", "qdisc", "show", "dev", "vh2"]);
    let tc: serde_json::Value = serde_json::from_str(&tc).expect("tc -j is JSON");
    assert_eq!(tc[0]["kind"], "tbf", "{tc}");
    assert_eq!(tc[0]["options"]["rate"], 125_000, "{tc}");
    assert_eq!(tc[0]["options"]["burst"], 4096, "{tc}");
    let limited = throughput(&h1, &h2, 3);
    eprintln!("throughput: unlimited {unlimited:.0} bit/s, tbf 1 mbit {limited:.0} bit/s");
    assert!(
        (0.6e6..1.4e6).contains(&limited),
        "with a 1 mbit/s tbf the transfer ran at {limited:.0} bit/s"
    );
    assert!(unlimited > 20e6, "without tbf the transfer ran at only {unlimited:.0} bit/s");

    rt.block_on(net.handle().clear_qdisc("vh2")).expect("clear");
    rt.block_on(net.handle().clear_qdisc("vh2")).expect("clearing twice is fine");
    let tc = run("tc", &["-n", &mesh, "-j", "qdisc", "show", "dev", "vh2"]);
    assert!(!tc.contains("tbf"), "{tc}");
    let restored = throughput(&h1, &h2, 1);
    assert!(restored > 20e6, "after clearing the tbf the transfer ran at {restored:.0} bit/s");

    rt.block_on(net.destroy()).expect("teardown");
    // The veths were not in the journal (the test made them); they die with the mesh
    // namespace, which the kernel cleans up asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = run("ip", &["-n", &h1_name, "-br", "link"]);
        if !left.contains("eth0") {
            break;
        }
        assert!(Instant::now() < deadline, "the veth outlived the mesh namespace: {left}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
