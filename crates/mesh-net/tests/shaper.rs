//! The userspace shaper on a real mesh network: test "hosts" (namespaces joined to the mesh
//! bridge by veth pairs, standing in for VMs) exchange traffic through a shaper path, and
//! `ping`, `iperf3`, `ip` and the kernel's own UDP sockets are the readers that check the
//! delay, loss, duplication, reordering, rate and partitions the shaper applies, and that
//! removing it restores the network exactly.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mesh_net::shaper::{
    insert_shaper_path, remove_shaper_path, spawn_shaper, Impairment, RunningShaper, ShaperError,
    ShaperPath, ShaperPathError,
};
use mesh_net::{Created, MeshNetwork, MeshNetworkSpec, NetHandle, Netns};

const GATEWAY: &str = "10.200.0.1";

/// A mesh network with `n` test hosts: host i is namespace `hosts[i]` with `eth0` at
/// 10.200.0.(11+i), joined to the bridge by the veth end `vh(i+1)` (its "node port").
struct Lab {
    rt: tokio::runtime::Runtime,
    spec: MeshNetworkSpec,
    net: Option<MeshNetwork>,
    hosts: Vec<Netns>,
    journal: Vec<Created>,
    _guard: NsGuard,
}

impl Lab {
    fn new(n: usize) -> Lab {
        let mesh = unique_ns();
        let host_names: Vec<String> = (0..n).map(|_| unique_ns()).collect();
        let mut all = vec![mesh.clone()];
        all.extend(host_names.iter().cloned());
        let guard = NsGuard(all);
        let rt = runtime();
        let spec = spec(&mesh, 0);
        let mut journal = Vec::new();
        let net = rt
            .block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal)))
            .expect("mesh network is built");
        let hosts: Vec<Netns> =
            host_names.iter().map(|name| Netns::create(name).expect("host namespace")).collect();
        // No IPv6 on the hosts: their multicast listener reports would be IP frames the
        // shaper counts and may drop, which the exact counts below do not expect.
        for host in &hosts {
            host.run(|| {
                for conf in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                    std::fs::write(&path, "1").unwrap_or_else(|e| panic!("{path}: {e}"));
                }
            })
            .expect("enter host");
        }
        rt.block_on(async {
            let bridge_index = net.handle().link_index(&spec.bridge).await.expect("bridge index");
            for (i, host) in hosts.iter().enumerate() {
                let port = Lab::port(i);
                net.handle().create_veth(&port, "eth0", host).await.expect("veth");
                net.handle().enslave(&port, bridge_index, spec.mtu).await.expect("enslave");
                NetHandle::open(host)
                    .await
                    .expect("handle")
                    .set_link_up("lo", true)
                    .await
                    .expect("lo");
                run("ip", &["-n", host.name(), "link", "set", "eth0", "mtu", "1400", "up"]);
                let address = format!("{}/24", Lab::addr(i));
                run("ip", &["-n", host.name(), "addr", "add", &address, "dev", "eth0"]);
            }
        });
        let lab = Lab { rt, spec, net: Some(net), hosts, journal, _guard: guard };
        for i in 1..n {
            assert!(lab.pings_within_5s(0, &Lab::addr(i)), "host 0 reaches host {i}");
        }
        lab
    }

    fn net(&self) -> &NetHandle {
        self.net.as_ref().expect("the network lives as long as the lab").handle()
    }

    fn mesh(&self) -> &str {
        &self.spec.netns
    }

    fn port(i: usize) -> String {
        format!("vh{}", i + 1)
    }

    fn addr(i: usize) -> String {
        format!("10.200.0.{}", 11 + i)
    }

    /// The MAC of host i's `eth0`, as `ip` reports it.
    fn mac(&self, i: usize) -> [u8; 6] {
        let shown = ip_json(&["-n", self.hosts[i].name(), "-j", "link", "show", "eth0"]);
        let text = shown[0]["address"].as_str().expect("eth0 has a MAC");
        let bytes: Vec<u8> =
            text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect();
        bytes.try_into().expect("six bytes")
    }

    fn insert(&mut self, i: usize) -> ShaperPath {
        let (net, journal) = (self.net.as_ref().expect("network").handle(), &mut self.journal);
        self.rt
            .block_on(insert_shaper_path(
                net,
                &self.spec.bridge,
                &Lab::port(i),
                &mut recorder(journal),
            ))
            .expect("shaper path is inserted")
    }

    fn remove(&self, i: usize) -> bool {
        self.rt
            .block_on(remove_shaper_path(self.net(), &self.spec.bridge, &Lab::port(i)))
            .expect("shaper path is removed")
    }

    fn shape(
        &self,
        path: &ShaperPath,
        seed: u64,
        egress: Impairment,
        ingress: Impairment,
    ) -> RunningShaper {
        spawn_shaper(&path.config(seed, egress, ingress)).expect("shaper starts")
    }

    /// Runs `ping ARGS TARGET` inside host `from`; returns the sequence numbers answered and
    /// the whole output.
    fn ping(&self, from: usize, target: &str, args: &[&str]) -> (BTreeSet<u32>, String) {
        let mut cmd = Command::new("ping");
        cmd.args(["-n"]).args(args).arg(target).stderr(Stdio::null());
        self.hosts[from].prepare_command(&mut cmd);
        let output = cmd.output().expect("cannot run `ping` (is iputils-ping installed?)");
        let text = String::from_utf8(output.stdout).expect("ping prints UTF-8");
        let answered = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        (answered, text)
    }

    /// Whether one ping from host `from` to `target` is answered within a second.
    fn pings(&self, from: usize, target: &str) -> bool {
        !self.ping(from, target, &["-c", "1", "-W", "1"]).0.is_empty()
    }

    fn pings_within_5s(&self, from: usize, target: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.pings(from, target) {
                return true;
            }
        }
        false
    }

    /// Average RTT in ms of `count` pings from host `from` to `target`, and each RTT.
    fn rtts(&self, from: usize, target: &str, count: u32) -> (f64, Vec<f64>) {
        let (answered, text) =
            self.ping(from, target, &["-c", &count.to_string(), "-i", "0.05", "-W", "2"]);
        assert_eq!(answered.len(), count as usize, "every ping is answered: {text}");
        let each: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        (each.iter().sum::<f64>() / each.len() as f64, each)
    }

    /// A UDP socket bound inside host `i` to port `port`.
    fn udp(&self, i: usize, port: u16) -> UdpSocket {
        let bind: SocketAddr = format!("{}:{port}", Lab::addr(i)).parse().expect("address");
        let socket =
            self.hosts[i].run(|| UdpSocket::bind(bind)).expect("enter host").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(400))).expect("timeout");
        socket
    }

    /// Sends datagrams numbered 0..count (of `size` bytes, `gap` apart) from host `from`
    /// (port 40000) to host `to` (port 40001); returns the numbers in the order they arrived
    /// and their arrival times.
    fn numbered(
        &self,
        from: usize,
        to: usize,
        count: u32,
        size: usize,
        gap: Duration,
    ) -> Vec<(u32, Instant)> {
        let (sender, receiver) = (self.udp(from, 40000), self.udp(to, 40001));
        let target: SocketAddr = format!("{}:40001", Lab::addr(to)).parse().expect("address");
        let collector = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buffer = vec![0u8; 65536];
            while let Ok(n) = receiver.recv(&mut buffer) {
                if n >= 4 {
                    got.push((
                        u32::from_be_bytes(buffer[..4].try_into().expect("4 bytes")),
                        Instant::now(),
                    ));
                }
            }
            got
        });
        let mut payload = vec![0u8; size.max(4)];
        for i in 0..count {
            payload[..4].copy_from_slice(&i.to_be_bytes());
            sender.send_to(&payload, target).expect("send");
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        collector.join().expect("collector")
    }

    /// How many of `count` datagrams from `from` to `to` arrive.
    fn udp_reaches(&self, from: usize, to: usize) -> usize {
        self.numbered(from, to, 20, 64, Duration::from_millis(2)).len()
    }

    /// Link names of the mesh namespace, as `ip` lists them.
    fn mesh_links(&self) -> serde_json::Value {
        ip_json(&["-n", self.mesh(), "-d", "-j", "link", "show"])
    }

    /// Name, bridge, MTU and flags of every link of the mesh namespace, as `ip` shows them.
    fn link_summary(&self) -> BTreeSet<String> {
        let links = self.mesh_links();
        let links = links.as_array().expect("ip -j link prints an array");
        links
            .iter()
            .map(|l| {
                format!("{} master={} mtu={} {}", l["ifname"], l["master"], l["mtu"], l["flags"])
            })
            .collect()
    }

    /// Throughput in bit/s of a 1 s TCP transfer from host 0 to an iperf3 server on host 1.
    /// A fresh one-off server per attempt; an attempt whose report lacks the received rate
    /// (the client raced the server, or a loaded host stalled it) is retried, boundedly.
    fn throughput(&self) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut server = self.iperf_server();
            std::thread::sleep(Duration::from_millis(200));
            let mut cmd = Command::new("iperf3");
            cmd.args([
                "-c",
                &Lab::addr(1),
                "-p",
                "5201",
                "-t",
                "1",
                "-J",
                "--connect-timeout",
                "3000",
            ]);
            self.hosts[0].prepare_command(&mut cmd);
            let output = cmd.output().expect("cannot run `iperf3` (is it installed?)");
            // Never wait on a server that missed its one client.
            let _ = server.kill();
            let _ = server.wait();
            // iperf3 3.12 with -J exits 0 even when it cannot connect: read the report.
            let report: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
            let rate = report
                .as_ref()
                .filter(|r| r.get("error").is_none())
                .and_then(|r| r["end"]["sum_received"]["bits_per_second"].as_f64());
            if let Some(rate) = rate {
                return rate;
            }
            last = format!("{output:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("iperf3 gave no throughput within 30 s: {last}");
    }

    fn iperf_server(&self) -> Child {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-B", &Lab::addr(1), "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.hosts[1].prepare_command(&mut cmd);
        cmd.spawn().expect("cannot run `iperf3` (is it installed?)")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(net) = self.net.take() {
            let _ = self.rt.block_on(net.destroy());
        }
    }
}

