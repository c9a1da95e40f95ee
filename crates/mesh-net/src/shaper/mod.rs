//! The userspace link shaper: delay, jitter, loss, duplication, reordering, a rate limit and
//! MAC-based partitions on one node's link, without `sch_netem`.
//!
//! Many kernels (this project's CI hosts among them) have no netem qdisc, so impairments
//! are applied by a process that a node's frames pass through *only while an impairment is
//! active*. [`insert_shaper_path`] puts a veth pair between the node's bridge port and the
//! bridge:
//!
//! ```text
//!  without:   VM ── tap ─────────────────────────────── bridge
//!  with:      VM ── tap ═╗  shaper (AF_PACKET)  ╔═ PORT-s ── PORT-b ── bridge
//!                        ╚══════════════════════╝
//! ```
//!
//! and [`run_shaper`] (blocking; run it on its own thread or in a detached process) forwards
//! frames between the node port and the free veth end (`PORT-s`) with `AF_PACKET` sockets,
//! applying the node-to-mesh impairment ([`ShaperConfig::egress`]) one way and the
//! mesh-to-node one ([`ShaperConfig::ingress`]) the other. [`remove_shaper_path`] puts the
//! port back on the bridge; with no impairment active nothing is in the path at all.
//!
//! Offloads: both packet sockets use `PACKET_VNET_HDR`, so GSO super-frames (a guest with
//! TSO behind a tap with a vnet header, or a veth) and frames whose checksum is left to
//! offload pass through intact and are segmented or checksummed by the kernel after the
//! shaper. VMs need no `vnet_hdr=off` and no offload changes.
//!
//! Reproducibility: every random decision about a frame is a pure function of
//! ([`ShaperConfig::seed`], direction, flow, n), where the flow is the frame's ethertype,
//! IP addresses, IP protocol and TCP/UDP ports, and n counts the frames of that flow since
//! the shaper started (for ICMP echo, n is the echo sequence number and the echo identifier
//! is left out of the flow, so two runs of `ping` with the same seed lose the same sequence
//! numbers even though `ping` picks a new identifier each run). Unrelated traffic
//! interleaving differently does not change a flow's decisions.
//!
//! What it leaves out: ARP and IPv6 neighbour discovery are never impaired nor partitioned
//! (so a one-way partition stays one-way, and a lossy link does not lose its neighbours);
//! non-IP frames pass untouched. Changing the impairment of a running shaper (restart it),
//! choosing seeds, parsing `100ms` or `5%` (mesh-core and the CLI), and the process that
//! runs the shaper (mesh-core starts it; [`run_shaper`] is the loop it calls).
//!
//! # Examples
//! ```
//! use mesh_net::shaper::{Impairment, ShaperConfig};
//!
//! let config = ShaperConfig {
//!     netns: "mesh-demo".into(),
//!     node_port: "vm1a2b3c-0".into(),
//!     bridge_port: "vm1a2b3c-0-s".into(),
//!     seed: 42,
//!     egress: Impairment { delay_us: 100_000, loss_ppm: 50_000, ..Default::default() },
//!     ingress: Impairment::default(),
//!     queue_limit: 1000,
//!     stats_file: None,
//! };
//! config.validate()?;
//!
//! let too_lossy = ShaperConfig {
//!     egress: Impairment { loss_ppm: 1_500_000, ..Default::default() },
//!     ..config.clone()
//! };
//! assert!(too_lossy.validate().unwrap_err().to_string().contains("100%"));
//! // As root, on a thread of its own: run_shaper(&config, &stop)?
//! # Ok::<(), mesh_net::shaper::ShaperError>(())
//! ```

mod engine;
mod path;
mod run;
mod socket;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::naming::check_ifname;
use crate::netns::NetnsError;

pub use engine::{flow_of, Flow};
pub use path::{
    insert_shaper_path, remove_shaper_path, shaper_veth_names, ShaperPath, ShaperPathError,
};
pub use run::{run_shaper, spawn_shaper, DirectionStats, RunningShaper, Shaper, ShaperStats};

/// Parts per million that mean "always" (100%).
pub const PPM_ALWAYS: u32 = 1_000_000;

/// The longest delay (plus jitter) accepted: one hour, far beyond any useful test, but small
/// enough that no time computation can overflow.
pub const MAX_DELAY_US: u64 = 3_600_000_000;

