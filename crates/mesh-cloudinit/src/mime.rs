//! Multipart MIME user-data: a small encoder and the parser used to check user input.
//!
//! cloud-init reads a user-data file as MIME when `MIME-Version:` appears in its first
//! 4096 bytes, then hands each part to the handler for its content type.

use sha2::{Digest, Sha256};

use crate::base64;

/// Longest line SMTP-style MIME allows (RFC 5322), without the line ending.
const MAX_LINE: usize = 998;
/// Width of base64 lines in the parts we write.
const BASE64_LINE: usize = 76;

/// What is wrong with a MIME message, or with parts given to [`multipart`].
#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    /// A content type is not `type/subtype` made of MIME token characters.
    #[error("part {index}: content type {content_type:?} is not of the form type/subtype")]
    CheckContentType {
        /// 0-based part index.
        index: usize,
        /// The offending value.
        content_type: String,
    },
    /// A file name is empty or holds quotes, backslashes, control or non-ASCII characters.
    #[error("part {index}: file name {filename:?} cannot be written in a MIME header")]
    CheckFilename {
        /// 0-based part index.
        index: usize,
        /// The offending value.
        filename: String,
    },
    /// No part was given.
    #[error("a multipart message needs at least one part")]
    CheckNoParts,
    /// The message has no blank line ending its header.
    #[error("MIME message has no blank line after its header")]
    ParseHeaderEnd,
    /// A multipart message has no `boundary` parameter.
    #[error("multipart message has no boundary parameter")]
    ParseBoundary,
    /// The closing delimiter `--boundary--` is missing.
    #[error("multipart message has no closing delimiter for boundary {boundary:?}")]
    ParseClosingDelimiter {
        /// The boundary.
        boundary: String,
    },
    /// A part uses a transfer encoding we do not decode.
    #[error("part {index}: Content-Transfer-Encoding {encoding:?} is not supported (use 7bit, 8bit or base64)")]
    CheckTransferEncoding {
        /// 0-based part index.
        index: usize,
        /// The encoding named.
        encoding: String,
    },
    /// A base64 part does not decode.
    #[error("part {index}: base64 body does not decode")]
    DecodeBase64 {
        /// 0-based part index.
        index: usize,
    },
    /// Multipart messages are nested deeper than we follow.
    #[error("multipart messages nested more than {max} deep")]
    CheckNesting {
        /// The limit.
        max: usize,
    },
}

/// One decoded leaf part of a MIME message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// The content type, lower case, without parameters (`text/cloud-config`).
    pub content_type: String,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// Builds a `multipart/mixed` message from `(content type, file name, body)` parts.
///
/// Text parts made of short ASCII lines are written as they are (`7bit`); any other body is
/// base64-encoded. The boundary is derived from the parts (the same parts give the same
/// bytes) and is checked to occur in none of them.
///
/// # Examples
/// ```
/// let message = mesh_cloudinit::multipart(&[
///     ("text/cloud-config", "config.yaml", b"#cloud-config\nhostname: a\n"),
///     ("text/x-shellscript", "hello.sh", b"#!/bin/sh\necho hello\n"),
/// ])
/// .unwrap();
/// assert!(message.starts_with(b"Content-Type: multipart/mixed; boundary="));
/// ```
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> Result<Vec<u8>, MimeError> {
    if parts.is_empty() {
        return Err(MimeError::CheckNoParts);
    }
    for (index, (content_type, filename, _)) in parts.iter().enumerate() {
        if !is_content_type(content_type) {
            let content_type = (*content_type).to_owned();
            return Err(MimeError::CheckContentType { index, content_type });
        }
        if !is_header_safe_filename(filename) {
            return Err(MimeError::CheckFilename { index, filename: (*filename).to_owned() });
        }
    }

    let boundary = choose_boundary(parts);
    let mut out = Vec::new();
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n")
            .as_bytes(),
    );
    for (content_type, filename, body) in parts {
        out.extend_from_slice(format!("--{boundary}\n").as_bytes());
        let as_is = is_plain_7bit(body);
        let (charset, encoding) =
            if as_is { ("; charset=\"us-ascii\"", "7bit") } else { ("", "base64") };
        out.extend_from_slice(
            format!(
                "Content-Type: {content_type}{charset}\nMIME-Version: 1.0\n\
                 Content-Transfer-Encoding: {encoding}\n\
                 Content-Disposition: attachment; filename=\"{filename}\"\n\n"
            )
            .as_bytes(),
        );
        if as_is {
            out.extend_from_slice(body);
        } else {
            let encoded = base64::encode(body);
            for (index, line) in encoded.as_bytes().chunks(BASE64_LINE).enumerate() {
                if index > 0 {
                    out.push(b'\n');
                }
                out.extend_from_slice(line);
            }
        }
        // The line break before a delimiter belongs to the delimiter (RFC 2046 5.1.1), so
        // the body keeps its own final newline, if any.
        out.push(b'\n');
    }
    out.extend_from_slice(format!("--{boundary}--\n").as_bytes());
    Ok(out)
}

