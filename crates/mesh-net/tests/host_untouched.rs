//! The host's root namespace is byte-identical before and after building and removing mesh
//! networks, also when a test panics half-way through building or using one (a drop guard
//! then tears down from the journal). `ip` is the reader.
//!
//! One test in this binary on purpose: a parallel test would change `ip netns` meanwhile.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use common::*;
use mesh_net::{Created, MeshNetwork};

/// What the root namespace looks like to `ip`.
fn host_snapshot() -> String {
    let mut snapshot = String::new();
    for args in [&["-d", "link"][..], &["addr"], &["route"], &["-6", "route"], &["netns"]] {
        snapshot.push_str(&format!("## ip {}\n", args.join(" ")));
        snapshot.push_str(&run("ip", args));
    }
    snapshot
}

/// Tears down everything journaled when dropped, as mesh-core's recovery would.
struct TeardownGuard(Arc<Mutex<Vec<Created>>>);

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        let journal = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for teardown");
        rt.block_on(mesh_net::teardown(&journal)).expect("teardown from the journal");
    }
}

fn shared_journal(
    journal: &Arc<Mutex<Vec<Created>>>,
    panic_at: Option<usize>,
) -> impl FnMut(&Created) -> std::io::Result<()> + Send + '_ {
    move |object: &Created| {
        let mut log = journal.lock().unwrap_or_else(|p| p.into_inner());
        log.push(object.clone());
        if Some(log.len()) == panic_at {
            drop(log);
            panic!("simulated crash while recording {object}");
        }
        Ok(())
    }
}

#[test]
fn root_namespace_is_unchanged_after_networks_come_and_go_even_after_panics() {
    let before = host_snapshot();
    let rt = runtime();

    // 1. A normal build and destroy.
    let ns = unique_ns();
    let _guard = NsGuard(vec![ns.clone()]);
    let net = rt
        .block_on(MeshNetwork::create(&spec(&ns, 8), &mut recorder(&mut Vec::new())))
        .expect("network");
    assert_ne!(host_snapshot(), before, "`ip netns` shows the mesh while it is up");
    rt.block_on(net.destroy()).expect("destroy");
    assert_eq!(host_snapshot(), before);

    // 2. A panic half-way through creation (while journaling the 6th object).
    let ns = unique_ns();
    let _guard2 = NsGuard(vec![ns.clone()]);
    let journal = Arc::new(Mutex::new(Vec::new()));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _teardown = TeardownGuard(journal.clone());
        let mut record = shared_journal(&journal, Some(6));
        rt.block_on(MeshNetwork::create(&spec(&ns, 8), &mut record)).map(drop)
    }));
    assert!(outcome.is_err(), "the simulated crash panicked");
    assert_eq!(journal.lock().expect("journal").len(), 6);
    assert_eq!(host_snapshot(), before, "after a panic during create");

    // 3. A panic while using a finished network.
    let ns = unique_ns();
    let _guard3 = NsGuard(vec![ns.clone()]);
    let journal = Arc::new(Mutex::new(Vec::new()));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _teardown = TeardownGuard(journal.clone());
        let mut record = shared_journal(&journal, None);
        let net = rt.block_on(MeshNetwork::create(&spec(&ns, 8), &mut record)).expect("network");
        rt.block_on(net.handle().set_link_up(&net.spec().taps[0], false)).expect("down");
        panic!("simulated test failure with the network up");
    }));
    assert!(outcome.is_err());
    assert_eq!(host_snapshot(), before, "after a panic with the network up");
}