/// What happens to the frames of one direction of a link.
///
/// The default is no impairment at all. Probabilities are in parts per million
/// (`50_000` = 5%).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Fixed delay added to every IP frame, in microseconds.
    #[serde(default)]
    pub delay_us: u64,
    /// Uniform jitter: each frame's delay is drawn from `delay ± jitter` (never below
    /// zero). Frames may overtake each other, as with netem.
    #[serde(default)]
    pub jitter_us: u64,
    /// Chance that an IP frame is dropped, in ppm.
    #[serde(default)]
    pub loss_ppm: u32,
    /// Chance that an IP frame is sent twice, in ppm.
    #[serde(default)]
    pub duplicate_ppm: u32,
    /// Chance that an IP frame skips the delay and is sent at once, overtaking the delayed
    /// ones, in ppm (as netem's `reorder`; needs a delay).
    #[serde(default)]
    pub reorder_ppm: u32,
    /// Rate limit in bits per second: frames leave no faster than this, queued behind each
    /// other (at most [`ShaperConfig::queue_limit`] frames wait; more are dropped).
    #[serde(default)]
    pub rate_bps: Option<u64>,
    /// Partition filter: IP frames to (node-to-mesh direction: destination MAC) or from
    /// (mesh-to-node direction: source MAC) these peers are dropped.
    ///
    /// The destination filter cannot see who receives a broadcast or multicast frame; the
    /// source filter catches everything a peer sends. So "B hears nothing from A" is best
    /// enforced on B's mesh-to-node side with A's MAC, and a two-way partition by doing
    /// that on both nodes.
    #[serde(default)]
    pub drop_macs: Vec<[u8; 6]>,
}

impl Impairment {
    /// Whether this direction does nothing to any frame.
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }

    /// Checks the values; `direction` names the direction in the message.
    fn validate(&self, direction: &str) -> Result<(), String> {
        for (what, ppm) in [
            ("loss", self.loss_ppm),
            ("duplicate", self.duplicate_ppm),
            ("reorder", self.reorder_ppm),
        ] {
            if ppm > PPM_ALWAYS {
                return Err(format!(
                    "{direction} {what} of {}% is above 100%",
                    f64::from(ppm) / 10_000.0
                ));
            }
        }
        if self.delay_us.saturating_add(self.jitter_us) > MAX_DELAY_US {
            return Err(format!(
                "{direction} delay plus jitter of {} us is above the {MAX_DELAY_US} us limit",
                self.delay_us.saturating_add(self.jitter_us)
            ));
        }
        if self.reorder_ppm > 0 && self.delay_us == 0 {
            return Err(format!(
                "{direction} reorder needs a delay: reordered frames are the ones that skip it"
            ));
        }
        if self.rate_bps == Some(0) {
            return Err(format!("{direction} rate of 0 bit/s would stop all traffic"));
        }
        Ok(())
    }
}

/// Everything one shaper process needs: where it runs, the two ports it joins, and what it
/// does in each direction. Serialisable, so a detached process can read it from a file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShaperConfig {
    /// The mesh namespace the ports live in.
    pub netns: String,
    /// The node's port (its tap; a veth end in tests), detached from the bridge.
    pub node_port: String,
    /// The free end of the veth pair whose other end is on the bridge
    /// ([`ShaperPath::shaper_end`]).
    pub bridge_port: String,
    /// Seed of every random decision.
    pub seed: u64,
    /// Node to mesh: frames the node sends.
    #[serde(default)]
    pub egress: Impairment,
    /// Mesh to node: frames the node receives.
    #[serde(default)]
    pub ingress: Impairment,
    /// Frames that may wait in one direction's queue; more are dropped (netem's `limit`).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: u32,
    /// Where to write [`ShaperStats`] as JSON, about once a second and when stopping.
    #[serde(default)]
    pub stats_file: Option<PathBuf>,
}

/// netem's default `limit`.
fn default_queue_limit() -> u32 {
    1000
}

