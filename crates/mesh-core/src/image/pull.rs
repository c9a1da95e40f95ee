//! Downloading official Debian cloud images, verified against the published SHA512 list.
//!
//! The layout is the one of <https://cloud.debian.org/images/cloud/>:
//! `<base>/bookworm/latest/debian-12-genericcloud-<debian arch>.qcow2` beside a `SHA512SUMS`
//! list. The list is fetched first; when an image with the listed digest is already cached,
//! nothing else is downloaded. Downloads go into a staging directory, so a failure of any kind
//! (HTTP error, truncation, digest mismatch) leaves nothing in the store.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256, Sha512};

use super::staging::Staging;
use super::tools;
use super::{
    arch_name, debian_arch, now, Arch, BaseImage, BootMode, ImageError, ImageSource, ImageStore,
    Manifest, MANIFEST_VERSION, RELEASE,
};

/// The codename and the file-name version of a release name as users write it.
fn resolve_release(release: &str) -> Result<(&'static str, &'static str), ImageError> {
    match release {
        "debian-12" | "bookworm" | "12" => Ok(("bookworm", "12")),
        _ => Err(ImageError::UnknownRelease { release: release.to_owned() }),
    }
}

/// Downloads, verifies and caches an official image. See [`ImageStore::pull`].
pub(super) fn pull(
    store: &ImageStore,
    release: &str,
    arch: Arch,
    mirror_base_url: &str,
) -> Result<BaseImage, ImageError> {
    let (codename, version) = resolve_release(release)?;
    let curl = tools::require(tools::CURL)?;
    let base = format!("{}/{codename}/latest", mirror_base_url.trim_end_matches('/'));
    let file = format!("debian-{version}-genericcloud-{}.qcow2", debian_arch(arch));
    let list_url = format!("{base}/SHA512SUMS");
    let url = format!("{base}/{file}");

    let staging = Staging::create(&store.root, &format!("pull-{}", arch_name(arch)))?;
    let list_path = staging.path().join("SHA512SUMS");
    download(&curl, &list_url, &list_path)?;
    let list = fs::read_to_string(&list_path).map_err(|source| ImageError::Io {
        step: "read",
        path: list_path.clone(),
        source,
    })?;
    let expected = find_checksum(&list, &file).ok_or_else(|| ImageError::ChecksumMissing {
        list_url: list_url.clone(),
        file: file.clone(),
    })?;
    super::remove_file_if_exists(&list_path)?;

    if let Some(image) = cached(store, arch, &expected)? {
        tracing::info!(id = %image.manifest.id, "the published image is already cached");
        store.set_current(arch, &image.manifest.id)?;
        return Ok(image);
    }

    let part = staging.path().join("download.part");
    download(&curl, &url, &part)?;
    let (size, sha512, sha256) = digests(&part)?;
    if sha512 != expected {
        return Err(ImageError::ChecksumMismatch { url, expected, actual: sha512 });
    }
    let format = super::probe_disk(&part)?;
    let disk = format!("disk.{}", format.as_str());
    let disk_path = staging.path().join(&disk);
    fs::rename(&part, &disk_path).map_err(|source| ImageError::Io {
        step: "rename",
        path: disk_path.clone(),
        source,
    })?;

    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: format!("pull-debian-{version}-{}-{}", arch_name(arch), &sha256[..12]),
        arch,
        release: if codename == RELEASE { RELEASE.to_owned() } else { codename.to_owned() },
        boot: BootMode::Firmware,
        disk,
        disk_format: format,
        disk_size: size,
        sha256,
        recipe_hash: None,
        created: now(),
        kernel_version: None,
        source: ImageSource::Pulled { url, sha512 },
    };
    store.commit(staging, manifest)
}

/// A cached pulled image of `arch` whose download had digest `sha512`.
fn cached(store: &ImageStore, arch: Arch, sha512: &str) -> Result<Option<BaseImage>, ImageError> {
    Ok(store.list()?.into_iter().find(|image| {
        image.manifest.arch == arch
            && matches!(&image.manifest.source, ImageSource::Pulled { sha512: s, .. } if s == sha512)
    }))
}

/// The digest `SHA512SUMS` gives for `file` (lines are `<hex>  <name>`, the name possibly
/// marked binary with `*`).
fn find_checksum(list: &str, file: &str) -> Option<String> {
    list.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let digest = words.next()?;
        let name = words.next()?;
        let name = name.trim_start_matches('*').trim_start_matches("./");
        let valid = digest.len() == 128 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        (name == file && valid).then(|| digest.to_ascii_lowercase())
    })
}

/// Size, SHA-512 and SHA-256 of a file, in one pass.
fn digests(path: &Path) -> Result<(u64, String, String), ImageError> {
    let read_err = |source| ImageError::Io { step: "read", path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mut sha512 = Sha512::new();
    let mut sha256 = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        sha512.update(&buf[..n]);
        sha256.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(sha512.finalize()), hex::encode(sha256.finalize())))
}

/// Downloads `url` to `dest` with curl, turning its failures into one-line errors.
fn download(curl: &Path, url: &str, dest: &Path) -> Result<(), ImageError> {
    let mut command = Command::new(curl);
    command
        .args(["--fail", "--silent", "--show-error", "--location", "--max-redirs", "5"])
        .args(["--proto", "=http,https", "--write-out", "%{http_code}", "--output"])
        .arg(dest)
        .arg(url)
        .stdin(Stdio::null());
    let line = tools::describe(&command);
    tracing::debug!(command = %line, "downloading");
    let output = command.output().map_err(|source| ImageError::Spawn { command: line, source })?;
    if output.status.success() {
        return Ok(());
    }
    let http_code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let curl_says = stderr.lines().last().unwrap_or("").trim_start_matches("curl: ").to_owned();
    // curl exit codes: 22 is an HTTP status of 400 or more, 18 a body shorter than its
    // Content-Length (the connection closed early).
    let problem = match output.status.code() {
        Some(22) => format!("the server answered HTTP {http_code}"),
        Some(18) => format!("the transfer ended early (truncated): {curl_says}"),
        _ => curl_says,
    };
    Err(ImageError::Download { url: url.to_owned(), problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_list_lines_are_matched_by_exact_name() {
        let a = "a".repeat(128);
        let b = "B".repeat(128);
        let list = format!(
            "{a}  debian-12-genericcloud-amd64.qcow2.tar\n{b} *debian-12-genericcloud-amd64.qcow2\n"
        );
        assert_eq!(
            find_checksum(&list, "debian-12-genericcloud-amd64.qcow2"),
            Some("b".repeat(128))
        );
        assert_eq!(find_checksum(&list, "debian-12-genericcloud-arm64.qcow2"), None);
        assert_eq!(find_checksum("short  x\n", "x"), None);
    }

    #[test]
    fn release_names_resolve_to_bookworm() {
        assert_eq!(resolve_release("debian-12").expect("known").0, "bookworm");
        assert!(matches!(resolve_release("debian-13"), Err(ImageError::UnknownRelease { .. })));
    }
}
