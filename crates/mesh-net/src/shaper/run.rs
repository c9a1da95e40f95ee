//! The shaper's loop: two packet sockets, one [`DirectionShaper`] per direction, a poll
//! that wakes for new frames or the next release time, and the counters it reports.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::engine::{DirectionShaper, Side};
use super::socket::{PacketSocket, MAX_FRAME};
use super::{ShaperConfig, ShaperError};
use crate::netns::Netns;

/// How long the loop may sleep before it looks at the stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How often the stats file is rewritten while running.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Frames read from one socket before the loop turns to the other one and to the queues,
/// so a flood one way cannot starve the other way.
const READ_BATCH: usize = 64;

/// Counters of one direction. All frames count, ARP included.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Frames read from the incoming port.
    pub frames_in: u64,
    /// Their bytes (Ethernet header and payload; a GSO super-frame counts whole).
    pub bytes_in: u64,
    /// The largest frame read, in bytes: above the MTU when GSO super-frames passed.
    pub largest_frame: u64,
    /// Frames sent out of the other port (duplicates included).
    pub frames_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Frames passed untouched: ARP, IPv6 neighbour discovery, non-IP.
    pub exempt: u64,
    /// Frames dropped by the partition filter.
    pub dropped_partition: u64,
    /// Frames dropped by random loss.
    pub dropped_loss: u64,
    /// Frames dropped because the queue held `queue_limit` frames.
    pub dropped_queue_full: u64,
    /// Frames the kernel refused to send (a full socket buffer, the port down).
    pub dropped_send: u64,
    /// Frames too large for the receive buffer (cannot happen with a 64 KiB GSO limit).
    pub dropped_oversize: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Frames that skipped the delay.
    pub reordered: u64,
}

impl DirectionStats {
    /// JSON with the same field names serde uses (mesh-net has no JSON dependency).
    fn to_json(&self) -> String {
        format!(
            "{{\"frames_in\":{},\"bytes_in\":{},\"largest_frame\":{},\"frames_out\":{},\"bytes_out\":{},\
             \"exempt\":{},\"dropped_partition\":{},\"dropped_loss\":{},\
             \"dropped_queue_full\":{},\"dropped_send\":{},\"dropped_oversize\":{},\
             \"duplicated\":{},\"reordered\":{}}}",
            self.frames_in,
            self.bytes_in,
            self.largest_frame,
            self.frames_out,
            self.bytes_out,
            self.exempt,
            self.dropped_partition,
            self.dropped_loss,
            self.dropped_queue_full,
            self.dropped_send,
            self.dropped_oversize,
            self.duplicated,
            self.reordered
        )
    }
}

/// What a shaper did, per direction; also the content of [`ShaperConfig::stats_file`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ShaperStats {
    /// Milliseconds since the loop started.
    pub elapsed_ms: u64,
    /// Whether the loop was still running when these were written.
    pub running: bool,
    /// Node to mesh.
    pub egress: DirectionStats,
    /// Mesh to node.
    pub ingress: DirectionStats,
}

impl ShaperStats {
    /// The stats as one line of JSON (what the stats file holds).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"elapsed_ms\":{},\"running\":{},\"egress\":{},\"ingress\":{}}}\n",
            self.elapsed_ms,
            self.running,
            self.egress.to_json(),
            self.ingress.to_json()
        )
    }
}

/// A shaper whose sockets are open: frames are captured from the moment [`Shaper::open`]
/// returns, and forwarded once [`Shaper::run`] is called.
#[derive(Debug)]
pub struct Shaper {
    config: ShaperConfig,
    node: PacketSocket,
    bridge: PacketSocket,
    egress: DirectionShaper,
    ingress: DirectionShaper,
    /// Receive buffer, reused for every frame.
    buffer: Vec<u8>,
}

impl Shaper {
    /// Validates `config` and opens the two packet sockets inside its namespace.
    pub fn open(config: &ShaperConfig) -> Result<Shaper, ShaperError> {
        config.validate()?;
        let netns = Netns::open(&config.netns).map_err(ShaperError::Namespace)?;
        let open = |ifname: &str| {
            PacketSocket::open(ifname).map_err(|(step, source)| {
                if source.raw_os_error() == Some(libc::ENODEV) {
                    ShaperError::InterfaceNotFound {
                        netns: config.netns.clone(),
                        ifname: ifname.into(),
                    }
                } else {
                    ShaperError::OpenSocket {
                        netns: config.netns.clone(),
                        ifname: ifname.into(),
                        step,
                        source,
                    }
                }
            })
        };
        let (node, bridge) = netns
            .run(|| Ok::<_, ShaperError>((open(&config.node_port)?, open(&config.bridge_port)?)))
            .map_err(ShaperError::Namespace)??;

        Ok(Shaper {
            egress: DirectionShaper::new(
                &config.egress,
                Side::Egress,
                config.seed,
                config.queue_limit,
            ),
            ingress: DirectionShaper::new(
                &config.ingress,
                Side::Ingress,
                config.seed,
                config.queue_limit,
            ),
            config: config.clone(),
            node,
            bridge,
            buffer: vec![0; MAX_FRAME],
        })
    }

