//! Measures what issue 6 sets goals for: the QMP round trip (p50/p99 over 10,000
//! `query-status` on one connection to a paused TCG QEMU) and the time to create an
//! overlay. `cargo run -p mesh-qemu --example bench [-- ROUNDS]`; prints one JSON object.

use std::time::{Duration, Instant};

use mesh_qemu::{create_overlay, process_matches, Accel, Arch, Boot, QemuProcess, Qmp, VmSpec};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let dir = tempfile::tempdir()?;

    let base = dir.path().join("base.raw");
    std::fs::File::create(&base)?.set_len(2 << 30)?;
    let mut overlay_times = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        create_overlay(&base, &dir.path().join(format!("o{i}.qcow2")))?;
        overlay_times.push(started.elapsed());
    }
    overlay_times.sort();

    let spec = VmSpec {
        name: "bench".into(),
        arch: Arch::X86_64,
        accel: Accel::Tcg,
        cpu_model: None,
        cpus: 1,
        memory_mib: 128,
        boot: Boot::Bios,
        drives: vec![],
        nics: vec![],
        serial_log: dir.path().join("serial.log"),
        qmp_socket: dir.path().join("qmp.sock"),
        virtio_serial: vec![],
    };
    let mut command = spec.command()?;
    command.args.push("-S".into());
    let mut process = QemuProcess::spawn(&command, None, &dir.path().join("qemu.log"))?;
    let (pid, start) = (process.pid(), process.start_time());
    let qmp =
        Qmp::connect(&spec.qmp_socket, Duration::from_secs(10), || process_matches(pid, start))
            .await?;
    let mut round_trips = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        qmp.query_status().await?;
        round_trips.push(started.elapsed());
    }
    process.stop(Some(&qmp), Duration::from_millis(200)).await?;
    round_trips.sort();

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{{\"qmp_query_status_p50_us\": {:.1}, \"qmp_query_status_p99_us\": {:.1}, \
         \"overlay_create_p50_us\": {:.1}, \"overlay_create_p99_us\": {:.1}, \"rounds\": {rounds}}}",
        micros(percentile(&round_trips, 0.5)),
        micros(percentile(&round_trips, 0.99)),
        micros(percentile(&overlay_times, 0.5)),
        micros(percentile(&overlay_times, 0.99)),
    );
    Ok(())
}