fn delay(ms: u64) -> Impairment {
    Impairment { delay_us: ms * 1000, ..Default::default() }
}

#[test]
fn delay_raises_the_rtt_by_the_delay_asked_for() {
    let mut lab = Lab::new(2);
    let (baseline, _) = lab.rtts(0, &Lab::addr(1), 10);

    let path = lab.insert(0);
    let shaper = lab.shape(&path, 1, delay(100), Impairment::default());
    let (delayed, each) = lab.rtts(0, &Lab::addr(1), 10);
    let stats = shaper.stop().expect("shaper stops cleanly");
    eprintln!("RTT: baseline {baseline:.3} ms, 100 ms egress delay {delayed:.3} ms {each:?}");
    assert!(
        (delayed - baseline - 100.0).abs() <= 10.0,
        "RTT rose by {:.3} ms, not 100 ms within 10%",
        delayed - baseline
    );
    assert!(stats.egress.frames_out >= 10 && stats.ingress.frames_out >= 10, "{stats:?}");

    // Ingress delay with jitter: 30 ± 10 ms, spread over that range.
    let ingress = Impairment { delay_us: 30_000, jitter_us: 10_000, ..Default::default() };
    let shaper = lab.shape(&path, 2, Impairment::default(), ingress);
    let (_, each) = lab.rtts(0, &Lab::addr(1), 20);
    shaper.stop().expect("shaper stops cleanly");
    eprintln!("RTT with 30 ms ± 10 ms ingress delay: {each:?}");
    for rtt in &each {
        assert!((19.0..42.0).contains(rtt), "RTT {rtt} ms outside 30 ± 10 ms: {each:?}");
    }
    let spread = each.iter().cloned().fold(f64::MIN, f64::max)
        - each.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 5.0, "jitter spreads the RTTs: {each:?}");

    assert!(lab.remove(0));
    let (after, _) = lab.rtts(0, &Lab::addr(1), 5);
    assert!(after < baseline + 5.0, "no delay after removal: {after:.3} ms");
}

