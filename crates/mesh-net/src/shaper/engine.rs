//! The pure part of the shaper: which flow a frame belongs to, and what one direction's
//! impairment does with it (drop, duplicate, delay, let it skip the queue, pace it), with
//! the frames waiting in a queue ordered by release time. No sockets, no clock: time is
//! passed in as microseconds, so every decision can be replayed in unit tests.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use super::run::DirectionStats;
use super::Impairment;

/// Length of the `virtio_net_hdr` that `PACKET_VNET_HDR` puts before every frame.
pub(crate) const VNET_HDR_LEN: usize = 10;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// How the shaper sees one Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Not IPv4/IPv6, or address resolution (ARP, IPv6 neighbour discovery): never
    /// impaired, never partitioned.
    Exempt,
    /// An IP frame of the flow with this hash.
    Ip {
        /// Hash of (ethertype, addresses, protocol, ports or ICMP echo type).
        hash: u64,
        /// For ICMP echo: the sequence number, used as the decision index instead of a
        /// count of the flow's frames, so a rerun of `ping` meets the same decisions.
        sequence: Option<u16>,
    },
}

/// Classifies an Ethernet frame (without a vnet header).
///
/// # Examples
/// ```
/// use mesh_net::shaper::{flow_of, Flow};
/// let arp = [[0xff; 6].as_slice(), &[2, 0, 0, 0, 0, 1], &[0x08, 0x06], &[0; 28]].concat();
/// assert_eq!(flow_of(&arp), Flow::Exempt);
/// ```
pub fn flow_of(frame: &[u8]) -> Flow {
    let Some(mut ethertype) = be16(frame, 12) else { return Flow::Exempt };
    let mut l3 = 14;
    if ethertype == ETHERTYPE_VLAN {
        let Some(inner) = be16(frame, 16) else { return Flow::Exempt };
        ethertype = inner;
        l3 = 18;
    }
    let packet = &frame[l3.min(frame.len())..];
    match ethertype {
        ETHERTYPE_IPV4 => ipv4_flow(packet),
        ETHERTYPE_IPV6 => ipv6_flow(packet),
        _ => Flow::Exempt,
    }
}

fn ipv4_flow(packet: &[u8]) -> Flow {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Flow::Exempt;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let protocol = packet[9];
    let fragment_offset = be16(packet, 6).unwrap_or(0) & 0x1fff;
    // Later fragments carry no ports; they form a flow of their own, still deterministic.
    let l4 = if fragment_offset == 0 { packet.get(header_len..) } else { None };
    let mut key = FlowKey::new(ETHERTYPE_IPV4, &packet[12..20], protocol);
    transport(&mut key, protocol, PROTO_ICMP, l4)
}

fn ipv6_flow(packet: &[u8]) -> Flow {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return Flow::Exempt;
    }
    let next_header = packet[6];
    // Neighbour discovery (router/neighbour solicitation and advertisement, redirect) is to
    // IPv6 what ARP is to IPv4.
    // FIXME: extension headers are not walked, so ND behind one (never seen in practice) and
    // the ports of TCP/UDP behind one are not recognised; those frames still get a flow.
    if next_header == PROTO_ICMPV6 && matches!(packet.get(40), Some(133..=137)) {
        return Flow::Exempt;
    }
    let mut key = FlowKey::new(ETHERTYPE_IPV6, &packet[8..40], next_header);
    transport(&mut key, next_header, PROTO_ICMPV6, packet.get(40..))
}