    /// Forwards frames until `stop` is set (checked at least every 50 ms), then writes the
    /// stats file a last time and returns the counters. Frames still queued are dropped.
    pub fn run(mut self, stop: &AtomicBool) -> Result<ShaperStats, ShaperError> {
        let start = Instant::now();
        info!(
            netns = %self.config.netns,
            node_port = %self.config.node_port,
            seed = self.config.seed,
            egress = ?self.config.egress,
            ingress = ?self.config.ingress,
            "shaper running"
        );
        let mut next_stats = Duration::ZERO;
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Err(error) = self.step(start) {
                break Err(error);
            }
            let now = start.elapsed();
            if self.config.stats_file.is_some() && now >= next_stats {
                // A full disk must not stop the forwarding; the final write reports it.
                if let Err(error) = self.write_stats(start.elapsed(), true) {
                    warn!(%error, "cannot update the shaper stats file");
                }
                next_stats = now + STATS_INTERVAL;
            }
        };
        let stats = self.stats(start.elapsed(), false);
        info!(node_port = %self.config.node_port, ?stats, "shaper stopped");
        self.write_stats(start.elapsed(), false)?;
        result.map(|()| stats)
    }

    /// The counters so far.
    fn stats(&self, elapsed: Duration, running: bool) -> ShaperStats {
        ShaperStats {
            elapsed_ms: elapsed.as_millis() as u64,
            running,
            egress: self.egress.stats.clone(),
            ingress: self.ingress.stats.clone(),
        }
    }

    /// One turn: send what is due, sleep until a frame arrives or the next one is due, read.
    fn step(&mut self, start: Instant) -> Result<(), ShaperError> {
        let now_us = start.elapsed().as_micros() as u64;
        flush(&mut self.egress, &self.bridge, now_us);
        flush(&mut self.ingress, &self.node, now_us);

        let mut timeout_us = STOP_CHECK.as_micros() as u64;
        for next in [self.egress.next_release(), self.ingress.next_release()].into_iter().flatten()
        {
            timeout_us = timeout_us.min(next.saturating_sub(now_us));
        }
        let (node_ready, bridge_ready) = self.wait(timeout_us)?;

        // Frames are stamped with the time they were read, not the time the wait began.
        if node_ready {
            read_batch(&self.node, &mut self.egress, &mut self.buffer, start.elapsed())?;
        }
        if bridge_ready {
            read_batch(&self.bridge, &mut self.ingress, &mut self.buffer, start.elapsed())?;
        }
        Ok(())
    }

    /// ppoll on both sockets for up to `timeout_us`; which are readable (or in error).
    fn wait(&self, timeout_us: u64) -> Result<(bool, bool), ShaperError> {
        let events = libc::POLLIN;
        let mut fds = [
            libc::pollfd { fd: self.node.as_raw_fd(), events, revents: 0 },
            libc::pollfd { fd: self.bridge.as_raw_fd(), events, revents: 0 },
        ];
        let timeout = libc::timespec {
            tv_sec: (timeout_us / 1_000_000) as _,
            tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
        };
        // SAFETY: `fds` and `timeout` are valid for the call; no signal mask is passed.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
        if n < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EINTR) {
                return Ok((false, false));
            }
            return Err(ShaperError::Poll {
                node_port: self.config.node_port.clone(),
                bridge_port: self.config.bridge_port.clone(),
                source,
            });
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }

    fn write_stats(&self, elapsed: Duration, running: bool) -> Result<(), ShaperError> {
        let Some(path) = &self.config.stats_file else { return Ok(()) };
        write_atomically(path, &self.stats(elapsed, running).to_json())
            .map_err(|source| ShaperError::WriteStats { path: path.clone(), source })
    }
}