#[test]
fn loss_of_20_percent_drops_the_same_pings_with_the_same_seed() {
    let mut lab = Lab::new(2);
    let path = lab.insert(0);
    let lossy = Impairment { loss_ppm: 200_000, ..Default::default() };
    let ping = |lab: &Lab| {
        let (answered, text) = lab.ping(0, &Lab::addr(1), &["-c", "200", "-i", "0.005", "-W", "1"]);
        assert!(text.contains("200 packets transmitted"), "{text}");
        (1..=200).filter(|s| !answered.contains(s)).collect::<Vec<u32>>()
    };

    let shaper = lab.shape(&path, 42, lossy.clone(), Impairment::default());
    let first = ping(&lab);
    let stats = shaper.stop().expect("shaper stops cleanly");
    eprintln!("seed 42 lost {} of 200 pings: {first:?}", first.len());
    assert!((20..=60).contains(&first.len()), "20% loss lost {} of 200", first.len());
    assert_eq!(stats.egress.dropped_loss, first.len() as u64, "every lost ping is a loss drop");

    // Same seed, new shaper, new ping process (new echo identifier): the same losses.
    let shaper = lab.shape(&path, 42, lossy.clone(), Impairment::default());
    let second = ping(&lab);
    // Even a rerun on the same running shaper meets the same decisions.
    let third = ping(&lab);
    shaper.stop().expect("shaper stops cleanly");
    assert_eq!(first, second, "same seed, same lost sequence numbers");
    assert_eq!(first, third, "decisions follow the echo sequence number");

    let shaper = lab.shape(&path, 43, lossy.clone(), Impairment::default());
    let other = ping(&lab);
    shaper.stop().expect("shaper stops cleanly");
    assert_ne!(first, other, "another seed, other losses");

    // Numbered UDP datagrams: decision n of a flow counts from the shaper's start, so a
    // restarted shaper with the same seed loses the same datagrams, while other traffic
    // (pings) interleaves differently.
    let received = |lab: &Lab, with_pings: bool| {
        let shaper = lab.shape(&path, 7, lossy.clone(), Impairment::default());
        let pinger = with_pings.then(|| {
            let mut cmd = Command::new("ping");
            cmd.args(["-n", "-q", "-c", "100", "-i", "0.003", &Lab::addr(1)]).stdout(Stdio::null());
            lab.hosts[0].prepare_command(&mut cmd);
            cmd.spawn().expect("cannot run `ping`")
        });
        let got: BTreeSet<u32> = lab
            .numbered(0, 1, 300, 100, Duration::from_micros(500))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if let Some(mut pinger) = pinger {
            let _ = pinger.wait();
        }
        shaper.stop().expect("shaper stops cleanly");
        got
    };
    let quiet = received(&lab, false);
    let busy = received(&lab, true);
    eprintln!("UDP: {} of 300 datagrams arrived", quiet.len());
    assert!((210..=270).contains(&quiet.len()), "{} of 300 arrived at 20% loss", quiet.len());
    assert_eq!(quiet, busy, "the same datagrams are lost whatever else is on the link");
}

