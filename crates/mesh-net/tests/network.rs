//! The mesh network as the kernel and `ip` see it, and the faults of the issue: a journal
//! that refuses, a crash recovered from the journal, a namespace name in use, a namespace
//! half-made by a crashed run, a busy tap, missing CAP_NET_ADMIN, a name too long.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use mesh_net::{Created, MeshNetwork, NetError, Netns, NetnsError, TapError};

#[test]
fn bridge_and_eight_taps_as_netlink_and_ip_see_them() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let spec = spec(&ns, 8);
    let root_nf_before = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables");
    let rt = runtime();

    let mut journal = Vec::new();
    let net = rt
        .block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal)))
        .expect("network is built");

    // The journal saw every object, namespace first, in creation order.
    let mut expected = vec![
        Created::Netns { name: ns.clone() },
        Created::Bridge { netns: ns.clone(), name: spec.bridge.clone() },
    ];
    for tap in &spec.taps {
        expected.push(Created::Tap { netns: ns.clone(), name: tap.clone() });
    }
    assert_eq!(journal, expected);
    assert_eq!(net.created(), expected.as_slice());

    // Our own netlink dump.
    let links = rt.block_on(net.handle().links()).expect("links dump");
    let lo = links.iter().find(|l| l.name == "lo").expect("lo exists");
    assert!(lo.up, "loopback is up");
    let bridge = links.iter().find(|l| l.name == spec.bridge).expect("bridge exists");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert_eq!(bridge.mtu, 1400);
    assert!(bridge.up);
    assert_eq!(bridge.mac, Some(mesh_net::node_mac(&ns, &spec.bridge)));
    for tap in &spec.taps {
        let link = links.iter().find(|l| &l.name == tap).expect("tap exists");
        assert_eq!(link.kind.as_deref(), Some("tun"), "{tap}");
        assert_eq!(link.master.as_deref(), Some(spec.bridge.as_str()), "{tap}");
        assert_eq!(link.mtu, 1400, "{tap}");
        assert!(link.up, "{tap} is up");
        assert!(!link.lower_up, "{tap} has no carrier while nobody holds it");
        assert_eq!(link.port_isolated, Some(false), "{tap}");
    }
    assert_eq!(links.len(), 2 + spec.taps.len(), "nothing else in the namespace: {links:?}");

    // The independent reader: iproute2.
    assert!(ip_netns_names().contains(&ns), "`ip netns` lists {ns}");
    let ip_links = ip_json(&["-n", &ns, "-d", "-j", "link", "show"]);
    let ip_links = ip_links.as_array().expect("a JSON array");
    for tap in &spec.taps {
        let link = ip_links
            .iter()
            .find(|l| l["ifname"] == tap.as_str())
            .unwrap_or_else(|| panic!("ip shows {tap}"));
        assert_eq!(link["master"], spec.bridge.as_str(), "{link}");
        assert_eq!(link["mtu"], 1400, "{link}");
        let flags: Vec<&str> =
            link["flags"].as_array().expect("flags").iter().filter_map(|f| f.as_str()).collect();
        assert!(flags.contains(&"UP"), "{link}");
        assert_eq!(link["linkinfo"]["info_kind"], "tun", "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["type"], "tap", "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["pi"], false, "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["persist"], true, "{link}");
        assert_eq!(link["linkinfo"]["info_slave_kind"], "bridge", "{link}");
    }
    let ip_bridge =
        ip_links.iter().find(|l| l["ifname"] == spec.bridge.as_str()).expect("ip shows the bridge");
    assert_eq!(ip_bridge["linkinfo"]["info_kind"], "bridge");
    assert_eq!(ip_bridge["linkinfo"]["info_data"]["nf_call_iptables"], 0, "{ip_bridge}");
    assert_eq!(ip_bridge["linkinfo"]["info_data"]["stp_state"], 0, "{ip_bridge}");

    let addrs = ip_json(&["-n", &ns, "-j", "addr", "show", "dev", &spec.bridge]);
    let info = &addrs[0]["addr_info"];
    let v4 = info
        .as_array()
        .expect("addr_info")
        .iter()
        .find(|a| a["family"] == "inet")
        .expect("the bridge has an IPv4 address");
    assert_eq!(v4["local"], "10.200.0.1");
    assert_eq!(v4["prefixlen"], 24);

    // Bridge netfilter hooks: off inside, untouched in the root namespace.
    if let Ok(before) = root_nf_before {
        let inside = run(
            "ip",
            &["netns", "exec", &ns, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
        );
        assert_eq!(inside.trim(), "0");
        let after = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .expect("root sysctl still readable");
        assert_eq!(after, before, "root namespace sysctl unchanged");
    }

    rt.block_on(net.destroy()).expect("teardown");
    assert!(!ip_netns_names().contains(&ns));
    assert!(!Netns::exists(&ns));
}

#[test]
fn journal_refusal_aborts_and_rolls_back() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let rt = runtime();

    let mut calls = 0;
    let mut journal = |_: &Created| {
        calls += 1;
        if calls == 4 {
            Err(std::io::Error::other("disk full"))
        } else {
            Ok(())
        }
    };
    let err = rt.block_on(MeshNetwork::create(&spec(&ns, 4), &mut journal)).expect_err("aborts");
    assert!(matches!(err, NetError::Journal { .. }), "{err:?}");
    assert!(!Netns::exists(&ns), "rolled back");
    assert!(!ip_netns_names().contains(&ns));
}

