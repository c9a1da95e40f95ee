//! Faults on a running mesh of real Debian guests: link delay and loss (seeded, replayable),
//! partitions, a paused node, a killed and restarted node, and the mesh back to its old
//! throughput once every fault is cleared. Measured from inside the guests.

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_core::fault::NodeFault;
use mesh_core::netfault::NetOp;
use mesh_core::{Mesh, MeshSpec, SpecOverrides, UpOptions};
use mesh_qemu::Arch;

const T: Duration = Duration::from_secs(120);

async fn run(mesh: &Mesh, node: &str, cmd: &str) -> String {
    let r = mesh.exec(cmd, &[node.to_owned()], T).await.expect("exec");
    assert_eq!(r.len(), 1);
    assert!(r[0].ok(), "{node}: `{cmd}` failed: {}{}", r[0].stdout, r[0].stderr);
    r[0].stdout.clone()
}

fn ip(mesh: &Mesh, node: &str) -> String {
    mesh.plan.node(node).expect("node").ip.to_string()
}

/// Average RTT in ms of `count` pings from `from` to `to`.
async fn rtt(mesh: &Mesh, from: &str, to: &str) -> f64 {
    let out = run(mesh, from, &format!("ping -c 10 -i 0.2 -q {}", ip(mesh, to))).await;
    let line = out.lines().find(|l| l.contains("min/avg/max")).expect("rtt line");
    let avg = line.split('=').nth(1).expect("values").trim().split('/').nth(1).expect("avg");
    avg.parse().expect("number")
}

/// Whether a single ping from `from` reaches `to`.
async fn reaches(mesh: &Mesh, from: &str, to: &str) -> bool {
    let r = mesh
        .exec(&format!("ping -c 2 -i 0.3 -W 1 -q {}", ip(mesh, to)), &[from.to_owned()], T)
        .await
        .expect("exec");
    r[0].ok()
}

/// Sequence numbers answered out of 200 fast pings.
async fn answered(mesh: &Mesh, from: &str, to: &str) -> BTreeSet<u32> {
    let out = run(mesh, from, &format!("ping -c 200 -i 0.01 -W 1 {} || true", ip(mesh, to))).await;
    out.lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect()
}

