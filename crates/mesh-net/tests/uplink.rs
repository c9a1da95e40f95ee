//! The optional uplink: a veth pair from the mesh namespace to an "outside" namespace the
//! test builds itself, with the mesh subnet masqueraded. A host on the mesh bridge opens a
//! TCP connection to a listener in the outside namespace, which sees the uplink's address
//! (NAT), not the host's. Nothing is sent to the host's real network.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use mesh_net::{Created, MeshNetwork, NetHandle, Netns, UplinkSpec};

#[test]
fn uplink_reaches_the_outside_namespace_through_nat() {
    let (mesh, outside_name, host_name) = (unique_ns(), unique_ns(), unique_ns());
    let _guard = NsGuard(vec![mesh.clone(), outside_name.clone(), host_name.clone()]);
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
    let rt = runtime();

    let spec = spec(&mesh, 1);
    let mut journal = Vec::new();
    let mut net =
        rt.block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal))).expect("network");
    let outside = Netns::create(&outside_name).expect("outside namespace");
    let host = Netns::create(&host_name).expect("host namespace");

    // A stand-in VM: a veth on the bridge, an address in the mesh subnet, the gateway as its
    // default route.
    rt.block_on(async {
        let bridge_index = net.handle().link_index(&spec.bridge).await.expect("bridge");
        net.handle().create_veth("vh1", "eth0", &host).await.expect("veth");
        net.handle().enslave("vh1", bridge_index, spec.mtu).await.expect("enslave");
        NetHandle::open(&host).await.expect("handle").set_link_up("lo", true).await.expect("lo");
    });
    run("ip", &["-n", &host_name, "link", "set", "eth0", "mtu", "1400", "up"]);
    run("ip", &["-n", &host_name, "addr", "add", "10.200.0.11/24", "dev", "eth0"]);
    run("ip", &["-n", &host_name, "route", "add", "default", "via", "10.200.0.1"]);

    let uplink = UplinkSpec {
        outside_netns: outside_name.clone(),
        inside_ifname: "up0".into(),
        outside_ifname: "up0-out".into(),
        inside_address: Ipv4Addr::new(172, 31, 255, 2),
        outside_address: Ipv4Addr::new(172, 31, 255, 1),
        prefix_len: 30,
    };
    rt.block_on(net.add_uplink(&uplink, &mut recorder(&mut journal))).expect("uplink");
    assert!(journal.iter().any(|c| matches!(c, Created::Veth { name, .. } if name == "up0")));
    assert!(journal.iter().any(|c| matches!(c, Created::NftTable { .. })));
    let rules = run("ip", &["netns", "exec", &mesh, "nft", "list", "ruleset"]);
    assert!(rules.contains("masquerade") && rules.contains("10.200.0.0/24"), "{rules}");
    let addrs = ip_json(&["-n", &outside_name, "-j", "addr", "show", "dev", "up0-out"]);
    assert_eq!(addrs[0]["addr_info"][0]["local"], "172.31.255.1", "{addrs}");

    // A listener in the outside namespace; a client in the host.
    let listener = outside
        .run(|| TcpListener::bind("172.31.255.1:0"))
        .expect("enter outside")
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        let mut greeting = String::new();
        stream.read_to_string(&mut greeting).expect("read");
        (peer, greeting)
    });
    let target = SocketAddr::from((uplink.outside_address, port));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match host.run(|| TcpStream::connect_timeout(&target, Duration::from_secs(1))) {
            Ok(Ok(stream)) => break stream,
            other => {
                assert!(Instant::now() < deadline, "cannot reach the outside: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    stream.write_all(b"hello from the mesh").expect("write");
    drop(stream);
    let (peer, greeting) = server.join().expect("server thread");
    assert_eq!(greeting, "hello from the mesh");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(uplink.inside_address), "masqueraded");

    let after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
    assert_eq!(after, root_forward, "the root namespace's forwarding is untouched");

    rt.block_on(net.destroy()).expect("teardown");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = run("ip", &["-n", &outside_name, "-br", "link"]);
        if !left.contains("up0-out") {
            break;
        }
        assert!(Instant::now() < deadline, "the uplink outlived the mesh: {left}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