impl ShaperConfig {
    /// Checks names and values before anything is opened.
    pub fn validate(&self) -> Result<(), ShaperError> {
        let invalid = |reason: String| Err(ShaperError::InvalidConfig { reason });

        if let Err(NetnsError::InvalidName { reason, .. }) = crate::netns::check_name(&self.netns) {
            return invalid(format!("namespace name {:?}: {reason}", self.netns));
        }
        for (what, name) in [("node port", &self.node_port), ("bridge port", &self.bridge_port)] {
            if let Err(reason) = check_ifname(name) {
                return invalid(format!("{what}: {reason}"));
            }
        }
        if self.node_port == self.bridge_port {
            return invalid(format!("node port and bridge port are both {:?}", self.node_port));
        }
        if self.queue_limit == 0 {
            return invalid("queue limit of 0 frames would drop everything".into());
        }
        self.egress.validate("egress (node to mesh)").or_else(invalid)?;
        self.ingress.validate("ingress (mesh to node)").or_else(invalid)
    }
}

/// Why a shaper could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShaperError {
    /// The [`ShaperConfig`] is unusable; nothing was opened.
    #[error("invalid shaper config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The mesh namespace could not be opened or entered.
    #[error("cannot enter the shaper's namespace")]
    Namespace(#[source] NetnsError),
    /// The interface does not exist in the namespace.
    #[error("no interface {ifname} in namespace {netns}")]
    InterfaceNotFound {
        /// The namespace.
        netns: String,
        /// The interface.
        ifname: String,
    },
    /// A packet socket could not be created, configured or bound.
    #[error("cannot open a packet socket on {ifname} in namespace {netns} ({step})")]
    OpenSocket {
        /// The namespace.
        netns: String,
        /// The interface.
        ifname: String,
        /// The step that failed (`socket`, `PACKET_VNET_HDR`, `bind`, ...).
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for frames failed.
    #[error("cannot wait for frames on {node_port}/{bridge_port}")]
    Poll {
        /// The node port.
        node_port: String,
        /// The bridge port.
        bridge_port: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading from a port failed for good (it went away or down).
    #[error("cannot read frames from {ifname}")]
    Receive {
        /// The interface.
        ifname: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stats file could not be written.
    #[error("cannot write shaper stats to {path}")]
    WriteStats {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The shaper thread could not be started or panicked.
    #[error("the shaper thread for {node_port} failed")]
    Thread {
        /// The node port.
        node_port: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ShaperConfig {
        ShaperConfig {
            netns: "mesh-unit".into(),
            node_port: "vh1".into(),
            bridge_port: "vh1-s".into(),
            seed: 1,
            egress: Impairment::default(),
            ingress: Impairment::default(),
            queue_limit: 1000,
            stats_file: None,
        }
    }

    fn rejects(change: impl FnOnce(&mut ShaperConfig), needle: &str) {
        let mut c = config();
        change(&mut c);
        let err = c.validate().expect_err("config must be rejected");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn bad_configs_are_rejected_with_the_reason() {
        config().validate().expect("the base config is valid");
        rejects(|c| c.egress.loss_ppm = 1_000_001, "egress (node to mesh) loss of 100.0001%");
        rejects(|c| c.ingress.duplicate_ppm = 2_000_000, "above 100%");
        rejects(|c| c.egress.reorder_ppm = 10, "reorder needs a delay");
        rejects(|c| c.ingress.rate_bps = Some(0), "0 bit/s");
        rejects(|c| c.egress.delay_us = u64::MAX, "limit");
        rejects(|c| c.node_port = "a-name-of-16-byte".into(), "IFNAMSIZ");
        rejects(|c| c.bridge_port = "vh1".into(), "both");
        rejects(|c| c.netns = "../x".into(), "namespace");
        rejects(|c| c.queue_limit = 0, "queue limit");
    }

    #[test]
    fn full_loss_is_valid_and_defaults_fill_missing_json_fields() {
        let mut c = config();
        c.egress.loss_ppm = PPM_ALWAYS;
        c.validate().expect("100% loss is a valid (if harsh) impairment");

        let json = r#"{"netns":"m","node_port":"a","bridge_port":"b","seed":7,
                       "egress":{"delay_us":5}}"#;
        let parsed: ShaperConfig = serde_json::from_str(json).expect("minimal JSON parses");
        assert_eq!(parsed.queue_limit, 1000);
        assert_eq!(parsed.egress.delay_us, 5);
        assert!(parsed.ingress.is_none());
        let back: ShaperConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("serialises"))
                .expect("deserialises");
        assert_eq!(back, c);
    }
}