#[test]
fn duplicates_and_reordering_show_at_the_receiver() {
    let mut lab = Lab::new(2);
    let path = lab.insert(0);

    let duplicating = Impairment { duplicate_ppm: 100_000, ..Default::default() };
    let shaper = lab.shape(&path, 5, duplicating, Impairment::default());
    let arrived = lab.numbered(0, 1, 400, 100, Duration::from_micros(300));
    let stats = shaper.stop().expect("shaper stops cleanly");
    let distinct: BTreeSet<u32> = arrived.iter().map(|(n, _)| *n).collect();
    let extra = arrived.len() - distinct.len();
    eprintln!("duplicate 10%: {extra} extra copies of 400 datagrams; {stats:?}");
    assert_eq!(distinct.len(), 400, "nothing is lost");
    assert!((20..=65).contains(&extra), "10% duplication made {extra} extra copies of 400");
    assert_eq!(extra as u64, stats.egress.duplicated);

    let reordering = Impairment { delay_us: 20_000, reorder_ppm: 250_000, ..Default::default() };
    let shaper = lab.shape(&path, 6, reordering, Impairment::default());
    let arrived = lab.numbered(0, 1, 300, 100, Duration::from_millis(1));
    let stats = shaper.stop().expect("shaper stops cleanly");
    // A datagram overtook others if some lower number had not arrived yet.
    let mut seen = BTreeSet::new();
    let mut overtaking = 0;
    for (n, _) in &arrived {
        if (0..*n).any(|m| !seen.contains(&m)) {
            overtaking += 1;
        }
        seen.insert(*n);
    }
    eprintln!(
        "reorder 25%: {overtaking} of 300 overtook; shaper reordered {}",
        stats.egress.reordered
    );
    assert_eq!(seen.len(), 300, "nothing is lost");
    assert!((45..=105).contains(&overtaking), "25% reordering: {overtaking} of 300 overtook");
    assert!(overtaking as u64 <= stats.egress.reordered, "only skipped frames overtake");
}

