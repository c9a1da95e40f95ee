//! NoCloud `meta-data`: the instance-id (which decides whether a boot is a first boot) and the
//! local host name.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::yaml::{self, YamlError};

/// Keys cloud-init's NoCloud datasource reads from meta-data.
const KNOWN_KEYS: [&str; 7] = [
    "instance-id",
    "local-hostname",
    "hostname",
    "public-keys",
    "network-interfaces",
    "dsmode",
    "seedfrom",
];

/// When cloud-init applies a NoCloud seed (meta-data `dsmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DsMode {
    /// In cloud-init's local stage, before networking is up: the whole init stage (user-data,
    /// network configuration, init modules) runs there, and the network stage finds nothing
    /// left to do.
    Local,
    /// In cloud-init's network stage, NoCloud's default.
    Net,
}

impl DsMode {
    /// The word meta-data holds.
    pub fn as_str(self) -> &'static str {
        match self {
            DsMode::Local => "local",
            DsMode::Net => "net",
        }
    }
}

/// The meta-data document.
///
/// # Examples
/// ```
/// let md = mesh_cloudinit::MetaData {
///     instance_id: "iid-0123456789abcdef".into(),
///     local_hostname: "node-1".into(),
///     dsmode: None,
/// };
/// assert_eq!(md.render().unwrap(), "instance-id: iid-0123456789abcdef\nlocal-hostname: node-1\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaData {
    /// Identity of this instance's configuration: cloud-init runs its once-per-instance
    /// modules again whenever it changes.
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// Host name the guest takes early in boot.
    #[serde(rename = "local-hostname")]
    pub local_hostname: String,
    /// When the seed is applied; cloud-init's default (`net`) when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsmode: Option<DsMode>,
}

/// What is wrong with a meta-data document.
#[derive(Debug, thiserror::Error)]
pub enum MetaDataError {
    /// The document is not UTF-8 text.
    #[error("meta-data is not UTF-8 text")]
    Decode(#[source] std::str::Utf8Error),
    /// The YAML does not parse or is not a mapping (the cause names the document).
    #[error(transparent)]
    Parse(YamlError),
    /// A key differs from a key cloud-init reads only in case or punctuation, so cloud-init
    /// would ignore it.
    #[error("meta-data key {key:?} is not read by cloud-init; did you mean {expected:?}?")]
    CheckNearMissKey {
        /// The key found.
        key: String,
        /// The key cloud-init reads.
        expected: &'static str,
    },
    /// `instance-id` is absent.
    #[error("meta-data has no instance-id")]
    CheckInstanceIdMissing,
    /// `instance-id` is empty, not a string, or unusable as a directory name.
    #[error("meta-data instance-id {found} must be a non-empty string without '/' or control characters")]
    CheckInstanceId {
        /// What was found, as JSON.
        found: String,
    },
    /// `local-hostname` is not a string.
    #[error("meta-data local-hostname {found} must be a string")]
    CheckLocalHostname {
        /// What was found, as JSON.
        found: String,
    },
    /// Writing the YAML failed.
    #[error("cannot write meta-data")]
    Emit(#[source] YamlError),
}

impl MetaData {
    /// Writes the document as YAML.
    pub fn render(&self) -> Result<String, MetaDataError> {
        if !is_usable_instance_id(&self.instance_id) {
            return Err(MetaDataError::CheckInstanceId {
                found: Value::String(self.instance_id.clone()).to_string(),
            });
        }
        yaml::to_yaml("meta-data", self).map_err(MetaDataError::Emit)
    }
}

/// Checks a user-supplied meta-data document and returns its instance-id.
///
/// The id must be a string as cloud-init's reader sees it: an unquoted `instance-id: 12:30` is
/// the number 750 to PyYAML (YAML 1.1), so it is refused, and quoting it is the fix.
pub fn validate_meta_data(bytes: &[u8]) -> Result<String, MetaDataError> {
    // A leading byte-order mark is skipped by the reader, as by PyYAML.
    let text = std::str::from_utf8(bytes).map_err(MetaDataError::Decode)?;
    let map = yaml::parse_mapping("meta-data", text).map_err(MetaDataError::Parse)?;

    check_near_miss_keys(&map)?;
    if let Some(hostname) = map.get("local-hostname") {
        if !hostname.is_string() {
            return Err(MetaDataError::CheckLocalHostname { found: hostname.to_string() });
        }
    }
    match map.get("instance-id") {
        None => Err(MetaDataError::CheckInstanceIdMissing),
        Some(Value::String(id)) if is_usable_instance_id(id) => Ok(id.clone()),
        Some(other) => Err(MetaDataError::CheckInstanceId { found: other.to_string() }),
    }
}

fn check_near_miss_keys(map: &Map<String, Value>) -> Result<(), MetaDataError> {
    for key in map.keys() {
        if KNOWN_KEYS.contains(&key.as_str()) {
            continue;
        }
        let folded = fold_key(key);
        if let Some(expected) = KNOWN_KEYS.iter().find(|known| fold_key(known) == folded) {
            return Err(MetaDataError::CheckNearMissKey { key: key.clone(), expected });
        }
    }
    Ok(())
}

/// Lower-case letters and digits only: `Instance_ID` and `instance-id` fold alike.
fn fold_key(key: &str) -> String {
    key.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// cloud-init makes `/var/lib/cloud/instances/<instance-id>`, so the id must be a file name.
pub(crate) fn is_usable_instance_id(id: &str) -> bool {
    !id.trim().is_empty()
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_that_yaml_11_reads_as_a_number_is_refused() {
        for text in ["instance-id: 12:30\n", "instance-id: 0755\n", "instance-id: yes\n"] {
            let error = validate_meta_data(text.as_bytes()).expect_err(text);
            assert!(matches!(error, MetaDataError::CheckInstanceId { .. }), "{text}: {error:?}");
        }
        let id = validate_meta_data(b"instance-id: '12:30'\n").expect("quoted");
        assert_eq!(id, "12:30");
    }

    #[test]
    fn instance_id_is_returned() {
        let id = validate_meta_data(b"instance-id: iid-1\nlocal-hostname: a\n").expect("valid");
        assert_eq!(id, "iid-1");
    }

    #[test]
    fn underscore_instance_id_is_a_near_miss() {
        let err = validate_meta_data(b"instance_id: iid-1\n").expect_err("near miss");
        assert!(
            matches!(err, MetaDataError::CheckNearMissKey { expected: "instance-id", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn numeric_instance_id_is_rejected() {
        assert!(matches!(
            validate_meta_data(b"instance-id: 42\n"),
            Err(MetaDataError::CheckInstanceId { .. })
        ));
    }

    #[test]
    fn missing_instance_id_is_rejected() {
        assert!(matches!(
            validate_meta_data(b"local-hostname: a\n"),
            Err(MetaDataError::CheckInstanceIdMissing)
        ));
    }
}
