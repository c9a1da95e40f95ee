//! Small readers of `/proc/PID/stat`, to tell a live process from a zombie or a reused PID.

/// The process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19).and_then(|s| s.parse().ok()))
}

/// Whether `pid` is still the process that started at `start` and has not exited (zombies
/// count as exited).
pub fn is_running(pid: u32, start: u64) -> bool {
    match stat_fields(pid) {
        Some(f) => {
            f.first().map(|s| s.as_str()) != Some("Z")
                && f.get(19).and_then(|s| s.parse().ok()) == Some(start)
        }
        None => false,
    }
}

/// Fields of `/proc/PID/stat` after the command name (so index 0 is the state, field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_running_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let start = start_time(pid).expect("own start time");
        assert!(is_running(pid, start));
        assert!(!is_running(pid, start + 1));
    }
}