/// Sends every frame of `direction` due by `now_us` out of `out`.
fn flush(direction: &mut DirectionShaper, out: &PacketSocket, now_us: u64) {
    while let Some(frame) = direction.pop_due(now_us) {
        match out.send(&frame) {
            Ok(()) => {
                direction.stats.frames_out += 1;
                direction.stats.bytes_out += (frame.len() - super::engine::VNET_HDR_LEN) as u64;
            }
            Err(error) => {
                // A full buffer or a port that is down loses the frame, as a busy link would.
                if direction.stats.dropped_send == 0 {
                    warn!(ifname = out.ifname(), %error, "shaper cannot send; dropping frames");
                }
                direction.stats.dropped_send += 1;
            }
        }
    }
}

/// Reads up to [`READ_BATCH`] frames from `port` into `direction`.
fn read_batch(
    port: &PacketSocket,
    direction: &mut DirectionShaper,
    buffer: &mut [u8],
    now: Duration,
) -> Result<(), ShaperError> {
    let now_us = now.as_micros() as u64;
    for _ in 0..READ_BATCH {
        match port.recv(buffer) {
            Ok(None) => break,
            Ok(Some(len)) if len > buffer.len() => direction.stats.dropped_oversize += 1,
            Ok(Some(len)) => direction.admit(buffer[..len].to_vec(), now_us),
            // The port went down (a link fault): the socket resumes when it is up again.
            Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => {
                debug!(ifname = port.ifname(), "port went down");
                break;
            }
            Err(source) => {
                return Err(ShaperError::Receive { ifname: port.ifname().into(), source })
            }
        }
    }
    Ok(())
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, so a reader
/// never sees half a file.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// Opens and runs a shaper on the calling thread until `stop` is set; the entry point of a
/// detached shaper process. Returns the final counters.
///
/// # Examples
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use mesh_net::shaper::{run_shaper, ShaperConfig};
///
/// let config: ShaperConfig = serde_json::from_str(&std::fs::read_to_string("shaper.json")?)?;
/// static STOP: AtomicBool = AtomicBool::new(false); // set from a SIGTERM handler
/// let stats = run_shaper(&config, &STOP)?;
/// println!("{} frames lost on the way out", stats.egress.dropped_loss);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_shaper(config: &ShaperConfig, stop: &AtomicBool) -> Result<ShaperStats, ShaperError> {
    Shaper::open(config)?.run(stop)
}

/// A shaper forwarding on a thread of this process; [`RunningShaper::stop`] ends it (so does
/// dropping it).
#[derive(Debug)]
pub struct RunningShaper {
    node_port: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<ShaperStats, ShaperError>>>,
}

/// Opens a shaper (errors come back here, before any thread starts) and runs it on a new
/// thread. Frames are captured from the moment this returns.
pub fn spawn_shaper(config: &ShaperConfig) -> Result<RunningShaper, ShaperError> {
    let shaper = Shaper::open(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(format!("shaper-{}", config.node_port))
        .spawn(move || shaper.run(&flag))
        .map_err(|source| ShaperError::Thread { node_port: config.node_port.clone(), source })?;
    Ok(RunningShaper { node_port: config.node_port.clone(), stop, thread: Some(thread) })
}

impl RunningShaper {
    /// Stops forwarding and returns the counters.
    pub fn stop(mut self) -> Result<ShaperStats, ShaperError> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("the thread is joined only once, here or in drop");
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(ShaperError::Thread {
                node_port: self.node_port.clone(),
                source: io::Error::other("the shaper thread panicked"),
            }),
        }
    }
}

impl Drop for RunningShaper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_is_what_serde_reads() {
        let mut stats = ShaperStats { elapsed_ms: 1234, running: true, ..Default::default() };
        stats.egress.frames_in = 1;
        stats.egress.dropped_loss = 2;
        stats.ingress.reordered = 3;
        stats.ingress.bytes_out = u64::MAX;
        let parsed: ShaperStats = serde_json::from_str(&stats.to_json()).expect("valid JSON");
        assert_eq!(parsed, stats);
        let value: serde_json::Value = serde_json::from_str(&stats.to_json()).expect("JSON");
        let fields = value["egress"].as_object().expect("object").len();
        let serde_fields = serde_json::to_value(&stats.egress).expect("serialises");
        assert_eq!(fields, serde_fields.as_object().expect("object").len(), "no field missing");
    }

    #[test]
    fn stats_files_are_replaced_whole() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("stats.json");
        write_atomically(&path, "one").expect("first write");
        write_atomically(&path, "two").expect("second write");
        assert_eq!(std::fs::read_to_string(&path).expect("readable"), "two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("listable").count(), 1, "no temp left");
    }
}