/// Adds the transport part of the flow: ports, or the ICMP echo type with its sequence.
fn transport(key: &mut FlowKey, protocol: u8, icmp: u8, l4: Option<&[u8]>) -> Flow {
    let mut sequence = None;
    if let Some(l4) = l4 {
        if protocol == PROTO_TCP || protocol == PROTO_UDP {
            if let Some(ports) = l4.get(0..4) {
                key.push(ports);
            }
        } else if protocol == icmp {
            // Echo request/reply: 8/0 for ICMP, 128/129 for ICMPv6. The identifier is left
            // out on purpose: ping takes it from its PID, which differs between runs.
            let is_echo = matches!((icmp, l4.first()), (PROTO_ICMP, Some(0 | 8)))
                || matches!((icmp, l4.first()), (PROTO_ICMPV6, Some(128 | 129)));
            if is_echo {
                if let Some(seq) = be16(l4, 6) {
                    key.push(&l4[0..1]);
                    sequence = Some(seq);
                }
            }
        }
    }
    Flow::Ip { hash: key.finish(), sequence }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// FNV-1a over the fields of a flow: stable across runs, platforms and releases.
struct FlowKey(u64);

impl FlowKey {
    fn new(ethertype: u16, addresses: &[u8], protocol: u8) -> FlowKey {
        let mut key = FlowKey(0xcbf2_9ce4_8422_2325);
        key.push(&ethertype.to_be_bytes());
        key.push(addresses);
        key.push(&[protocol]);
        key
    }

    fn push(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// The splitmix64 output function: a bijective 64-bit mixer with good avalanche.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which random decision about a frame is drawn; each has its own stream.
#[derive(Debug, Clone, Copy)]
enum Draw {
    Loss = 1,
    Duplicate = 2,
    Reorder = 3,
    Jitter = 4,
}

/// A uniform 64-bit value that depends only on the direction's key, the flow, the frame's
/// index in the flow and which decision it is.
fn draw(key: u64, flow: u64, n: u64, which: Draw) -> u64 {
    mix(mix(mix(key ^ flow) ^ n) ^ which as u64)
}

/// Maps a uniform 64-bit value to 0..1_000_000 (multiply-shift: no modulo bias to speak of).
fn to_ppm(x: u64) -> u32 {
    ((u128::from(x) * 1_000_000) >> 64) as u32
}

/// Which MAC address of a frame the partition filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Node to mesh: the destination.
    Egress,
    /// Mesh to node: the source.
    Ingress,
}

/// What [`DirectionShaper::decide`] does with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Dropped by the partition filter.
    Partitioned,
    /// Dropped by random loss.
    Lost,
    /// Sent at each of these times (microseconds; two with a duplicate).
    Send { at: Vec<u64>, reordered: bool, exempt: bool },
}

/// A frame waiting for its release time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    release_us: u64,
    /// Insertion order, so frames due at the same time leave first in, first out.
    order: u64,
    frame: Vec<u8>,
}

/// One direction of a shaper: its impairment, per-flow counters, pacing state, the queue of
/// delayed frames and the counters reported in [`DirectionStats`].
#[derive(Debug)]
pub(crate) struct DirectionShaper {
    impairment: Impairment,
    side: Side,
    key: u64,
    drop_macs: HashSet<[u8; 6]>,
    /// Frames seen per flow: the decision index n of the next frame.
    // FIXME: grows by one entry per distinct flow and is never trimmed; matters only for a
    // shaper left running for days over millions of short connections.
    flows: HashMap<u64, u64>,
    /// When the paced link is next free (microseconds).
    rate_free_us: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    next_order: u64,
    queue_limit: usize,
    pub(crate) stats: DirectionStats,
}

impl DirectionShaper {
    pub(crate) fn new(impairment: &Impairment, side: Side, seed: u64, queue_limit: u32) -> Self {
        DirectionShaper {
            drop_macs: impairment.drop_macs.iter().copied().collect(),
            impairment: impairment.clone(),
            side,
            key: mix(seed ^ mix(side as u64 + 1)),
            flows: HashMap::new(),
            rate_free_us: 0,
            queue: BinaryHeap::new(),
            next_order: 0,
            queue_limit: queue_limit as usize,
            stats: DirectionStats::default(),
        }
    }

