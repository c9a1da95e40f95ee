//! Network conditions injected from the host: delay (with jitter), loss, duplication,
//! reordering and rate on a node's link, and partitions (two-way or one-way) between groups of
//! nodes. This host kernel has no `sch_netem`, so every condition is applied by mesh-net's
//! userspace shaper, which a node's frames pass through only while something is active on its
//! link. Random decisions are keyed by a seed (recorded in the event log), so a run can be
//! replayed. Guests need no tools and no root.
//!
//! Conditions on a link apply to frames the node sends (node -> mesh), like a qdisc on the
//! node's interface would: a 100 ms delay on a node adds 100 ms to every round trip through
//! it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_net::shaper::{Impairment, ShaperConfig};
use serde::{Deserialize, Serialize};

use crate::plan::MeshPlan;
use crate::state::{EventLog, Journal, Record};
use crate::Error;

/// One change to the mesh network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NetOp {
    /// Delay the node's frames (plus uniform jitter).
    Delay {
        /// Node.
        node: String,
        /// Delay.
        delay: Duration,
        /// Jitter (uniform, +-).
        jitter: Duration,
    },
    /// Drop a share of the node's frames.
    Loss {
        /// Node.
        node: String,
        /// Parts per million.
        ppm: u32,
    },
    /// Duplicate a share of the node's frames.
    Duplicate {
        /// Node.
        node: String,
        /// Parts per million.
        ppm: u32,
    },
    /// Let a share of the node's frames skip the delay (needs a delay).
    Reorder {
        /// Node.
        node: String,
        /// Parts per million.
        ppm: u32,
    },
    /// Limit the node's send rate.
    Rate {
        /// Node.
        node: String,
        /// Bits per second.
        bps: u64,
    },
    /// Remove the link conditions of one node, or of all nodes (partitions stay).
    Clear {
        /// Node, or all.
        node: Option<String>,
    },
    /// Nodes in different groups exchange no frames (only `groups[0]` -> others when one-way).
    Partition {
        /// The groups; nodes not named form one more group.
        groups: Vec<Vec<String>>,
        /// Block only frames from the first group to the others.
        one_way: bool,
    },
    /// Remove the partition.
    Heal,
}

/// The network conditions of a mesh, kept in its state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// Seed of every random decision.
    pub seed: u64,
    /// Link conditions per node (without partition drops).
    pub links: BTreeMap<String, Impairment>,
    /// The active partition.
    pub partition: Option<(Vec<Vec<String>>, bool)>,
    /// Nodes whose shaper path (veth pair) is in place.
    pub paths: Vec<String>,
    /// Shaper daemons by node: (pid, start time).
    pub daemons: BTreeMap<String, (u32, u64)>,
}

/// Where shapers run.
pub enum ShaperHost<'a> {
    /// Threads of this process (a mesh owned by this process).
    Threads(&'a mut HashMap<String, mesh_net::shaper::RunningShaper>),
    /// Detached processes of this binary (`mesh shaper-daemon CONFIG`), for kept meshes.
    Daemon(PathBuf),
}

/// Parses `100ms`, `1.5s`, `250us`, `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("invalid duration {text:?} (use e.g. 100ms, 1.5s, 250us)");
    if t.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let value: f64 = num.parse().map_err(|_| bad())?;
    let micros = match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "" if value == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    if !micros.is_finite() || micros < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_micros(micros.round() as u64))
}

/// Parses `5%` or `0.5%` into parts per million (0..=100%).
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let num =
        t.strip_suffix('%').ok_or_else(|| format!("invalid percentage {text:?} (use e.g. 5%)"))?;
    let value: f64 = num.parse().map_err(|_| format!("invalid percentage {text:?}"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("percentage {text:?} is outside 0%..100%"));
    }
    Ok((value * 10_000.0).round() as u32)
}

/// Parses `1mbit`, `512kbit`, `10gbit`, `1000bit` into bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("invalid rate {text:?} (use e.g. 1mbit, 512kbit)");
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    let bps = value * scale;
    if !bps.is_finite() || bps < 1.0 {
        return Err(bad());
    }
    Ok(bps as u64)
}

