//! Benchmark: a namespace with a bridge and N taps, up and down, with mesh-net versus the
//! same steps done by `ip` commands, measured in the same run.
//!
//! `cargo run -p mesh-net --example bench_net -- [--taps 32] [--rounds 5] [--json]`
//! (root needed). Prints the median of each figure; with `--json` one JSON object on stdout,
//! for `cargo xtask bench`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_net::{tap_name, MeshNetwork, MeshNetworkSpec};

fn spec(netns: &str, taps: usize) -> MeshNetworkSpec {
    MeshNetworkSpec {
        netns: netns.into(),
        bridge: "br0".into(),
        gateway: Ipv4Addr::new(10, 250, 0, 1),
        prefix_len: 24,
        mtu: 1500,
        taps: (0..taps).map(|i| tap_name(netns, i)).collect(),
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("cannot run `ip`");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// The same network with `ip`: what a shell script would do.
fn ip_up(spec: &MeshNetworkSpec) {
    let ns = spec.netns.as_str();
    let mtu = spec.mtu.to_string();
    let address = format!("{}/{}", spec.gateway, spec.prefix_len);
    ip(&["netns", "add", ns]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
    ip(&["-n", ns, "link", "add", &spec.bridge, "mtu", &mtu, "type", "bridge"]);
    ip(&["-n", ns, "addr", "add", &address, "dev", &spec.bridge]);
    ip(&["-n", ns, "link", "set", &spec.bridge, "up"]);
    for tap in &spec.taps {
        ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["-n", ns, "link", "set", tap, "mtu", &mtu, "master", &spec.bridge, "up"]);
    }
}

/// Removing the namespace removes its links too, as mesh-net's teardown relies on.
fn ip_down(spec: &MeshNetworkSpec) {
    ip(&["netns", "del", &spec.netns]);
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let mut taps = 32;
    let mut rounds = 5;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--taps" => taps = args.next().and_then(|v| v.parse().ok()).expect("--taps N"),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--json" => json = true,
            other => panic!("unknown argument {other}"),
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut ours_up, mut ours_down, mut ip_up_t, mut ip_down_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let spec = spec(&format!("mnb-{}-{round}", std::process::id()), taps);

        let started = Instant::now();
        let net = rt
            .block_on(MeshNetwork::create(&spec, &mut |_: &mesh_net::Created| Ok(())))
            .expect("create");
        ours_up.push(started.elapsed());
        let started = Instant::now();
        rt.block_on(net.destroy()).expect("destroy");
        ours_down.push(started.elapsed());

        let started = Instant::now();
        ip_up(&spec);
        ip_up_t.push(started.elapsed());
        let started = Instant::now();
        ip_down(&spec);
        ip_down_t.push(started.elapsed());
    }

    let (ou, od, iu, id) = (median(ours_up), median(ours_down), median(ip_up_t), median(ip_down_t));
    if json {
        println!(
            "{{\"taps\":{taps},\"rounds\":{rounds},\"mesh_net_up_ms\":{ou:.1},\
             \"mesh_net_down_ms\":{od:.1},\"ip_up_ms\":{iu:.1},\"ip_down_ms\":{id:.1}}}"
        );
    } else {
        println!("namespace + bridge + {taps} taps, median of {rounds} rounds:");
        println!("  up:   mesh-net {ou:7.1} ms   ip commands {iu:7.1} ms   ({:.1}x)", iu / ou);
        println!("  down: mesh-net {od:7.1} ms   ip commands {id:7.1} ms   ({:.1}x)", id / od);
    }
}
