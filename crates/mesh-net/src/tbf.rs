//! Encoding of the token bucket filter (`tbf`) qdisc options.
//!
//! netlink-packet-route has no `tbf` options, so the `TCA_OPTIONS` payload is encoded here,
//! following `include/uapi/linux/pkt_sched.h`: a `struct tc_tbf_qopt` as `TCA_TBF_PARMS`,
//! the burst as `TCA_TBF_BURST` (so the kernel derives the bucket size itself and no rate
//! table is needed), and `TCA_TBF_RATE64` for rates of 4 GiB/s and more.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::TcOption;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

/// `TC_LINKLAYER_ETHERNET`: tells the kernel the link layer, so it needs no rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// Kernel packet scheduler ticks are 64 ns (`PSCHED_SHIFT` = 6).
const PSCHED_NS_PER_TICK: u128 = 64;

/// Parameters of a token bucket filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TbfParams {
    /// Sustained rate in bytes per second.
    pub rate_bytes: u64,
    /// Bucket size in bytes.
    pub burst_bytes: u32,
    /// Queue length in bytes (from the latency the caller allows).
    pub limit_bytes: u32,
}

impl TbfParams {
    /// Derives the parameters from a rate in bits per second, a burst and the longest time
    /// a packet may wait in the queue, as `tc qdisc ... tbf rate R burst B latency L` does.
    pub(crate) fn new(
        rate_bits_per_sec: u64,
        burst_bytes: u32,
        latency_us: u32,
    ) -> Result<Self, String> {
        let rate_bytes = rate_bits_per_sec / 8;
        if rate_bytes == 0 {
            return Err(format!("rate {rate_bits_per_sec} bit/s is below 8 bit/s"));
        }
        if burst_bytes == 0 {
            return Err("burst must be at least one byte".into());
        }
        let queued = u128::from(rate_bytes) * u128::from(latency_us) / 1_000_000;
        let limit = queued + u128::from(burst_bytes);
        let limit_bytes = u32::try_from(limit).unwrap_or(u32::MAX);
        Ok(TbfParams { rate_bytes, burst_bytes, limit_bytes })
    }

    /// The `TCA_OPTIONS` attributes of a `tbf` qdisc with these parameters.
    pub(crate) fn options(&self) -> Vec<TcOption> {
        let mut options = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, self.qopt()))];
        if self.rate_bytes >= u64::from(u32::MAX) {
            options.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate_bytes.to_ne_bytes().to_vec(),
            )));
        }
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_BURST,
            self.burst_bytes.to_ne_bytes().to_vec(),
        )));
        options
    }

    /// `struct tc_tbf_qopt`: rate and peak rate (`struct tc_ratespec`, 12 bytes each), then
    /// limit, buffer (in scheduler ticks) and mtu, all in host byte order.
    fn qopt(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36);

        // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align, mpu, rate.
        out.push(0);
        out.push(TC_LINKLAYER_ETHERNET);
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&0i16.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        let rate32 = u32::try_from(self.rate_bytes).unwrap_or(u32::MAX);
        out.extend_from_slice(&rate32.to_ne_bytes());

        // struct tc_ratespec peakrate: unused (all zero disables the peak bucket).
        out.extend_from_slice(&[0u8; 12]);

        out.extend_from_slice(&self.limit_bytes.to_ne_bytes());
        out.extend_from_slice(&self.buffer_ticks().to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out
    }

    /// The time to send one burst at the rate, in scheduler ticks (what `tc` puts in
    /// `buffer`; the kernel recomputes it from `TCA_TBF_BURST`).
    fn buffer_ticks(&self) -> u32 {
        let ns = u128::from(self.burst_bytes) * 1_000_000_000 / u128::from(self.rate_bytes);
        u32::try_from(ns / PSCHED_NS_PER_TICK).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Nla;

    fn value(option: &TcOption) -> (u16, Vec<u8>) {
        let mut buf = vec![0u8; option.value_len()];
        option.emit_value(&mut buf);
        (option.kind(), buf)
    }

    #[test]
    fn one_mbit_qopt_layout() {
        let params = TbfParams::new(1_000_000, 4096, 50_000).expect("valid parameters");
        assert_eq!(params.rate_bytes, 125_000);
        // 125 000 B/s * 50 ms = 6250 B of queue, plus the burst.
        assert_eq!(params.limit_bytes, 6250 + 4096);

        let options = params.options();
        assert_eq!(options.len(), 2);
        let (kind, qopt) = value(&options[0]);
        assert_eq!(kind, TCA_TBF_PARMS);
        assert_eq!(qopt.len(), 36);
        assert_eq!(qopt[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(qopt[8..12].try_into().expect("4 bytes")), 125_000);
        assert_eq!(&qopt[12..24], &[0u8; 12]);
        assert_eq!(u32::from_ne_bytes(qopt[24..28].try_into().expect("4 bytes")), 10_346);
        // 4096 B at 125 000 B/s = 32.768 ms = 512 000 ticks of 64 ns.
        assert_eq!(u32::from_ne_bytes(qopt[28..32].try_into().expect("4 bytes")), 512_000);

        let (kind, burst) = value(&options[1]);
        assert_eq!(kind, TCA_TBF_BURST);
        assert_eq!(burst, 4096u32.to_ne_bytes());
    }

    #[test]
    fn fast_rates_use_rate64() {
        let params = TbfParams::new(100_000_000_000, 1 << 20, 1000).expect("valid parameters");
        let options = params.options();
        assert_eq!(options.len(), 3);
        let (kind, rate64) = value(&options[1]);
        assert_eq!(kind, TCA_TBF_RATE64);
        assert_eq!(rate64, 12_500_000_000u64.to_ne_bytes());
        let (_, qopt) = value(&options[0]);
        assert_eq!(u32::from_ne_bytes(qopt[8..12].try_into().expect("4 bytes")), u32::MAX);
    }

    #[test]
    fn zero_rate_or_burst_is_refused() {
        assert!(TbfParams::new(7, 1500, 0).is_err());
        assert!(TbfParams::new(1_000_000, 0, 0).is_err());
    }
}