#[test]
fn crash_recovery_removes_exactly_the_journal() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let rt = runtime();

    let mut journal = Vec::new();
    let net = rt
        .block_on(MeshNetwork::create(&spec(&ns, 3), &mut recorder(&mut journal)))
        .expect("built");
    // The "crash": the process loses the handle without tearing down.
    drop(net);
    assert!(ip_netns_names().contains(&ns), "dropping leaves the network in place");

    // An object journaled but never made (the crash came between) is fine too.
    journal.push(Created::Tap { netns: ns.clone(), name: "never-made".into() });
    rt.block_on(mesh_net::teardown(&journal)).expect("recovery");
    assert!(!ip_netns_names().contains(&ns));
    rt.block_on(mesh_net::teardown(&journal)).expect("a second recovery is a no-op");
}

#[test]
fn teardown_of_links_in_a_surviving_namespace_removes_only_them() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let rt = runtime();

    let mut journal = Vec::new();
    let net = rt
        .block_on(MeshNetwork::create(&spec(&ns, 3), &mut recorder(&mut journal)))
        .expect("built");
    // Remove only the last two taps, as a journal written by someone else might list.
    rt.block_on(mesh_net::teardown(&journal[3..])).expect("teardown of two taps");
    let names: Vec<String> =
        rt.block_on(net.handle().links()).expect("dump").into_iter().map(|l| l.name).collect();
    assert!(names.contains(&journal_name(&journal[2])), "{names:?}");
    assert!(!names.contains(&journal_name(&journal[3])), "{names:?}");
    assert!(!names.contains(&journal_name(&journal[4])), "{names:?}");
    rt.block_on(net.destroy()).expect("teardown");
}

fn journal_name(object: &Created) -> String {
    match object {
        Created::Tap { name, .. } | Created::Bridge { name, .. } => name.clone(),
        other => panic!("not a link: {other:?}"),
    }
}

#[test]
fn namespace_in_use_is_refused_and_left_alone() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    run("ip", &["netns", "add", &ns]);
    run("ip", &["-n", &ns, "link", "add", "keepme", "type", "bridge"]);
    let rt = runtime();

    let mut journal = Vec::new();
    let err = rt
        .block_on(MeshNetwork::create(&spec(&ns, 2), &mut recorder(&mut journal)))
        .expect_err("name in use");
    assert!(
        matches!(&err, NetError::Namespace(NetnsError::AlreadyExists { name, .. }) if name == &ns),
        "{err:?}"
    );
    assert!(err.to_string().contains("mesh gc"), "{err}");
    assert!(journal.is_empty(), "nothing journaled for a namespace that is not ours");
    let links = run("ip", &["-n", &ns, "-br", "link"]);
    assert!(links.contains("keepme"), "the existing namespace is untouched: {links}");
}