/// The state file of a mesh's network conditions.
pub fn state_file(plan: &MeshPlan) -> PathBuf {
    plan.paths.state.join("net-conditions.json")
}

fn load(plan: &MeshPlan) -> NetState {
    std::fs::read(state_file(plan))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(plan: &MeshPlan, state: &NetState) -> Result<(), Error> {
    let path = state_file(plan);
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
    std::fs::write(&path, bytes).map_err(|source| Error::Io { path, source })
}

fn bad(what: impl Into<String>) -> Error {
    Error::NetFault { what: what.into() }
}

/// Checks `op` against the plan and returns the state it leads to; changes nothing.
pub fn plan_op(plan: &MeshPlan, current: &NetState, op: &NetOp) -> Result<NetState, Error> {
    let known = |n: &str| -> Result<(), Error> {
        if plan.node(n).is_some() {
            Ok(())
        } else {
            Err(bad(format!(
                "mesh {} has no node {n} (nodes: {})",
                plan.spec.name,
                plan.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let mut next = current.clone();
    let mut link = |node: &str, f: &dyn Fn(&mut Impairment)| -> Result<(), Error> {
        known(node)?;
        let entry = next.links.entry(node.to_owned()).or_default();
        f(entry);
        Ok(())
    };
    match op {
        NetOp::Delay { node, delay, jitter } => {
            if jitter > delay {
                return Err(bad(format!("jitter {jitter:?} is larger than the delay {delay:?}")));
            }
            let (d, j) = (delay.as_micros() as u64, jitter.as_micros() as u64);
            link(node, &|i| {
                i.delay_us = d;
                i.jitter_us = j;
            })?
        }
        NetOp::Loss { node, ppm } => link(node, &|i| i.loss_ppm = *ppm)?,
        NetOp::Duplicate { node, ppm } => link(node, &|i| i.duplicate_ppm = *ppm)?,
        NetOp::Reorder { node, ppm } => {
            let delayed = current.links.get(node).is_some_and(|i| i.delay_us > 0);
            if *ppm > 0 && !delayed {
                return Err(bad(format!(
                    "reorder on {node} needs a delay first (`mesh net NAME delay {node} 50ms`): reordered frames are the ones that skip it"
                )));
            }
            link(node, &|i| i.reorder_ppm = *ppm)?
        }
        NetOp::Rate { node, bps } => link(node, &|i| i.rate_bps = Some(*bps))?,
        NetOp::Clear { node: Some(node) } => {
            known(node)?;
            next.links.remove(node);
        }
        NetOp::Clear { node: None } => next.links.clear(),
        NetOp::Partition { groups, one_way } => {
            let mut seen: Vec<&str> = Vec::new();
            if groups.iter().any(|g| g.is_empty()) {
                return Err(bad("a partition group is empty (write A,B / C,D)"));
            }
            for g in groups {
                if g.is_empty() {
                    return Err(bad("a partition group is empty"));
                }
                for n in g {
                    known(n)?;
                    if seen.contains(&n.as_str()) {
                        return Err(bad(format!("node {n} is in two partition groups")));
                    }
                    seen.push(n);
                }
            }
            let mut all = groups.clone();
            let rest: Vec<String> = plan
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .filter(|n| !seen.contains(&n.as_str()))
                .collect();
            if !rest.is_empty() {
                all.push(rest);
            }
            if all.len() < 2 {
                return Err(bad("a partition needs at least two groups (A,B / C,D)"));
            }
            next.partition = Some((all, *one_way));
        }
        NetOp::Heal => {
            if current.partition.is_none() {
                return Err(bad("there is no partition to heal"));
            }
            next.partition = None
        }
    }
    next.links.retain(|_, i| !i.is_none());
    // Each node's conditions must be valid on their own (e.g. reorder needs a delay).
    for node in next.links.keys() {
        config_for(plan, &next, node, PathBuf::new())
            .validate()
            .map_err(|e| bad(format!("{node}: {e}")))?;
    }
    Ok(next)
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (i, part) in mac.split(':').take(6).enumerate() {
        out[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

/// The full shaper configuration of `node` in `state` (link conditions plus partition drops).
fn config_for(plan: &MeshPlan, state: &NetState, node: &str, stats: PathBuf) -> ShaperConfig {
    let mut egress = state.links.get(node).cloned().unwrap_or_default();
    let mut ingress = Impairment::default();
    if let Some((groups, one_way)) = &state.partition {
        let mine = groups.iter().position(|g| g.iter().any(|n| n == node));
        if let Some(mine) = mine {
            let others = |pick: &dyn Fn(usize) -> bool| -> Vec<[u8; 6]> {
                groups
                    .iter()
                    .enumerate()
                    .filter(|(gi, _)| *gi != mine && pick(*gi))
                    .flat_map(|(_, g)| g.iter().filter_map(|n| plan.node(n)))
                    .map(|p| mac_bytes(&p.mac))
                    .collect()
            };
            // Unicast is dropped on the way out (by destination MAC); broadcast and
            // multicast from the far side are dropped on the way in (by source MAC). One-way:
            // only frames from the first group to the others.
            if !*one_way {
                egress.drop_macs.extend(others(&|_| true));
                ingress.drop_macs.extend(others(&|_| true));
            } else if mine == 0 {
                egress.drop_macs.extend(others(&|_| true));
            } else {
                ingress.drop_macs.extend(others(&|gi| gi == 0));
            }
        }
    }
    let tap = plan.node(node).map(|n| n.tap.clone()).unwrap_or_default();
    let (_, shaper_end) = mesh_net::shaper::shaper_veth_names(&tap);
    ShaperConfig {
        netns: plan.netns.clone(),
        node_port: tap,
        bridge_port: shaper_end,
        seed: state.seed,
        egress,
        ingress,
        queue_limit: 1000,
        stats_file: if stats.as_os_str().is_empty() { None } else { Some(stats) },
    }
}

/// Applies `op` to the mesh: validates it first (nothing changes on error), then starts, restarts
/// or stops the shapers of the nodes whose conditions changed. `seed` replaces the mesh's seed.
pub async fn apply(
    plan: &MeshPlan,
    op: &NetOp,
    seed: Option<u64>,
    host: ShaperHost<'_>,
) -> Result<String, Error> {
    let current = load(plan);
    let mut next = plan_op(plan, &current, op)?;
    if let Some(seed) = seed {
        next.seed = seed;
    }
    let netns =
        mesh_net::Netns::open(&plan.netns).map_err(|e| bad(format!("mesh namespace: {e}")))?;
    let handle =
        mesh_net::NetHandle::open(&netns).await.map_err(|e| bad(format!("netlink: {e}")))?;
    let mut host = host;
    let mut changed = Vec::new();
    for node in &plan.nodes {
        let name = node.name.as_str();
        let stats = node.dir.join("shaper-stats.json");
        let before = config_for(plan, &current, name, stats.clone());
        let after = config_for(plan, &next, name, stats);
        let active = !after.egress.is_none() || !after.ingress.is_none();
        let running = current.paths.iter().any(|n| n == name);
        if before == after && (active == running) && seed.is_none() {
            continue;
        }
        if !active && !running {
            continue;
        }
        changed.push(name.to_owned());
        stop_shaper(&mut host, &mut next, name);
        if active {
            if !next.paths.iter().any(|n| n == name) {
                let journal_path = plan.paths.journal();
                let mut journal = Journal::open(&journal_path)?;
                let mut record = |c: &mesh_net::Created| -> std::io::Result<()> {
                    journal
                        .record(&Record::Net { object: c.clone() })
                        .map_err(std::io::Error::other)
                };
                mesh_net::shaper::insert_shaper_path(&handle, &plan.bridge, &node.tap, &mut record)
                    .await
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                next.paths.push(name.to_owned());
            }
            start_shaper(plan, &mut host, &mut next, name, &after)?;
        } else if next.paths.iter().any(|n| n == name) {
            mesh_net::shaper::remove_shaper_path(&handle, &plan.bridge, &node.tap)
                .await
                .map_err(|e| bad(format!("{name}: {e}")))?;
            next.paths.retain(|n| n != name);
        }
    }
    save(plan, &next)?;
    let events = EventLog::new(plan.paths.events());
    events.emit(
        None,
        "fault.net",
        serde_json::json!({ "op": op, "seed": next.seed, "path": "userspace-shaper", "nodes": changed }),
    );
    Ok(describe(op, &next))
}

fn describe(op: &NetOp, state: &NetState) -> String {
    match op {
        NetOp::Delay { node, delay, jitter } => {
            format!("{node}: delay {delay:?} jitter {jitter:?} (seed {})", state.seed)
        }
        NetOp::Loss { node, ppm } => {
            format!("{node}: loss {}% (seed {})", *ppm as f64 / 1e4, state.seed)
        }
        NetOp::Duplicate { node, ppm } => {
            format!("{node}: duplicate {}% (seed {})", *ppm as f64 / 1e4, state.seed)
        }
        NetOp::Reorder { node, ppm } => {
            format!("{node}: reorder {}% (seed {})", *ppm as f64 / 1e4, state.seed)
        }
        NetOp::Rate { node, bps } => format!("{node}: rate {bps} bit/s"),
        NetOp::Clear { node: Some(n) } => format!("{n}: link conditions cleared"),
        NetOp::Clear { node: None } => "link conditions cleared on all nodes".into(),
        NetOp::Partition { .. } => {
            let groups = state
                .partition
                .as_ref()
                .map(|(g, _)| g.iter().map(|g| g.join(",")).collect::<Vec<_>>().join(" / "))
                .unwrap_or_default();
            format!("partitioned: {groups}")
        }
        NetOp::Heal => "partition healed".into(),
    }
}

fn stop_shaper(host: &mut ShaperHost<'_>, state: &mut NetState, node: &str) {
    match host {
        ShaperHost::Threads(map) => {
            if let Some(s) = map.remove(node) {
                let _ = s.stop();
            }
        }
        ShaperHost::Daemon(_) => {}
    }
    // A daemon may be left from another process's shaper: stop it whichever host we are.
    if let Some((pid, start)) = state.daemons.remove(node) {
        let _ = mesh_qemu::kill_recorded(pid, start);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::procinfo::is_running(pid, start) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn start_shaper(
    plan: &MeshPlan,
    host: &mut ShaperHost<'_>,
    state: &mut NetState,
    node: &str,
    config: &ShaperConfig,
) -> Result<(), Error> {
    match host {
        ShaperHost::Threads(map) => {
            let running =
                mesh_net::shaper::spawn_shaper(config).map_err(|e| bad(format!("{node}: {e}")))?;
            map.insert(node.to_owned(), running);
        }
        ShaperHost::Daemon(binary) => {
            let dir = plan.node(node).map(|n| n.dir.clone()).unwrap_or_default();
            let file = dir.join("shaper.json");
            let bytes = serde_json::to_vec_pretty(config)
                .map_err(|e| Error::Io { path: file.clone(), source: std::io::Error::other(e) })?;
            std::fs::write(&file, bytes)
                .map_err(|source| Error::Io { path: file.clone(), source })?;
            let (pid, start) = spawn_daemon(binary, &file, &dir.join("shaper.log"))?;
            let mut journal = Journal::open(&plan.paths.journal())?;
            journal.record(&Record::Shaper { node: node.to_owned(), pid, start_time: start })?;
            state.daemons.insert(node.to_owned(), (pid, start));
        }
    }
    Ok(())
}

fn spawn_daemon(binary: &Path, config: &Path, log: &Path) -> Result<(u32, u64), Error> {
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| Error::Io { path: log.to_owned(), source })?;
    let err_file =
        log_file.try_clone().map_err(|source| Error::Io { path: log.to_owned(), source })?;
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("shaper-daemon")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(err_file);
    // Its own session: the daemon outlives `mesh net` and ignores the terminal's Ctrl-C.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| Error::Io { path: binary.to_owned(), source })?;
    let pid = child.id();
    // The daemon opens its sockets before it says it is ready; wait for that line or its exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(bad(format!(
                "shaper daemon exited ({status}): {}",
                text.lines().last().unwrap_or("")
            )));
        }
        if std::fs::read_to_string(log).unwrap_or_default().contains("shaper running") {
            break;
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = crate::procinfo::start_time(pid).unwrap_or(0);
    // The child is deliberately not waited for: it runs until `heal`/`clear` or teardown.
    std::mem::forget(child);
    Ok((pid, start))
}

/// The body of `mesh shaper-daemon CONFIG`: runs a shaper until SIGTERM or SIGINT.
pub fn run_daemon(config_file: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(config_file)
        .map_err(|source| Error::Io { path: config_file.to_owned(), source })?;
    let config: ShaperConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
        path: config_file.to_owned(),
        source: std::io::Error::other(e),
    })?;
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let shaper = mesh_net::shaper::Shaper::open(&config).map_err(|e| bad(e.to_string()))?;
    println!("shaper running for {}", config.node_port);
    shaper.run(&STOP).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_percentages_and_rates_parse_or_say_why_not() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("-5ms").expect_err("must be refused").contains("negative"));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_percent("5%"), Ok(50_000));
        assert_eq!(parse_percent("0.5%"), Ok(5_000));
        assert!(parse_percent("101%").expect_err("must be refused").contains("outside"));
        assert!(parse_percent("5").is_err());
        assert_eq!(parse_rate("1mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("512kbit"), Ok(512_000));
        assert!(parse_rate("fast").is_err());
    }

    fn plan() -> MeshPlan {
        let spec = crate::MeshSpec::resolve(
            None,
            &crate::SpecOverrides {
                name: Some("nf".into()),
                n_x86: Some(3),
                n_aarch: Some(1),
                ..Default::default()
            },
        )
        .expect("spec");
        MeshPlan::with_paths(&spec, crate::MeshPaths { state: "/s".into(), runtime: "/r".into() })
            .expect("plan")
    }

    #[test]
    fn bad_ops_are_refused_before_anything_changes() {
        let p = plan();
        let s = NetState::default();
        let unknown = NetOp::Loss { node: "nope".into(), ppm: 1 };
        assert!(plan_op(&p, &s, &unknown)
            .expect_err("must be refused")
            .to_string()
            .contains("no node nope"));
        let twice = NetOp::Partition {
            groups: vec![vec!["x86-1".into()], vec!["x86-1".into(), "x86-2".into()]],
            one_way: false,
        };
        assert!(plan_op(&p, &s, &twice)
            .expect_err("must be refused")
            .to_string()
            .contains("two partition groups"));
        let reorder = NetOp::Reorder { node: "x86-1".into(), ppm: 10 };
        assert!(plan_op(&p, &s, &reorder)
            .expect_err("must be refused")
            .to_string()
            .contains("needs a delay"));
    }

    #[test]
    fn partition_drops_exactly_the_other_groups() {
        let p = plan();
        let op =
            NetOp::Partition { groups: vec![vec!["x86-1".into(), "x86-2".into()]], one_way: false };
        let s = plan_op(&p, &NetState::default(), &op).expect("valid");
        let macs = |n: &str| config_for(&p, &s, n, PathBuf::new()).egress.drop_macs;
        let mac = |n: &str| mac_bytes(&p.node(n).expect("node").mac);
        assert_eq!(macs("x86-1"), vec![mac("x86-3"), mac("aarch-1")]);
        assert_eq!(macs("aarch-1"), vec![mac("x86-1"), mac("x86-2")]);

        let one_way = NetOp::Partition {
            groups: vec![vec!["x86-1".into()], vec!["x86-2".into()]],
            one_way: true,
        };
        let s = plan_op(&p, &NetState::default(), &one_way).expect("valid");
        assert_eq!(config_for(&p, &s, "x86-1", PathBuf::new()).egress.drop_macs.len(), 3);
        assert!(config_for(&p, &s, "x86-2", PathBuf::new()).egress.drop_macs.is_empty());
        // The far side drops the first group's broadcasts; the first group hears everyone.
        assert_eq!(
            config_for(&p, &s, "x86-2", PathBuf::new()).ingress.drop_macs,
            vec![mac("x86-1")]
        );
        assert!(config_for(&p, &s, "x86-1", PathBuf::new()).ingress.drop_macs.is_empty());
    }
}