fn choose_boundary(parts: &[(&str, &str, &[u8])]) -> String {
    let mut hasher = Sha256::new();
    for (content_type, filename, body) in parts {
        for field in [content_type.as_bytes(), filename.as_bytes(), body] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
    }
    first_free_boundary(&hasher.finalize(), parts)
}

/// The first candidate boundary (drawn from `seed`) that occurs in no part's body.
fn first_free_boundary(seed: &[u8], parts: &[(&str, &str, &[u8])]) -> String {
    (0u32..)
        .map(|attempt| boundary_candidate(seed, attempt))
        .find(|boundary| !parts.iter().any(|(_, _, body)| contains(body, boundary.as_bytes())))
        .expect("a 128-bit candidate absent from finite input exists")
}

fn boundary_candidate(seed: &[u8], attempt: u32) -> String {
    let mut round = Sha256::new();
    round.update(seed);
    round.update(attempt.to_le_bytes());
    format!("==mesh-{}==", &hex::encode(round.finalize())[..32])
}

/// True when a body can go into a part without encoding: ASCII text, no CR, no NUL or
/// other controls but tab, and lines short enough for MIME.
fn is_plain_7bit(body: &[u8]) -> bool {
    body.iter().all(|&b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b))
        && body.split(|&b| b == b'\n').all(|line| line.len() <= MAX_LINE)
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_content_type(text: &str) -> bool {
    matches!(text.split_once('/'), Some((kind, sub)) if is_token(kind) && is_token(sub))
}

