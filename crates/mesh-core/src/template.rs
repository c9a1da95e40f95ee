//! Per-node command templates: `{name}`, `{ip_address}`, `{arch}`, `{index}`, `{peers}`.

use crate::plan::{MeshPlan, NodePlan};

/// Errors in a command template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{...}` placeholder we do not know.
    #[error("unknown placeholder {{{name}}} in command (known: {{name}}, {{ip_address}}, {{arch}}, {{index}}, {{peers}}; write {{{{ for a literal brace)")]
    Unknown {
        /// The placeholder.
        name: String,
    },
    /// A `{` without its `}`.
    #[error("unclosed '{{' in command template")]
    Unclosed,
}

/// Fills the placeholders of `template` for `node`. `{peers}` is the comma-separated addresses
/// of all other nodes. `{{` and `}}` stand for literal braces.
pub fn render(template: &str, plan: &MeshPlan, node: &NodePlan) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        let end = tail.find('}').ok_or(TemplateError::Unclosed)?;
        let key = &tail[1..end];
        let value = match key {
            "name" => node.name.clone(),
            "ip_address" => node.ip.to_string(),
            "arch" => node.arch.to_string(),
            "index" => node.index.to_string(),
            "peers" => plan
                .nodes
                .iter()
                .filter(|n| n.index != node.index)
                .map(|n| n.ip.to_string())
                .collect::<Vec<_>>()
                .join(","),
            other => return Err(TemplateError::Unknown { name: other.to_owned() }),
        };
        out.push_str(&value);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template against the first node without running anything.
pub fn check(template: &str, plan: &MeshPlan) -> Result<(), TemplateError> {
    match plan.nodes.first() {
        Some(node) => render(template, plan, node).map(drop),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MeshPaths;
    use crate::spec::{MeshSpec, SpecOverrides};

    fn plan() -> MeshPlan {
        let spec = MeshSpec::resolve(
            None,
            &SpecOverrides {
                name: Some("t".into()),
                n_x86: Some(2),
                n_aarch: Some(1),
                ..Default::default()
            },
        )
        .expect("spec");
        MeshPlan::with_paths(&spec, MeshPaths { state: "/s".into(), runtime: "/r".into() })
            .expect("plan")
    }

    #[test]
    fn placeholders_are_filled_per_node() {
        let p = plan();
        let node = &p.nodes[2];
        let s = render("{name} {arch} {index} {ip_address} [{peers}] {{x}}", &p, node)
            .expect("renders");
        let peers = format!("{},{}", p.nodes[0].ip, p.nodes[1].ip);
        assert_eq!(s, format!("aarch-1 aarch64 2 {} [{peers}] {{x}}", node.ip));
    }

    #[test]
    fn unknown_placeholder_is_an_error() {
        let p = plan();
        assert!(matches!(render("{nmae}", &p, &p.nodes[0]), Err(TemplateError::Unknown { .. })));
        assert!(matches!(render("{name", &p, &p.nodes[0]), Err(TemplateError::Unclosed)));
    }

    #[test]
    fn shell_braces_survive_when_doubled() {
        let p = plan();
        let s = render("awk '{{print $1}}'", &p, &p.nodes[0]).expect("renders");
        assert_eq!(s, "awk '{print $1}'");
    }
}