/// TCP throughput from `from` to `to` in Mbit/s, with python3 on both ends.
async fn throughput(mesh: &Mesh, from: &str, to: &str) -> f64 {
    let server = "setsid python3 -c 'import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((\"0.0.0.0\",5001));s.listen(1);c,_=s.accept()\nwhile c.recv(65536): pass' >/dev/null 2>&1 &";
    run(mesh, to, server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = format!(
        "python3 -c 'import socket,time;s=socket.create_connection((\"{}\",5001));b=bytes(65536);t=time.time();n=0\nwhile time.time()-t<3: s.sendall(b); n+=len(b)\ns.close();print(n*8/(time.time()-t)/1e6)'",
        ip(mesh, to)
    );
    run(mesh, from, &client.replace('{', "{{").replace('}', "}}").replace("{{}}", "{}"))
        .await
        .trim()
        .parse()
        .expect("mbit/s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_real_guests() {
    mesh_core::image::ImageStore::open_default()
        .and_then(|s| s.build(Arch::X86_64, &Default::default()))
        .expect("x86_64 base image (mmdebstrap and friends must be installed)");
    let name = format!("flt{}", std::process::id() % 100000);
    let spec = MeshSpec::resolve(
        None,
        &SpecOverrides { name: Some(name), n_x86: Some(3), no_repo: true, ..Default::default() },
    )
    .expect("spec");
    let mut mesh = Mesh::up(&spec, UpOptions::default()).await.expect("mesh up");
    for r in mesh.wait_ready().await.to_vec() {
        assert!(
            r.is_ready(),
            "{} not ready: {:?}\n{}",
            r.node,
            r.error,
            r.serial_tail.unwrap_or_default()
        );
    }
    let (a, b, c) = ("x86-1", "x86-2", "x86-3");
    // TCG throughput swings a lot from run to run: take the best of three on each side.
    let mut baseline_mbit: f64 = 0.0;
    for _ in 0..3 {
        baseline_mbit = baseline_mbit.max(throughput(&mesh, a, b).await);
    }

    // Delay: the round trip through a rises by the delay asked for (within 10%).
    let before = rtt(&mesh, a, b).await;
    mesh.net(
        &NetOp::Delay { node: a.into(), delay: Duration::from_millis(100), jitter: Duration::ZERO },
        None,
    )
    .await
    .expect("delay");
    let after = rtt(&mesh, a, b).await;
    let added = after - before;
    assert!(
        (90.0..=110.0).contains(&added),
        "delay added {added:.1} ms ({before:.1} -> {after:.1})"
    );
    mesh.net(&NetOp::Clear { node: None }, None).await.expect("clear");

    // Loss: 20% shows in 200 pings, and the same seed loses the same sequence numbers.
    let loss = NetOp::Loss { node: a.into(), ppm: 200_000 };
    mesh.net(&loss, Some(42)).await.expect("loss");
    let first = answered(&mesh, a, b).await;
    let lost = 200 - first.len();
    assert!((20..=60).contains(&lost), "lost {lost} of 200 at 20%");
    mesh.net(&loss, Some(42)).await.expect("loss again");
    let second = answered(&mesh, a, b).await;
    assert_eq!(first, second, "the same seed must lose the same packets");
    mesh.net(&loss, Some(43)).await.expect("other seed");
    assert_ne!(answered(&mesh, a, b).await, first, "another seed should lose others");
    mesh.net(&NetOp::Clear { node: None }, None).await.expect("clear");

    // Partition {a,b} / {c}: exactly the cross-group pairs are blocked, both ways.
    mesh.net(
        &NetOp::Partition {
            groups: vec![vec![a.into(), b.into()], vec![c.into()]],
            one_way: false,
        },
        None,
    )
    .await
    .expect("partition");
    for (x, y, want) in
        [(a, b, true), (b, a, true), (a, c, false), (c, a, false), (b, c, false), (c, b, false)]
    {
        assert_eq!(reaches(&mesh, x, y).await, want, "{x} -> {y} during the partition");
    }
    mesh.net(&NetOp::Heal, None).await.expect("heal");
    for (x, y) in [(a, c), (c, b), (b, a)] {
        assert!(reaches(&mesh, x, y).await, "{x} -> {y} after heal");
    }

    // Bad input changes nothing.
    let state_file = mesh_core::netfault::state_file(&mesh.plan);
    let state_before = std::fs::read(&state_file).expect("state");
    for bad in [
        NetOp::Loss { node: "nope".into(), ppm: 1 },
        NetOp::Partition { groups: vec![vec![a.into()], vec![a.into(), b.into()]], one_way: false },
        NetOp::Loss { node: a.into(), ppm: 1_500_000 },
    ] {
        assert!(mesh.net(&bad, None).await.is_err(), "{bad:?} accepted");
    }
    assert_eq!(std::fs::read(&state_file).expect("state"), state_before);

    // A paused node answers nothing until resumed.
    mesh.fault(b, NodeFault::Pause).await.expect("pause");
    assert!(!reaches(&mesh, a, b).await, "paused node answered");
    mesh.fault(b, NodeFault::Resume).await.expect("resume");
    assert!(reaches(&mesh, a, b).await, "resumed node silent");

    // A killed node restarts with the same address and host key (SSH pins the key).
    let key_before = run(&mesh, c, "cat /etc/ssh/ssh_host_ed25519_key.pub").await;
    mesh.fault(c, NodeFault::Kill).await.expect("kill");
    assert!(!reaches(&mesh, a, c).await, "killed node answered");
    mesh.fault(c, NodeFault::Restart).await.expect("restart");
    let r = mesh.wait_node_ready(c, Duration::from_secs(600)).await.expect("wait");
    assert!(
        r.is_ready(),
        "{c} not ready after restart: {:?}\n{}",
        r.error,
        r.serial_tail.unwrap_or_default()
    );
    assert_eq!(run(&mesh, c, "cat /etc/ssh/ssh_host_ed25519_key.pub").await, key_before);
    assert!(run(&mesh, c, "ip -4 -o addr show mesh0")
        .await
        .contains(&format!("{}/", ip(&mesh, c))));
    assert!(reaches(&mesh, a, c).await);

    // With every fault cleared, nothing is left in the path and throughput is back.
    let netns = mesh_net::Netns::open(&mesh.plan.netns).expect("mesh namespace");
    let handle = mesh_net::NetHandle::open(&netns).await.expect("netlink");
    let links = handle.links().await.expect("links");
    for node in &mesh.plan.nodes {
        let tap = links.iter().find(|l| l.name == node.tap).expect("tap");
        assert_eq!(
            tap.master.as_deref(),
            Some(mesh.plan.bridge.as_str()),
            "{} off the bridge",
            node.name
        );
    }
    assert!(
        links.iter().all(|l| l.kind.as_deref() != Some("veth")),
        "a shaper path is left: {links:?}"
    );
    let mut after_mbit: f64 = 0.0;
    for _ in 0..3 {
        after_mbit = after_mbit.max(throughput(&mesh, a, b).await);
    }
    assert!(
        after_mbit > baseline_mbit * 0.5,
        "throughput {after_mbit:.0} Mbit/s after clearing vs {baseline_mbit:.0} before any fault"
    );
    let events = mesh.events.read();
    for kind in ["fault.net", "fault.node.pause", "fault.node.kill", "fault.node.restart"] {
        assert!(events.iter().any(|e| e.kind == kind), "no {kind} event");
    }
    assert!(events.iter().any(|e| e.detail.get("seed") == Some(&serde_json::json!(42))));
    mesh.teardown().await.expect("teardown");
}