#[test]
fn rate_limit_paces_frames() {
    let mut lab = Lab::new(2);
    let path = lab.insert(0);
    let limited = Impairment { rate_bps: Some(2_000_000), ..Default::default() };
    let shaper = lab.shape(&path, 1, limited, Impairment::default());
    // 150 datagrams of 1000 bytes (1042 on the wire), sent at once: 1.25 Mbit, ~0.63 s.
    let arrived = lab.numbered(0, 1, 150, 1000, Duration::ZERO);
    let stats = shaper.stop().expect("shaper stops cleanly");
    assert_eq!(arrived.len(), 150, "nothing lost: {stats:?}");
    let span = arrived[149].1.duration_since(arrived[0].1).as_secs_f64();
    let rate = 149.0 * 1042.0 * 8.0 / span;
    eprintln!("2 Mbit/s limit: datagrams arrived at {rate:.0} bit/s");
    assert!((1.6e6..2.4e6).contains(&rate), "arrival rate {rate:.0} bit/s under a 2 Mbit/s limit");
}

#[test]
fn partitions_block_peers_one_or_both_ways_and_spare_the_gateway() {
    let mut lab = Lab::new(3);
    let (a, b, c) = (0, 1, 2);
    let mac_b = lab.mac(b);
    let path = lab.insert(a);
    let blocked = Impairment { drop_macs: vec![mac_b], ..Default::default() };

    // Two-way: A and B exchange nothing; both still reach C and the gateway.
    let shaper = lab.shape(&path, 1, blocked.clone(), blocked.clone());
    assert!(!lab.pings(a, &Lab::addr(b)), "A cannot reach B");
    assert!(!lab.pings(b, &Lab::addr(a)), "B cannot reach A");
    assert_eq!(lab.udp_reaches(a, b), 0);
    assert_eq!(lab.udp_reaches(b, a), 0);
    assert!(lab.pings(a, &Lab::addr(c)), "A reaches C");
    assert!(lab.pings(a, GATEWAY), "A reaches the gateway");
    assert!(lab.pings(b, GATEWAY), "B reaches the gateway");
    assert!(lab.pings(b, &Lab::addr(c)), "B reaches C");
    let stats = shaper.stop().expect("shaper stops cleanly");
    assert!(stats.egress.dropped_partition > 0 && stats.ingress.dropped_partition > 0);

    // One-way, A to B blocked (A's outgoing frames to B's MAC): B still hears from... no one
    // of A, while A hears B.
    let shaper = lab.shape(&path, 1, blocked.clone(), Impairment::default());
    assert_eq!(lab.udp_reaches(a, b), 0, "A to B is blocked");
    assert_eq!(lab.udp_reaches(b, a), 20, "B to A still flows");
    assert!(lab.pings(a, GATEWAY) && lab.pings(a, &Lab::addr(c)));
    shaper.stop().expect("shaper stops cleanly");

    // One-way, B to A blocked (frames from B's MAC towards A).
    let shaper = lab.shape(&path, 1, Impairment::default(), blocked.clone());
    assert_eq!(lab.udp_reaches(b, a), 0, "B to A is blocked");
    assert_eq!(lab.udp_reaches(a, b), 20, "A to B still flows");
    shaper.stop().expect("shaper stops cleanly");

    // Healed: the path gone, everything flows.
    assert!(lab.remove(a));
    assert!(lab.pings_within_5s(a, &Lab::addr(b)) && lab.pings(b, &Lab::addr(a)));
}