fn is_header_safe_filename(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How deep multipart messages may nest inside each other.
const MAX_NESTING: usize = 8;

/// Parses a MIME message into its leaf parts, decoding transfer encodings.
pub fn parse_mime(message: &[u8]) -> Result<Vec<MimePart>, MimeError> {
    let mut parts = Vec::new();
    let mut index = 0;
    parse_entity(message, 0, &mut index, &mut parts)?;
    Ok(parts)
}

fn parse_entity(
    entity: &[u8],
    depth: usize,
    index: &mut usize,
    parts: &mut Vec<MimePart>,
) -> Result<(), MimeError> {
    if depth > MAX_NESTING {
        return Err(MimeError::CheckNesting { max: MAX_NESTING });
    }
    let (headers, body) = split_header(entity)?;
    let content_type = header(&headers, "content-type").unwrap_or("text/plain");
    let (media_type, params) = split_params(content_type);

    if media_type.starts_with("multipart/") {
        let boundary = params
            .iter()
            .find(|(name, _)| name == "boundary")
            .map(|(_, value)| value.clone())
            .ok_or(MimeError::ParseBoundary)?;
        for child in split_multipart(body, &boundary)? {
            parse_entity(child, depth + 1, index, parts)?;
        }
        return Ok(());
    }

    let encoding =
        header(&headers, "content-transfer-encoding").unwrap_or("7bit").to_ascii_lowercase();
    let body = match encoding.trim() {
        "7bit" | "8bit" | "binary" => body.to_vec(),
        "base64" => {
            let text = String::from_utf8_lossy(body);
            base64::decode(&text).ok_or(MimeError::DecodeBase64 { index: *index })?
        }
        other => {
            let encoding = other.to_owned();
            return Err(MimeError::CheckTransferEncoding { index: *index, encoding });
        }
    };
    parts.push(MimePart { content_type: media_type, body });
    *index += 1;
    Ok(())
}

/// A header field as `(lower-case name, value)`.
type HeaderField = (String, String);

/// Unfolded header fields and the body after the blank line.
fn split_header(entity: &[u8]) -> Result<(Vec<HeaderField>, &[u8]), MimeError> {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut rest = entity;
    loop {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => return Err(MimeError::ParseHeaderEnd),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = next;
        if line.is_empty() {
            return Ok((fields, rest));
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

fn header<'a>(fields: &'a [HeaderField], name: &str) -> Option<&'a str> {
    fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.as_str())
}

/// `text/plain; charset="x"` into `("text/plain", [("charset", "x")])`.
fn split_params(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = value.split(';');
    let media_type = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = pieces
        .filter_map(|piece| piece.split_once('='))
        .map(|(name, value)| {
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            (name.trim().to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    (media_type, params)
}

/// The bodies between `--boundary` delimiter lines, each without the line break that
/// precedes the next delimiter.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, MimeError> {
    let delimiter = format!("--{boundary}");
    let mut children = Vec::new();
    let mut current_start: Option<usize> = None;
    let mut offset = 0;
    while offset <= body.len() {
        let end =
            body[offset..].iter().position(|&b| b == b'\n').map_or(body.len(), |p| offset + p);
        let line = &body[offset..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(after) = line.strip_prefix(delimiter.as_bytes()) {
            let after = trim_ascii_end(after);
            let closing = after == b"--";
            if after.is_empty() || closing {
                if let Some(start) = current_start {
                    children.push(strip_line_break(&body[start..offset]));
                }
                if closing {
                    return Ok(children);
                }
                current_start = Some((end + 1).min(body.len()));
            }
        }
        offset = end + 1;
    }
    Err(MimeError::ParseClosingDelimiter { boundary: boundary.to_owned() })
}

fn strip_line_break(part: &[u8]) -> &[u8] {
    let part = part.strip_suffix(b"\n").unwrap_or(part);
    part.strip_suffix(b"\r").unwrap_or(part)
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_through_our_parser() {
        let binary: Vec<u8> = (0..=255).collect();
        let parts: [(&str, &str, &[u8]); 3] = [
            ("text/cloud-config", "a.yaml", b"#cloud-config\nhostname: a\n"),
            ("text/x-shellscript", "b.sh", b"#!/bin/sh\necho no newline at end"),
            ("application/octet-stream", "c.bin", &binary),
        ];
        let message = multipart(&parts).expect("valid parts");
        let parsed = parse_mime(&message).expect("our own output parses");
        assert_eq!(parsed.len(), 3);
        for (got, (content_type, _, body)) in parsed.iter().zip(parts) {
            assert_eq!(got.content_type, content_type);
            assert_eq!(got.body, body);
        }
    }

    #[test]
    fn boundary_is_absent_from_every_part() {
        // Parts that contain the first two candidates force the third.
        let seed = b"seed";
        let first = boundary_candidate(seed, 0);
        let second = boundary_candidate(seed, 1);
        let body_a = format!("x\n--{first}\n");
        let body_b = format!("--{second}--");
        let parts: [(&str, &str, &[u8]); 2] =
            [("text/plain", "a", body_a.as_bytes()), ("text/plain", "b", body_b.as_bytes())];
        assert_eq!(first_free_boundary(seed, &parts), boundary_candidate(seed, 2));

        let message = multipart(&parts).expect("valid");
        let parsed = parse_mime(&message).expect("parses");
        assert_eq!(parsed[0].body, body_a.as_bytes());
        assert_eq!(parsed[1].body, body_b.as_bytes());
    }

    #[test]
    fn header_injection_in_filename_is_rejected() {
        let err = multipart(&[("text/plain", "a\"\nX-Evil: 1", b"x")]).expect_err("bad name");
        assert!(matches!(err, MimeError::CheckFilename { index: 0, .. }));
    }

    #[test]
    fn quoted_printable_is_rejected() {
        let message = b"Content-Type: multipart/mixed; boundary=b\nMIME-Version: 1.0\n\n--b\n\
            Content-Type: text/x-shellscript\nContent-Transfer-Encoding: quoted-printable\n\n\
            #!/bin/sh\n--b--\n";
        assert!(matches!(parse_mime(message), Err(MimeError::CheckTransferEncoding { .. })));
    }

    #[test]
    fn missing_closing_delimiter_is_rejected() {
        let message = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n";
        assert!(matches!(parse_mime(message), Err(MimeError::ParseClosingDelimiter { .. })));
    }
}
