//! Boots the tiny test guest of each architecture a few times under TCG and prints how long
//! the boot (QEMU start to script start) and the whole run took: figures for
//! `cargo xtask bench`, not assertions.
//!
//! ```text
//! cargo run -p mesh-testkit --example boot_time [-- RUNS]
//! ```

use std::time::Duration;

use mesh_testkit::{guest_kernel, Arch, GuestRun};

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|arg| arg.parse()).transpose()?.unwrap_or(3);
    for arch in Arch::ALL {
        // Download outside the timed runs.
        guest_kernel(arch)?;
        let mut boots = Vec::new();
        let mut totals = Vec::new();
        for _ in 0..runs {
            let result = GuestRun::start(arch, &[], "true", Duration::from_secs(120))?.wait()?;
            boots.push(result.boot_time);
            totals.push(result.total_time);
        }
        boots.sort();
        totals.sort();
        println!(
            "{arch}: boot median {:.2?} (min {:.2?}, max {:.2?}), whole run median {:.2?}",
            boots[boots.len() / 2],
            boots[0],
            boots[boots.len() - 1],
            totals[totals.len() / 2],
        );
    }
    Ok(())
}
