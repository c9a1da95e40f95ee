//! The end-of-run report: a table for people, JSON for programs, JUnit XML for CI systems.

use mesh_core::ready::NodeReadiness;
use mesh_core::ssh::ExecResult;
use mesh_core::MeshPlan;

/// One node's line in the report.
pub struct NodeRow {
    name: String,
    arch: String,
    ip: String,
    readiness: NodeReadiness,
    result: Option<ExecResult>,
}

/// The whole report of a `mesh up`.
pub struct Report {
    pub mesh: String,
    rows: Vec<NodeRow>,
    builtin_check: bool,
}

impl Report {
    pub fn new(
        plan: &MeshPlan,
        readiness: &[NodeReadiness],
        results: &[ExecResult],
        builtin_check: bool,
    ) -> Report {
        let rows = plan
            .nodes
            .iter()
            .zip(readiness)
            .map(|(n, r)| NodeRow {
                name: n.name.clone(),
                arch: n.arch.to_string(),
                ip: n.ip.to_string(),
                readiness: r.clone(),
                result: results.iter().find(|x| x.node == n.name).cloned(),
            })
            .collect();
        Report { mesh: plan.spec.name.clone(), rows, builtin_check }
    }

    /// Every node ready and its command succeeded.
    pub fn all_ok(&self) -> bool {
        !self.rows.is_empty()
            && self
                .rows
                .iter()
                .all(|r| r.readiness.is_ready() && r.result.as_ref().is_some_and(|x| x.ok()))
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.builtin_check {
            out.push_str(&format!(
                "{:<10} {:<8} {:<15} {:<24} {:>8}  {}\n",
                "NODE", "ARCH", "ADDRESS", "KERNEL", "READY", "MESH"
            ));
        } else {
            out.push_str(&format!(
                "{:<10} {:<8} {:<15} {:>8} {:>5} {:>8}  {}\n",
                "NODE", "ARCH", "ADDRESS", "READY", "EXIT", "TIME", "OUTPUT"
            ));
        }
        for r in &self.rows {
            let ready =
                r.readiness.ready_secs().map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into());
            if let Some(err) = &r.readiness.error {
                out.push_str(&format!(
                    "{:<10} {:<8} {:<15} not ready (after {}): {}\n",
                    r.name, r.arch, r.ip, r.readiness.phase, err
                ));
                if let Some(tail) = &r.readiness.serial_tail {
                    for line in tail.lines() {
                        out.push_str(&format!("    | {line}\n"));
                    }
                }
                continue;
            }
            let Some(x) = &r.result else {
                out.push_str(&format!(
                    "{:<10} {:<8} {:<15} {:>8}  (not run)\n",
                    r.name, r.arch, r.ip, ready
                ));
                continue;
            };
            if self.builtin_check {
                let kernel = if x.ok() { x.stdout.trim().to_owned() } else { "-".into() };
                let mesh = match (x.ok(), self.rows.len()) {
                    (true, 1) => "no peers to reach".to_owned(),
                    (true, _) => "all peers reachable".to_owned(),
                    (false, _) => first_line(&x.stderr),
                };
                out.push_str(&format!(
                    "{:<10} {:<8} {:<15} {:<24} {:>8}  {}\n",
                    r.name, r.arch, r.ip, kernel, ready, mesh
                ));
            } else {
                let code = x.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                let output = if x.ok() {
                    last_line(&x.stdout)
                } else {
                    last_line(&format!("{}{}", x.stdout, x.stderr))
                };
                out.push_str(&format!(
                    "{:<10} {:<8} {:<15} {:>8} {:>5} {:>7.1}s  {}\n",
                    r.name,
                    r.arch,
                    r.ip,
                    ready,
                    code,
                    x.duration_ms as f64 / 1000.0,
                    output
                ));
            }
        }
        let ok = self
            .rows
            .iter()
            .filter(|r| r.readiness.is_ready() && r.result.as_ref().is_some_and(|x| x.ok()))
            .count();
        out.push_str(&format!("{ok} of {} nodes ok\n", self.rows.len()));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mesh": self.mesh,
            "ok": self.all_ok(),
            "check": if self.builtin_check { "connectivity" } else { "action" },
            "nodes": self.rows.iter().map(|r| serde_json::json!({
                "name": r.name,
                "arch": r.arch,
                "ip": r.ip,
                "ready": r.readiness.is_ready(),
                "ready_secs": r.readiness.ready_secs(),
                "phase": r.readiness.phase,
                "phase_times": r.readiness.phase_times,
                "cloud_init": r.readiness.cloud_init_status,
                "error": r.readiness.error,
                "serial_tail": r.readiness.serial_tail,
                "result": r.result,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn junit(&self) -> String {
        let failures = self
            .rows
            .iter()
            .filter(|r| !(r.readiness.is_ready() && r.result.as_ref().is_some_and(|x| x.ok())))
            .count();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!(
            "<testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n",
            xml(&self.mesh),
            self.rows.len(),
            failures
        ));
        for r in &self.rows {
            let secs = r.result.as_ref().map(|x| x.duration_ms as f64 / 1000.0).unwrap_or(0.0);
            out.push_str(&format!(
                "  <testcase classname=\"{}.{}\" name=\"{}\" time=\"{secs:.3}\">\n",
                xml(&self.mesh),
                xml(&r.arch),
                xml(&r.name)
            ));
            if let Some(err) = &r.readiness.error {
                out.push_str(&format!("    <failure message=\"not ready: {}\"/>\n", xml(err)));
            } else if let Some(x) = &r.result {
                if !x.ok() {
                    let code = x.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                    out.push_str(&format!("    <failure message=\"exit code {code}\"/>\n"));
                }
                out.push_str(&format!("    <system-out>{}</system-out>\n", xml(&x.stdout)));
                out.push_str(&format!("    <system-err>{}</system-err>\n", xml(&x.stderr)));
            }
            out.push_str("  </testcase>\n");
        }
        out.push_str("</testsuite>\n");
        out
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() > 60 {
        format!("{}...", line.chars().take(57).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// The last non-empty line: an action's result is usually what it prints last.
fn last_line(s: &str) -> String {
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    shorten(line)
}

fn shorten(line: &str) -> String {
    if line.chars().count() > 60 {
        format!("{}...", line.chars().take(57).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

pub fn exec_table(results: &[ExecResult]) -> String {
    let mut out =
        format!("{:<10} {:<8} {:>5} {:>8}  {}\n", "NODE", "ARCH", "EXIT", "TIME", "OUTPUT");
    for x in results {
        let code = x.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<10} {:<8} {:>5} {:>7.1}s  {}\n",
            x.node,
            x.arch,
            code,
            x.duration_ms as f64 / 1000.0,
            if x.ok() {
                last_line(&x.stdout)
            } else {
                last_line(&format!("{}{}", x.stdout, x.stderr))
            }
        ));
    }
    out
}

pub fn image_header() -> String {
    format!("{:<32} {:<8} {:<10} {:<22} {:>8}", "ID", "ARCH", "BOOT", "KERNEL", "SIZE")
}

pub fn image_line(i: &mesh_core::image::BaseImage) -> String {
    let m = &i.manifest;
    let boot = match &m.boot {
        mesh_core::image::BootMode::Direct { .. } => "direct",
        _ => "firmware",
    };
    format!(
        "{:<32} {:<8} {:<10} {:<22} {:>7}M",
        m.id,
        m.arch.to_string(),
        boot,
        m.kernel_version.as_deref().unwrap_or("-"),
        m.disk_size >> 20
    )
}