#[test]
fn removal_restores_the_bridge_port_and_the_throughput() {
    let mut lab = Lab::new(2);
    let baseline = lab.throughput();
    let links_before = lab.link_summary();

    let started = Instant::now();
    let path = lab.insert(0);
    let inserted = started.elapsed();
    assert_eq!(path.mtu, 1400);
    let shown = lab.mesh_links();
    let link =
        |name: &str| shown.as_array().expect("array").iter().find(|l| l["ifname"] == name).cloned();
    let port = link("vh1").expect("the node port stays");
    assert!(port.get("master").is_none(), "the node port is off the bridge: {port}");
    let bridge_end = link(&path.bridge_end).expect("bridge end exists");
    assert_eq!(bridge_end["master"], lab.spec.bridge.as_str());
    assert_eq!(bridge_end["mtu"], 1400);
    let shaper_end = link(&path.shaper_end).expect("shaper end exists");
    assert!(shaper_end.get("master").is_none());
    assert_eq!(shaper_end["mtu"], 1400);
    assert!(shaper_end["flags"].as_array().expect("flags").contains(&"UP".into()));
    assert_eq!(
        lab.journal.last(),
        Some(&Created::Veth {
            netns: lab.mesh().into(),
            name: path.bridge_end.clone(),
            peer_netns: lab.mesh().into(),
            peer: path.shaper_end.clone(),
        }),
        "the veth pair is journaled"
    );
    assert!(!lab.pings(0, &Lab::addr(1)), "without a shaper running the node is cut off");

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = path.config(1, Impairment::default(), Impairment::default());
    config.stats_file = Some(dir.path().join("stats.json"));
    let shaper = spawn_shaper(&config).expect("shaper starts");
    let shaped = lab.throughput();
    let stats = shaper.stop().expect("shaper stops cleanly");
    let written: mesh_net::shaper::ShaperStats = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stats.json")).expect("stats file written"),
    )
    .expect("stats file is JSON");
    assert_eq!(written, stats, "the stats file holds the final counters");
    assert!(!written.running);
    assert!(stats.egress.bytes_out > 1_000_000, "the transfer went through the shaper: {stats:?}");
    // TCP over veths sends GSO super-frames; larger than MTU + Ethernet header, they can be
    // sent on only with their vnet header.
    assert!(stats.egress.largest_frame > 1414, "no GSO frame seen: {stats:?}");
    eprintln!("through the shaper: {stats:?}");

    let started = Instant::now();
    assert!(lab.remove(0), "the veth pair was there");
    eprintln!("insert_shaper_path took {inserted:?}, remove_shaper_path {:?}", started.elapsed());
    assert!(!lab.remove(0), "removing twice is harmless");
    // Same links, same bridges, MTUs and flags as before: the veths are gone, vh1 is back.
    assert_eq!(lab.link_summary(), links_before);
    let restored = lab.throughput();
    eprintln!(
        "throughput: before {baseline:.0} bit/s, through the shaper {shaped:.0} bit/s, after \
         removal {restored:.0} bit/s"
    );
    assert!(restored > 20e6, "after removal the transfer ran at only {restored:.0} bit/s");
}