    /// Decides what happens to `frame` (an Ethernet frame, no vnet header) arriving at
    /// `now_us`, and advances the flow's counter and the pacing clock accordingly.
    pub(crate) fn decide(&mut self, frame: &[u8], now_us: u64) -> Decision {
        let (hash, sequence) = match flow_of(frame) {
            Flow::Exempt => {
                return Decision::Send { at: vec![now_us], reordered: false, exempt: true }
            }
            Flow::Ip { hash, sequence } => (hash, sequence),
        };

        if !self.drop_macs.is_empty() {
            let mac = match self.side {
                Side::Egress => frame.get(0..6),
                Side::Ingress => frame.get(6..12),
            };
            if mac.is_some_and(|mac| self.drop_macs.contains(mac)) {
                return Decision::Partitioned;
            }
        }

        let n = match sequence {
            Some(sequence) => u64::from(sequence),
            None => {
                let count = self.flows.entry(hash).or_insert(0);
                *count += 1;
                *count - 1
            }
        };
        let imp = &self.impairment;
        let chance =
            |which: Draw, ppm: u32| ppm > 0 && to_ppm(draw(self.key, hash, n, which)) < ppm;

        if chance(Draw::Loss, imp.loss_ppm) {
            return Decision::Lost;
        }
        let copies = if chance(Draw::Duplicate, imp.duplicate_ppm) { 2 } else { 1 };
        let reordered = chance(Draw::Reorder, imp.reorder_ppm);

        let delay = if reordered {
            0
        } else if imp.jitter_us > 0 {
            let span = 2 * imp.jitter_us + 1;
            let offset = draw(self.key, hash, n, Draw::Jitter) % span;
            (imp.delay_us + offset).saturating_sub(imp.jitter_us)
        } else {
            imp.delay_us
        };

        let mut at = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut release = now_us + delay;
            if let Some(rate) = imp.rate_bps {
                // The frame starts when the paced link is free and leaves when its last bit
                // would have: serialisation time at the configured rate.
                let bits = frame.len() as u64 * 8;
                let start = release.max(self.rate_free_us);
                release = start + bits.saturating_mul(1_000_000).div_ceil(rate);
                self.rate_free_us = release;
            }
            at.push(release);
        }
        Decision::Send { at, reordered, exempt: false }
    }

    /// Takes a received buffer (vnet header + frame), counts it, decides and queues it.
    pub(crate) fn admit(&mut self, buffer: Vec<u8>, now_us: u64) {
        let frame = buffer.get(VNET_HDR_LEN..).unwrap_or_default();
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        self.stats.largest_frame = self.stats.largest_frame.max(frame.len() as u64);
        match self.decide(frame, now_us) {
            Decision::Partitioned => self.stats.dropped_partition += 1,
            Decision::Lost => self.stats.dropped_loss += 1,
            Decision::Send { at, reordered, exempt } => {
                if self.queue.len() + at.len() > self.queue_limit && !exempt {
                    self.stats.dropped_queue_full += 1;
                    return;
                }
                self.stats.reordered += u64::from(reordered);
                self.stats.duplicated += at.len() as u64 - 1;
                self.stats.exempt += u64::from(exempt);
                let last = at.len() - 1;
                let mut buffer = Some(buffer);
                for (i, release_us) in at.into_iter().enumerate() {
                    let frame = if i == last {
                        buffer.take().expect("the buffer is moved only for the last copy")
                    } else {
                        buffer.clone().expect("the buffer is still here before the last copy")
                    };
                    self.queue.push(Reverse(Queued { release_us, order: self.next_order, frame }));
                    self.next_order += 1;
                }
            }
        }
    }

    /// The earliest release time in the queue.
    pub(crate) fn next_release(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse(q)| q.release_us)
    }

    /// Removes and returns the next frame (vnet header included) due at or before `now_us`.
    pub(crate) fn pop_due(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.next_release()? <= now_us {
            self.queue.pop().map(|Reverse(q)| q.frame)
        } else {
            None
        }
    }

    /// Frames waiting.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    /// An Ethernet + IPv4 + UDP frame from A to B with the given ports.
    fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut f = [B.as_slice(), &A, &[0x08, 0x00]].concat();
        let mut ip =
            vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip.extend_from_slice(&src_port.to_be_bytes());
        ip.extend_from_slice(&dst_port.to_be_bytes());
        ip.extend_from_slice(&[0, 8, 0, 0]);
        f.extend(ip);
        f
    }

    /// An ICMP echo request from A to B with identifier `id` and sequence `seq`.
    fn echo(id: u16, seq: u16) -> Vec<u8> {
        let mut f = [B.as_slice(), &A, &[0x08, 0x00]].concat();
        f.extend([0x45, 0, 0, 28, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend([8, 0, 0, 0]);
        f.extend(id.to_be_bytes());
        f.extend(seq.to_be_bytes());
        f
    }

    fn lossy(ppm: u32) -> Impairment {
        Impairment { loss_ppm: ppm, ..Default::default() }
    }

    fn lost(shaper: &mut DirectionShaper, frame: &[u8]) -> bool {
        shaper.decide(frame, 0) == Decision::Lost
    }

    #[test]
    fn splitmix_and_ppm_are_fixed_functions() {
        // Pinned so a seed recorded in an event log replays the same way after an upgrade.
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(to_ppm(0), 0);
        assert_eq!(to_ppm(u64::MAX), 999_999);
        let mean = (0..10_000u64).map(|i| u64::from(to_ppm(mix(i)))).sum::<u64>() / 10_000;
        assert!((490_000..510_000).contains(&mean), "mean {mean}");
    }

    #[test]
    fn flows_are_told_apart_by_ports_and_echo_type_but_not_echo_id() {
        let Flow::Ip { hash: a, sequence: None } = flow_of(&udp(1000, 2000)) else {
            panic!("UDP is an IP flow without sequence")
        };
        let Flow::Ip { hash: b, .. } = flow_of(&udp(1000, 2001)) else { panic!("IP") };
        assert_ne!(a, b);
        assert_eq!(flow_of(&echo(1, 5)), flow_of(&echo(999, 5)));
        assert!(matches!(flow_of(&echo(1, 5)), Flow::Ip { sequence: Some(5), .. }));

        let arp = [[0xff; 6].as_slice(), &A, &[0x08, 0x06], &[0; 28]].concat();
        assert_eq!(flow_of(&arp), Flow::Exempt);
        assert_eq!(flow_of(&arp[..10]), Flow::Exempt, "a runt frame is left alone");
        let mut vlan = udp(1000, 2000);
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert!(matches!(flow_of(&vlan), Flow::Ip { .. }), "802.1Q-tagged IP is IP");

        let mut ns = [B.as_slice(), &A, &[0x86, 0xdd]].concat();
        ns.extend([0x60, 0, 0, 0, 0, 24, PROTO_ICMPV6, 255]);
        ns.extend([0u8; 32]);
        ns.extend([135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(flow_of(&ns), Flow::Exempt, "neighbour solicitation is exempt");
        ns[54] = 128;
        assert!(matches!(flow_of(&ns), Flow::Ip { sequence: Some(0), .. }), "echo is not");
    }

    #[test]
    fn decisions_do_not_depend_on_interleaved_traffic() {
        let imp = lossy(300_000);
        let mut alone = DirectionShaper::new(&imp, Side::Egress, 7, 1000);
        let mut mixed = DirectionShaper::new(&imp, Side::Egress, 7, 1000);
        let frame = udp(1000, 2000);
        let mut pattern_alone = Vec::new();
        let mut pattern_mixed = Vec::new();
        for i in 0..500u16 {
            pattern_alone.push(lost(&mut alone, &frame));
            for j in 0..(i % 3) {
                lost(&mut mixed, &udp(3000 + j, 4000));
            }
            pattern_mixed.push(lost(&mut mixed, &frame));
        }
        assert_eq!(pattern_alone, pattern_mixed);
        let losses = pattern_alone.iter().filter(|l| **l).count();
        assert!((100..200).contains(&losses), "{losses} of 500 lost at 30%");

        let mut other_seed = DirectionShaper::new(&imp, Side::Egress, 8, 1000);
        let pattern_other: Vec<bool> = (0..500).map(|_| lost(&mut other_seed, &frame)).collect();
        assert_ne!(pattern_alone, pattern_other, "another seed, other losses");
        let mut other_side = DirectionShaper::new(&imp, Side::Ingress, 7, 1000);
        let pattern_side: Vec<bool> = (0..500).map(|_| lost(&mut other_side, &frame)).collect();
        assert_ne!(pattern_alone, pattern_side, "the directions are independent");
    }

    #[test]
    fn echo_decisions_follow_the_sequence_number() {
        let imp = lossy(500_000);
        let mut first = DirectionShaper::new(&imp, Side::Egress, 3, 1000);
        let mut second = DirectionShaper::new(&imp, Side::Egress, 3, 1000);
        // The second ping has another identifier and started at sequence 10.
        let a: Vec<bool> = (10..60).map(|s| lost(&mut first, &echo(111, s))).collect();
        let b: Vec<bool> = (10..60).map(|s| lost(&mut second, &echo(222, s))).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|l| *l) && a.iter().any(|l| !*l));
    }

    #[test]
    fn exempt_frames_pass_whatever_the_impairment() {
        let imp = Impairment { delay_us: 50, drop_macs: vec![B], ..lossy(1_000_000) };
        let mut shaper = DirectionShaper::new(&imp, Side::Egress, 1, 10);
        let arp = [B.as_slice(), &A, &[0x08, 0x06], &[0; 28]].concat();
        assert_eq!(
            shaper.decide(&arp, 5),
            Decision::Send { at: vec![5], reordered: false, exempt: true }
        );
        assert_eq!(shaper.decide(&udp(1, 2), 5), Decision::Partitioned);
    }

    #[test]
    fn partition_looks_at_destination_out_and_source_in() {
        let imp = Impairment { drop_macs: vec![B], ..Default::default() };
        let mut egress = DirectionShaper::new(&imp, Side::Egress, 1, 10);
        let mut ingress = DirectionShaper::new(&imp, Side::Ingress, 1, 10);
        let a_to_b = udp(1, 2);
        let mut b_to_a = a_to_b.clone();
        b_to_a[0..6].copy_from_slice(&A);
        b_to_a[6..12].copy_from_slice(&B);
        assert_eq!(egress.decide(&a_to_b, 0), Decision::Partitioned);
        assert!(matches!(egress.decide(&b_to_a, 0), Decision::Send { .. }));
        assert_eq!(ingress.decide(&b_to_a, 0), Decision::Partitioned);
        assert!(matches!(ingress.decide(&a_to_b, 0), Decision::Send { .. }));
    }

    #[test]
    fn jitter_stays_in_range_and_reordered_frames_skip_the_delay() {
        let imp = Impairment {
            delay_us: 1000,
            jitter_us: 200,
            reorder_ppm: 250_000,
            ..Default::default()
        };
        let mut shaper = DirectionShaper::new(&imp, Side::Egress, 9, 1000);
        let (mut skipped, mut delays) = (0, HashSet::new());
        for _ in 0..1000 {
            let Decision::Send { at, reordered, .. } = shaper.decide(&udp(5, 6), 10_000) else {
                panic!("nothing is dropped")
            };
            if reordered {
                assert_eq!(at, vec![10_000]);
                skipped += 1;
            } else {
                let delay = at[0] - 10_000;
                assert!((800..=1200).contains(&delay), "delay {delay}");
                delays.insert(delay);
            }
        }
        assert!((180..320).contains(&skipped), "{skipped} of 1000 reordered at 25%");
        assert!(delays.len() > 100, "jitter spreads the delays: {}", delays.len());
    }

    #[test]
    fn rate_paces_frames_by_their_size_and_duplicates_count() {
        let imp =
            Impairment { rate_bps: Some(8_000), duplicate_ppm: 1_000_000, ..Default::default() };
        let mut shaper = DirectionShaper::new(&imp, Side::Egress, 1, 1000);
        let frame = udp(1, 2); // 42 bytes: 336 bits = 42 ms at 8 kbit/s
        assert_eq!(
            shaper.decide(&frame, 0),
            Decision::Send { at: vec![42_000, 84_000], reordered: false, exempt: false }
        );
        let Decision::Send { at, .. } = shaper.decide(&frame, 1_000_000) else { panic!("sent") };
        assert_eq!(at, vec![1_042_000, 1_084_000], "an idle link starts at once");
    }

    #[test]
    fn the_queue_releases_in_time_order_and_respects_its_limit() {
        let imp = Impairment { delay_us: 100, jitter_us: 100, ..Default::default() };
        let mut shaper = DirectionShaper::new(&imp, Side::Egress, 4, 3);
        for i in 0..5u16 {
            let mut buffer = vec![0u8; VNET_HDR_LEN];
            buffer.extend(udp(i, 9));
            shaper.admit(buffer, 0);
        }
        assert_eq!(shaper.queued(), 3);
        assert_eq!(shaper.stats.dropped_queue_full, 2);
        assert_eq!(shaper.stats.frames_in, 5);
        assert!(shaper.pop_due(0).is_none(), "nothing is due before its delay");
        let mut last = 0;
        while let Some(release) = shaper.next_release() {
            assert!(release >= last && release <= 200);
            last = release;
            assert!(shaper.pop_due(release).is_some());
        }
    }
}
