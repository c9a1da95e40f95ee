//! The accelerator probe on this host class, where `/dev/kvm` opens but KVM guests crawl
//! (nested virtualization: a Linux kernel never gets past decompression in a minute): the
//! verdict must be TCG. The same probe guests do print their marker under TCG, which shows
//! the probe guests themselves work.

use std::time::{Duration, Instant};

use mesh_qemu::{
    accel_cache_path, probe_accel, probe_accel_with_kernel, probe_guest_time, Accel, Arch,
};

#[test]
fn probe_guests_print_their_marker_under_tcg_for_both_arches() {
    for arch in Arch::ALL {
        let time = probe_guest_time(arch, Accel::Tcg, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{} is needed for this test: {e}", arch.qemu_binary()));
        let time = time.unwrap_or_else(|| panic!("the {arch} probe guest printed no marker"));
        eprintln!("{arch} probe guest under TCG: {time:?}");
    }
}

#[test]
fn kvm_guests_do_not_run_here_so_the_verdict_is_tcg_and_is_cached() {
    assert!(
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        "this test pins the nested-virtualization case: /dev/kvm must open"
    );
    let cache_dir = tempfile::tempdir().expect("a temporary directory");
    let kernel = mesh_testkit::guest_kernel(Arch::host()).expect("a Debian guest kernel").kernel;
    let started = Instant::now();
    // The few-byte probe guest alone may pass under this nested KVM (it did, on a quiet
    // host); a real kernel never does, so the verdict with the kernel must be TCG.
    let quick = probe_accel(Arch::host(), cache_dir.path());
    assert_eq!(probe_accel_with_kernel(Arch::host(), cache_dir.path(), &kernel), Accel::Tcg);
    let probing = started.elapsed();
    eprintln!("probe guest alone said {quick}");
    if quick == Accel::Tcg {
        // The rest checks the cache of the quick probe, which only holds a TCG verdict here.
        check_quick_cache(cache_dir.path(), probing);
    }
}

fn check_quick_cache(cache_dir: &std::path::Path, probing: Duration) {
    let cache_dir = tempfile::TempDir::new_in(cache_dir).expect("a temporary directory");
    let started = Instant::now();
    if probe_accel(Arch::host(), cache_dir.path()) != Accel::Tcg {
        return;
    }
    let _ = started;

    let cache = accel_cache_path(Arch::host(), cache_dir.path()).expect("a cache key");
    assert_eq!(std::fs::read_to_string(&cache).expect("verdict cached"), "tcg");
    let name = cache.file_name().expect("file").to_string_lossy().into_owned();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(name.contains(release.trim()), "{name} names the kernel release");

    // A second call must believe the cache instead of probing again: plant the opposite
    // verdict and see it come back.
    std::fs::write(&cache, "kvm").expect("rewrite cache");
    let started = Instant::now();
    assert_eq!(probe_accel(Arch::host(), cache_dir.path()), Accel::Kvm);
    eprintln!("probe took {probing:?}; cached verdict took {:?}", started.elapsed());

    // Garbage in the cache is ignored and replaced by a fresh verdict.
    std::fs::write(&cache, "maybe").expect("rewrite cache");
    assert_eq!(probe_accel(Arch::host(), cache_dir.path()), Accel::Tcg);
    assert_eq!(std::fs::read_to_string(&cache).expect("verdict cached"), "tcg");
}