#[test]
fn bad_input_and_crash_recovery() {
    let mut lab = Lab::new(2);
    let links_before = lab.link_summary();

    // Unknown port: a clear error and nothing made, nothing journaled.
    let journaled = lab.journal.len();
    let err = lab
        .rt
        .block_on(insert_shaper_path(lab.net(), &lab.spec.bridge, "vh9", &mut |_| Ok(())))
        .expect_err("unknown port");
    assert!(matches!(err, ShaperPathError::PortNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no port vh9"), "{err}");
    let err = lab
        .rt
        .block_on(insert_shaper_path(lab.net(), "nobridge", "vh1", &mut |_| Ok(())))
        .expect_err("unknown bridge");
    assert!(err.to_string().contains("no bridge nobridge"), "{err}");
    assert_eq!(lab.journal.len(), journaled);
    assert_eq!(lab.link_summary(), links_before, "nothing changed");

    // A journal that refuses: nothing made.
    let err = lab
        .rt
        .block_on(insert_shaper_path(lab.net(), &lab.spec.bridge, "vh1", &mut |_| {
            Err(std::io::Error::other("disk full"))
        }))
        .expect_err("journal refuses");
    assert!(matches!(err, ShaperPathError::Journal { .. }), "{err:?}");
    assert_eq!(lab.link_summary(), links_before, "nothing changed");

    // Bad configs fail before anything is opened; an unknown port is named.
    let path = lab.insert(0);
    let mut config = path.config(
        1,
        Impairment { loss_ppm: 1_500_000, ..Default::default() },
        Impairment::default(),
    );
    let err = spawn_shaper(&config).expect_err("150% loss");
    assert!(matches!(err, ShaperError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("above 100%"), "{err}");
    config.egress = Impairment::default();
    config.node_port = "vh9".into();
    let err = spawn_shaper(&config).expect_err("unknown port");
    assert!(matches!(err, ShaperError::InterfaceNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("vh9"), "{err}");

    // Inserting twice: refused, and the first path is untouched.
    let err = lab
        .rt
        .block_on(insert_shaper_path(lab.net(), &lab.spec.bridge, "vh1", &mut |_| Ok(())))
        .expect_err("inserted twice");
    assert!(matches!(err, ShaperPathError::NotOnBridge { .. }), "{err:?}");
    assert!(err.to_string().contains("inserted already"), "{err}");

    // Crash: the process that inserted the path is gone. The journal's teardown removes the
    // veth pair; remove_shaper_path, from names alone, puts the port back.
    let shaper = spawn_shaper(&path.config(1, Impairment::default(), Impairment::default()))
        .expect("shaper starts");
    drop(shaper);
    let veth = lab.journal.last().cloned().expect("veth journaled");
    lab.rt.block_on(mesh_net::teardown(&[veth])).expect("journal teardown");
    lab.remove(0);
    assert_eq!(lab.link_summary(), links_before, "back to the network before the shaper");
    assert!(lab.pings_within_5s(0, &Lab::addr(1)), "traffic flows again");
}

#[test]
fn the_shaper_survives_its_node_port_going_down_and_up() {
    let mut lab = Lab::new(2);
    let path = lab.insert(0);
    let shaper = lab.shape(&path, 1, delay(1), Impairment::default());
    assert!(lab.pings_within_5s(0, &Lab::addr(1)));

    lab.rt.block_on(lab.net().set_link_up("vh1", false)).expect("port down");
    assert!(!lab.pings(0, &Lab::addr(1)), "no traffic with the node port down");
    lab.rt.block_on(lab.net().set_link_up("vh1", true)).expect("port up");
    assert!(lab.pings_within_5s(0, &Lab::addr(1)), "the same shaper carries traffic again");

    let stats = shaper.stop().expect("the shaper kept running");
    assert!(stats.egress.frames_out > 0 && stats.ingress.frames_out > 0, "{stats:?}");
    assert!(lab.remove(0));
}