#[test]
fn half_made_namespace_of_a_crashed_run_is_reported_and_removable() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    // A crash between creating the mount point and mounting leaves a plain file.
    let stale = Netns::create(&ns).expect("namespace");
    drop(stale);
    nix::mount::umount2(&Netns::path_of(&ns), nix::mount::MntFlags::MNT_DETACH)
        .expect("unmount to simulate the crash");
    assert!(Netns::path_of(&ns).is_file());

    let err = Netns::open(&ns).expect_err("not a namespace");
    assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err:?}");
    assert!(err.to_string().contains("mesh gc"), "{err}");
    let err = Netns::create(&ns).expect_err("name taken");
    assert!(matches!(err, NetnsError::AlreadyExists { .. }), "{err:?}");

    Netns::delete(&ns).expect("the leftover is removable");
    assert!(!Netns::exists(&ns));
    assert!(matches!(Netns::delete(&ns), Err(NetnsError::NotFound { .. })));
    assert!(!Netns::delete_if_exists(&ns).expect("missing is fine"));
}

#[test]
fn busy_tap_fails_after_bounded_retries_then_works() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let netns = Netns::create(&ns).expect("namespace");

    // Hold the tap open, as a running QEMU would.
    let holder = netns
        .run(|| {
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("/dev/net/tun opens");
            // SAFETY: ifreq is plain data; TUNSETIFF reads and writes one, alive for the call.
            unsafe {
                let mut request: libc::ifreq = std::mem::zeroed();
                for (slot, byte) in request.ifr_name.iter_mut().zip(b"busytap".iter()) {
                    *slot = *byte as libc::c_char;
                }
                request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
                assert_eq!(libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request), 0);
            }
            tun
        })
        .expect("enter namespace");

    let started = std::time::Instant::now();
    let mut made = Vec::new();
    let err =
        mesh_net::create_persistent_taps(&netns, &["busytap".into()], &mut made).expect_err("busy");
    assert!(matches!(err, TapError::Busy { attempts: 5, .. }), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "the retry is bounded");
    assert!(made.is_empty());

    drop(holder);
    mesh_net::create_persistent_taps(&netns, &["busytap".into()], &mut made).expect("free again");
    assert_eq!(made, ["busytap"]);
    let shown = ip_json(&["-n", &ns, "-d", "-j", "link", "show", "busytap"]);
    assert_eq!(shown[0]["linkinfo"]["info_data"]["persist"], true);
}

#[test]
fn too_long_name_is_refused_before_anything_is_made() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let mut spec = spec(&ns, 2);
    spec.taps.push("sixteen-bytes-xx".into());
    let mut journal = Vec::new();
    let err = runtime()
        .block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal)))
        .expect_err("too long");
    assert!(err.to_string().contains("IFNAMSIZ"), "{err}");
    assert!(journal.is_empty());
    assert!(!Netns::exists(&ns));
}

/// Linux capability bit of CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per
/// thread, so the rest of the test process keeps it).
fn drop_net_admin_on_this_thread() {
    let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset read and write one header and two data structs, as declared by
    // version 3 of the capability ABI.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()), 0);
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()), 0);
    }
}

#[test]
fn missing_cap_net_admin_is_a_clear_error_and_leaves_nothing() {
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let spec = spec(&ns, 2);

    let err = std::thread::spawn(move || {
        drop_net_admin_on_this_thread();
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut journal = Vec::new();
        let err = rt
            .block_on(MeshNetwork::create(&spec, &mut recorder(&mut journal)))
            .expect_err("no CAP_NET_ADMIN");
        err
    })
    .join()
    .expect("thread finishes");

    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(chain.contains("CAP_NET_ADMIN"), "{chain}");
    assert_eq!(err.errno(), Some(libc::EPERM), "{chain}");
    assert!(!Netns::exists(&ns), "rolled back: {chain}");
}
