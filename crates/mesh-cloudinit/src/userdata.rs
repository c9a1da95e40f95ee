//! User-supplied user-data (and vendor-data): accepted as cloud-config, as a `#!` script or
//! as multipart MIME, checked strictly so cloud-init cannot skip it silently.
//!
//! Normalised, not rejected: a UTF-8 byte-order mark, leading blank lines and spaces, and
//! CRLF line endings in cloud-config and scripts (converted to LF: a script with CRLF fails
//! in the guest with `/bin/sh^M: not found`). Everything else that is off is rejected.

use crate::config::{has_mime_marker, CLOUD_CONFIG_HEADER};
use crate::mime::{self, MimeError};
use crate::yaml::{self, YamlError};

/// User-data in one of the forms cloud-init runs, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// A cloud-config document, starting with `#cloud-config\n`.
    CloudConfig(String),
    /// A script, starting with `#!`, with LF line endings.
    Script(String),
    /// A MIME message (usually `multipart/mixed`) whose parts were each checked.
    Multipart(Vec<u8>),
}

impl UserData {
    /// The bytes to put in the seed.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            UserData::CloudConfig(text) | UserData::Script(text) => text.as_bytes(),
            UserData::Multipart(bytes) => bytes,
        }
    }
}

/// Why user-data (or vendor-data, which is read the same way) was rejected. The messages do
/// not name the document, since both kinds are read by the same code: callers say which.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8 text (first bad byte at offset {offset})")]
    Decode {
        /// Byte offset of the first invalid sequence.
        offset: usize,
        /// The decoder's report.
        #[source]
        source: std::str::Utf8Error,
    },
    /// There is nothing but whitespace.
    #[error("empty")]
    CheckEmpty,
    /// A control character other than tab and newline is present.
    #[error("control character U+{code:04X} at line {line}, column {column}")]
    CheckControlCharacter {
        /// Its code point.
        code: u32,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
    },
    /// A YAML document marker comes before the `#cloud-config` header, which cloud-init then
    /// does not see.
    #[error("starts with `---`; the first line must be `#cloud-config`")]
    CheckMarkerBeforeHeader,
    /// A cloud-init format we do not pass through (`#include`, `#cloud-config-archive`, ...).
    #[error("format {header:?} is not supported; use #cloud-config, #! or MIME")]
    CheckUnsupportedFormat {
        /// The header line.
        header: String,
    },
    /// The first line names no format cloud-init knows.
    #[error(
        "neither cloud-config (first line `#cloud-config`), a script (`#!`) nor MIME; it \
         starts with {start:?}"
    )]
    CheckUnknownFormat {
        /// The first characters of the first line.
        start: String,
    },
    /// The cloud-config YAML is invalid (the cause says so).
    #[error(transparent)]
    ParseCloudConfig(YamlError),
    /// The MIME message is malformed.
    #[error("MIME message is malformed")]
    ParseMime(#[source] MimeError),
    /// A MIME part has a content type cloud-init would ignore or that we do not check.
    #[error("MIME part {index} has unsupported content type {content_type:?}")]
    CheckPartType {
        /// 0-based leaf part index.
        index: usize,
        /// Its content type.
        content_type: String,
    },
    /// A MIME part is invalid.
    #[error("MIME part {index} ({content_type}) is invalid")]
    CheckPart {
        /// 0-based leaf part index.
        index: usize,
        /// Its content type.
        content_type: String,
        /// What is wrong with it.
        #[source]
        source: Box<UserDataError>,
    },
    /// A script inside a MIME part has CRLF line endings, which we cannot convert there.
    #[error("a script has CRLF line endings; convert it to LF")]
    CheckScriptCrlf,
    /// A script part does not start with `#!`.
    #[error("a script does not start with `#!`")]
    CheckShebang,
}

/// Checks user-data and returns it normalised.
///
/// # Examples
/// ```
/// use mesh_cloudinit::{parse_user_data, UserData};
///
/// let data = parse_user_data(b"\xef\xbb\xbf\n#!/bin/sh\r\necho hi\r\n").unwrap();
/// assert_eq!(data, UserData::Script("#!/bin/sh\necho hi\n".into()));
/// assert!(parse_user_data(b"---\n#cloud-config\n").is_err());
/// ```
pub fn parse_user_data(bytes: &[u8]) -> Result<UserData, UserDataError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|source| UserDataError::Decode { offset: source.valid_up_to(), source })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.is_empty() {
        return Err(UserDataError::CheckEmpty);
    }

    if has_mime_marker(trimmed.as_bytes()) {
        return parse_multipart(trimmed.as_bytes());
    }
    // Errors give the line in the file as given, blank lines removed above included.
    let removed = text[..text.len() - trimmed.len()].bytes().filter(|&b| b == b'\n').count();
    parse_single(trimmed).map_err(|e| e.lines_later(removed))
}

impl UserDataError {
    /// The same error with its line number `n` lines further down.
    fn lines_later(self, n: usize) -> Self {
        match self {
            UserDataError::CheckControlCharacter { code, line, column } => {
                UserDataError::CheckControlCharacter { code, line: line + n, column }
            }
            UserDataError::ParseCloudConfig(YamlError::TabIndentation { document, line }) => {
                UserDataError::ParseCloudConfig(YamlError::TabIndentation {
                    document,
                    line: line + n,
                })
            }
            UserDataError::ParseCloudConfig(YamlError::Parse { document, mut error }) => {
                error.line += n as u64;
                UserDataError::ParseCloudConfig(YamlError::Parse { document, error })
            }
            other => other,
        }
    }
}

