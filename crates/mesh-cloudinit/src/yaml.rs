//! YAML out (for the documents we build) and YAML in (for documents users hand us).
//!
//! cloud-init reads every document with PyYAML's `safe_load`, a YAML 1.1 reader. The emitter
//! must therefore quote every string that YAML 1.1 would turn into something else (`yes`,
//! `on`, `0755`, `12:30`, `<<`, `~`, ...) and escape the characters PyYAML refuses in a stream
//! (C0/C1 controls such as U+0080) or treats as line breaks (U+0085, U+2028, U+2029).
//!
//! The emitter was chosen by test: serde-saphyr 2.2 in its YAML 1.1 mode round-trips
//! arbitrary strings, map keys and numbers through PyYAML unchanged (see
//! `tests/yaml_roundtrip.rs`, which must keep passing before the library or its options
//! change). serde_yaml and its forks were seen writing `yes`, `on`, `12:30` and `<<` plain.
//!
//! Input goes through libyaml and PyYAML's loading rules (see [`load`]), strictly:
//! duplicate keys, several documents and tabs in indentation are errors, because PyYAML either
//! rejects them or silently keeps the last value, and cloud-init then skips the whole config
//! without failing the boot.

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::load::{load, LoadError, MAX_DEPTH, MAX_VALUES};

/// What went wrong while writing or reading a YAML document.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The serializer refused the value (for example a map key that is not a string).
    #[error("cannot write {document} as YAML")]
    Emit {
        /// The document being written, e.g. `user-data`.
        document: &'static str,
        /// What the serializer reported.
        #[source]
        source: serde_saphyr::SerializeError,
    },
    /// A tab is used to indent a line; YAML allows only spaces there.
    #[error("{document}: line {line} is indented with a tab (YAML allows only spaces)")]
    TabIndentation {
        /// The document being read.
        document: &'static str,
        /// 1-based line number.
        line: usize,
    },
    /// The text is not valid YAML, or not YAML that cloud-init reads as one document.
    #[error("{document} is not valid YAML: {error}")]
    Parse {
        /// The document being read.
        document: &'static str,
        /// What is wrong, and its line and column.
        error: LoadError,
    },
    /// The document parsed but its top level is not a mapping.
    #[error("{document} must be a YAML mapping at the top level, found {found}")]
    NotAMapping {
        /// The document being read.
        document: &'static str,
        /// What was found instead (`a list`, `a string`, ...).
        found: &'static str,
    },
}

/// Writes `value` as a YAML 1.1-safe block document (no `---`, trailing newline).
pub(crate) fn to_yaml<T: Serialize>(
    document: &'static str,
    value: &T,
) -> Result<String, YamlError> {
    // Defaults are the YAML 1.1 mode: every string PyYAML would resolve to a non-string is
    // quoted. `quote_all` stays off so the files remain readable in a guest's console.
    let options = serde_saphyr::SerializerOptions::default();
    serde_saphyr::to_string_with_options(value, options)
        .map_err(|source| YamlError::Emit { document, source })
}

/// Reads one YAML document that must be a mapping (or empty, which gives an empty mapping).
pub(crate) fn parse_mapping(
    document: &'static str,
    text: &str,
) -> Result<Map<String, Value>, YamlError> {
    // The error names line and column but never quotes the line, which may hold a secret.
    // A refused text indented with a tab gets the plainer message about that line (the
    // line-based check would misjudge a tab inside a quoted value that spans lines, so it
    // speaks only when the reader refused too).
    let value = load(text).map_err(|error| {
        check_tab_indentation(document, text).err().unwrap_or(YamlError::Parse { document, error })
    })?;

    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(YamlError::NotAMapping { document, found: kind_of(&other) }),
    }
}

/// Rejects tabs in the indentation of any line outside a block scalar.
///
/// PyYAML stops with "found character '\t' that cannot start any token". Lines inside a
/// literal or folded block scalar (after `|` or `>`) may start with tabs once the block's
/// indentation is reached (a Makefile in `write_files`), so those are skipped: a line belongs
/// to the block while it is blank or indented deeper than the line that opened it.
pub(crate) fn check_tab_indentation(document: &'static str, text: &str) -> Result<(), YamlError> {
    let mut block_parent_indent: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let spaces = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[spaces..];

        if let Some(parent) = block_parent_indent {
            let blank = line.trim().is_empty();
            if blank || spaces > parent {
                continue;
            }
            block_parent_indent = None;
        }

        if rest.starts_with('\t') && !rest.trim().is_empty() {
            return Err(YamlError::TabIndentation { document, line: index + 1 });
        }
        if opens_block_scalar(rest) {
            block_parent_indent = Some(spaces);
        }
    }
    Ok(())
}

/// True when a line ends with a block scalar header (`|`, `>-`, `|2+`, ...), ignoring a
/// trailing comment.
fn opens_block_scalar(line: &str) -> bool {
    let without_comment = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    let token = without_comment.trim_end().rsplit([' ', '\t']).next().unwrap_or("");
    let mut chars = token.chars();
    if !matches!(chars.next(), Some('|') | Some('>')) {
        return false;
    }
    let indicators: String = chars.collect();
    indicators.len() <= 2 && indicators.chars().all(|c| matches!(c, '+' | '-' | '1'..='9'))
}

/// A short human name for a JSON value's kind, for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_lookalikes_are_quoted() {
        let yaml = to_yaml("test", &vec!["yes", "on", "12:30", "<<", "0755", "~"])
            .expect("strings always serialize");
        for line in yaml.lines() {
            assert!(line.starts_with("- \"") || line.starts_with("- '"), "unquoted: {line}");
        }
    }

    #[test]
    fn tab_in_indentation_is_rejected_with_its_line() {
        let err = parse_mapping("user-data", "a: 1\nb:\n\t- x\n").expect_err("tab indent");
        assert!(matches!(err, YamlError::TabIndentation { line: 3, .. }), "{err:?}");
    }

    #[test]
    fn tabs_inside_a_block_scalar_are_content() {
        let text = "write_files:\n- path: /Makefile\n  content: |\n    all:\n    \tcc -o x x.c\n";
        let map = parse_mapping("user-data", text).expect("valid YAML");
        let content = &map["write_files"][0]["content"];
        assert_eq!(content, "all:\n\tcc -o x x.c\n");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert!(matches!(parse_mapping("user-data", "a: 1\na: 2\n"), Err(YamlError::Parse { .. })));
    }

    #[test]
    fn several_documents_are_rejected() {
        assert!(parse_mapping("user-data", "a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn top_level_list_is_rejected() {
        assert!(matches!(
            parse_mapping("meta-data", "- a\n"),
            Err(YamlError::NotAMapping { found: "a list", .. })
        ));
    }

    #[test]
    fn empty_document_is_an_empty_mapping() {
        assert!(parse_mapping("user-data", "").expect("empty is fine").is_empty());
    }
}