/// A cloud-config document or script (not MIME), leading whitespace already removed.
fn parse_single(text: &str) -> Result<UserData, UserDataError> {
    let text = text.replace("\r\n", "\n");
    check_control_characters(&text)?;

    let first_line = text.lines().next().unwrap_or("");
    if first_line.trim_end() == CLOUD_CONFIG_HEADER.trim_end() {
        let body = text.split_once('\n').map_or("", |(_, rest)| rest);
        // The header is a YAML comment: parsed with it, reported line numbers are the file's.
        yaml::parse_mapping("cloud-config", &text).map_err(UserDataError::ParseCloudConfig)?;
        return Ok(UserData::CloudConfig(format!("{CLOUD_CONFIG_HEADER}{body}")));
    }
    if first_line.starts_with("#!") {
        return Ok(UserData::Script(text));
    }
    if first_line.trim_end() == "---" || first_line.starts_with("--- ") {
        return Err(UserDataError::CheckMarkerBeforeHeader);
    }
    let known_other = ["#cloud-", "#include", "#part-handler", "#upstart-job", "## template:"];
    if known_other.iter().any(|prefix| first_line.starts_with(prefix)) {
        return Err(UserDataError::CheckUnsupportedFormat { header: first_line.to_owned() });
    }
    Err(UserDataError::CheckUnknownFormat { start: first_line.chars().take(24).collect() })
}

fn parse_multipart(message: &[u8]) -> Result<UserData, UserDataError> {
    let parts = mime::parse_mime(message).map_err(UserDataError::ParseMime)?;
    for (index, part) in parts.iter().enumerate() {
        check_part(&part.content_type, &part.body).map_err(|source| match source {
            UserDataError::CheckPartType { content_type, .. } => {
                UserDataError::CheckPartType { index, content_type }
            }
            source => UserDataError::CheckPart {
                index,
                content_type: part.content_type.clone(),
                source: Box::new(source),
            },
        })?;
    }
    Ok(UserData::Multipart(message.to_vec()))
}

/// Checks one leaf MIME part the way cloud-init's handler for its type would read it.
fn check_part(content_type: &str, body: &[u8]) -> Result<(), UserDataError> {
    let text = std::str::from_utf8(body)
        .map_err(|source| UserDataError::Decode { offset: source.valid_up_to(), source })?;
    match content_type {
        // The cloud-config handler needs no header inside a MIME part.
        "text/cloud-config" => {
            check_control_characters(&text.replace("\r\n", "\n"))?;
            yaml::parse_mapping("cloud-config", text).map_err(UserDataError::ParseCloudConfig)?;
            Ok(())
        }
        "text/x-shellscript"
        | "text/x-shellscript-per-boot"
        | "text/x-shellscript-per-instance"
        | "text/x-shellscript-per-once" => {
            if text.contains('\r') {
                return Err(UserDataError::CheckScriptCrlf);
            }
            check_control_characters(text)?;
            if !text.starts_with("#!") {
                return Err(UserDataError::CheckShebang);
            }
            Ok(())
        }
        "text/cloud-boothook" => check_control_characters(&text.replace("\r\n", "\n")),
        // Untyped parts are sniffed by their first line, like a whole non-MIME file.
        "text/plain" | "text/x-not-multipart" => {
            if text.contains("\r\n") && text.trim_start().starts_with("#!") {
                return Err(UserDataError::CheckScriptCrlf);
            }
            parse_single(text.trim_start()).map(drop)
        }
        other => Err(UserDataError::CheckPartType { index: 0, content_type: other.to_owned() }),
    }
}

fn check_control_characters(text: &str) -> Result<(), UserDataError> {
    for (line_index, line) in text.split('\n').enumerate() {
        for (column, c) in line.chars().enumerate() {
            if c.is_control() && c != '\t' {
                return Err(UserDataError::CheckControlCharacter {
                    code: u32::from(c),
                    line: line_index + 1,
                    column: column + 1,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_blank_lines_and_bom_are_normalised() {
        let data = parse_user_data(b"\xef\xbb\xbf\n\n  #cloud-config\nhostname: a\n").expect("ok");
        assert_eq!(data, UserData::CloudConfig("#cloud-config\nhostname: a\n".into()));
    }

    #[test]
    fn cloud_config_archive_is_not_cloud_config() {
        assert!(matches!(
            parse_user_data(b"#cloud-config-archive\n- a\n"),
            Err(UserDataError::CheckUnsupportedFormat { .. })
        ));
    }

    #[test]
    fn control_character_position_is_reported() {
        let err = parse_user_data(b"#!/bin/sh\necho \x1b[1m\n").expect_err("escape char");
        assert!(
            matches!(err, UserDataError::CheckControlCharacter { code: 0x1b, line: 2, column: 6 }),
            "{err:?}"
        );
    }

    #[test]
    fn c1_control_is_rejected() {
        let err = parse_user_data("#cloud-config\na: \"\u{85}\"\n".as_bytes()).expect_err("NEL");
        assert!(matches!(err, UserDataError::CheckControlCharacter { code: 0x85, .. }));
    }

    #[test]
    fn multipart_parts_are_checked() {
        let message = crate::multipart(&[("text/cloud-config", "a", b"a: [\n")]).expect("valid");
        let err = parse_user_data(&message).expect_err("bad YAML inside");
        assert!(matches!(err, UserDataError::CheckPart { index: 0, .. }), "{err:?}");
    }
}
