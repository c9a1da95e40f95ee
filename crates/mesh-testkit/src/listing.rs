//! File-tree listings, from the Linux kernel's view of an image or from a host directory, in
//! one shape so that tests can compare them.
//!
//! The kernel reader boots a guest, mounts the image read-only with the requested file system
//! and options, and describes every entry with busybox (`find`, `stat`, `readlink`,
//! `sha256sum`). Names and link targets travel hex-encoded, so any byte in a name survives the
//! serial console; each entry's `stat` line carries no name at all.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};

use crate::guest::run_guest;
use crate::Arch;

/// How long a kernel listing may take, boot included.
const LIST_TIMEOUT: Duration = Duration::from_secs(120);

/// One file-system entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Path relative to the listed root, `/`-separated, without a leading `./`.
    pub path: String,
    /// `f` regular file, `d` directory, `l` symbolic link; `c`, `b`, `p`, `s` for the rest.
    pub kind: char,
    /// Permission bits, including setuid, setgid and sticky (`0o755`).
    pub mode: u32,
    /// Bytes of content for a file, of target for a link; 0 for everything else (a
    /// directory's size is an artefact of the file system).
    pub size: u64,
    /// The target of a symbolic link.
    pub link_target: Option<String>,
    /// Lower-case hex SHA-256 of a regular file's content.
    pub sha256: Option<String>,
}

/// The guest script that lists the mounted tree. `find` hands batches of entries to
/// `describe`, which appends, in argument order: a `stat` line per entry (mode in hex, size),
/// each entry's name and link target NUL-terminated, and `sha256sum` lines for the regular
/// files among them (one process per batch, not per file). Names and sums are dumped
/// hex-encoded, so a name with a newline or any other byte cannot break the parsing.
const LIST_SCRIPT: &str = r#"
set -e
mkdir -p /mnt/image
mount -t "$FSTYPE" -o "$OPTIONS" /dev/vda /mnt/image
cd /mnt/image
cat > /tmp/describe <<'EOF'
set -e
stat -c '%f %s' "$@" >> /tmp/stat
for p do
  shift
  t=
  if [ -L "$p" ]; then t=$(readlink "$p"); elif [ -f "$p" ]; then set -- "$@" "$p"; fi
  printf '%s\0%s\0' "$p" "$t" >> /tmp/names
done
if [ $# -gt 0 ]; then sha256sum "$@" >> /tmp/sums; fi
EOF
: > /tmp/stat
: > /tmp/names
: > /tmp/sums
find . -mindepth 1 -exec sh /tmp/describe {} +
echo '@@stat'
cat /tmp/stat
echo '@@names'
xxd -p /tmp/names
echo '@@sums'
xxd -p /tmp/sums
echo '@@done'
"#;

/// Lists every entry of `image` as the guest kernel sees it, mounted read-only with file
/// system `fstype` (`iso9660`, `vfat`, `ext2`, ...) and mount `options` (`ro`, `ro,norock`,
/// `ro,norock,nojoliet`, ...), sorted by path.
///
/// The root directory itself is not listed.
///
/// FIXME: the volume label as the kernel sees it is not reported: busybox has no `blkid` and
/// the guest has no udev for `/dev/disk/by-label`. Matters for tests of labels, which use
/// `blkid -p` on the host meanwhile.
pub fn kernel_list(
    arch: Arch,
    image: &Path,
    fstype: &str,
    options: &str,
) -> anyhow::Result<Vec<Entry>> {
    for (what, value) in [("fstype", fstype), ("options", options)] {
        ensure!(
            value.bytes().all(|b| b.is_ascii_alphanumeric() || b"=,_-.".contains(&b)),
            "{what} {value:?} has characters not allowed in a mount option"
        );
    }
    let script = format!("FSTYPE='{fstype}'\nOPTIONS='{options}'\n{LIST_SCRIPT}");
    let output =
        run_guest(arch, &[image.to_path_buf()], &script, LIST_TIMEOUT).with_context(|| {
            format!("listing {} as {fstype} ({options}) in a guest", image.display())
        })?;
    parse_listing(&output)
}

/// Parses what [`LIST_SCRIPT`] printed.
fn parse_listing(output: &str) -> anyhow::Result<Vec<Entry>> {
    let section = |start: &str, end: &str| -> anyhow::Result<&str> {
        let from = output.find(start).with_context(|| format!("no {start} in:\n{output}"))?;
        let rest = &output[from + start.len()..];
        let to = rest.find(end).with_context(|| format!("no {end} in:\n{output}"))?;
        Ok(&rest[..to])
    };
    let hex_section = |start: &str, end: &str| -> anyhow::Result<Vec<u8>> {
        let text: String = section(start, end)?.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(&text).with_context(|| format!("{start} is not valid hex"))
    };
    let stats: Vec<&str> =
        section("@@stat\n", "@@names\n")?.lines().filter(|line| !line.is_empty()).collect();
    let names = hex_section("@@names\n", "@@sums\n")?;
    let sums = hex_section("@@sums\n", "@@done")?;
    let mut fields = names.split(|byte| *byte == 0);
    let mut sums = SumReader { bytes: &sums };

    let mut entries = Vec::with_capacity(stats.len());
    for stat in stats {
        let (Some(name), Some(target)) = (fields.next(), fields.next()) else {
            bail!("fewer names than stat lines in the listing");
        };
        let (raw_mode, size) = stat.split_once(' ').context("stat line without a size")?;
        let raw_mode = u32::from_str_radix(raw_mode, 16)
            .with_context(|| format!("bad mode in stat line {stat:?}"))?;
        let size: u64 = size.trim().parse().with_context(|| format!("bad size in {stat:?}"))?;
        let kind = kind_of(raw_mode);
        let sha256 = if kind == 'f' { Some(sums.next_for(name)?) } else { None };
        let name = name.strip_prefix(b"./").unwrap_or(name);
        entries.push(Entry {
            path: String::from_utf8(name.to_vec()).context("entry name is not UTF-8")?,
            kind,
            mode: raw_mode & 0o7777,
            size: if kind == 'f' || kind == 'l' { size } else { 0 },
            link_target: (kind == 'l')
                .then(|| String::from_utf8(target.to_vec()))
                .transpose()
                .context("link target is not UTF-8")?,
            sha256,
        });
    }
    ensure!(
        fields.next().is_none_or(<[u8]>::is_empty) && fields.next().is_none(),
        "more names than stat lines in the listing"
    );
    ensure!(sums.bytes.is_empty(), "more sha256sum lines than regular files in the listing");
    entries.sort();
    Ok(entries)
}

/// Reads `sha256sum` output for files whose names are known in advance: busybox writes names
/// raw, so a name may hold a newline; knowing it, the record's end is certain anyway.
struct SumReader<'a> {
    bytes: &'a [u8],
}

impl SumReader<'_> {
    /// The hash from the next record, which must be `<64 hex>  <name>\n`.
    fn next_for(&mut self, name: &[u8]) -> anyhow::Result<String> {
        let record_len = 64 + 2 + name.len() + 1;
        ensure!(self.bytes.len() >= record_len, "sha256sum output ends before {name:?}");
        let (record, rest) = self.bytes.split_at(record_len);
        let (hash, tail) = record.split_at(64);
        ensure!(
            hash.iter().all(u8::is_ascii_hexdigit)
                && tail.starts_with(b"  ")
                && &tail[2..tail.len() - 1] == name
                && tail.ends_with(b"\n"),
            "unexpected sha256sum record {:?} for {name:?}",
            String::from_utf8_lossy(record)
        );
        self.bytes = rest;
        Ok(String::from_utf8_lossy(hash).to_ascii_lowercase())
    }
}

/// The kind letter for the file-type bits of a mode.
fn kind_of(mode: u32) -> char {
    match mode & 0o170_000 {
        0o100_000 => 'f',
        0o040_000 => 'd',
        0o120_000 => 'l',
        0o020_000 => 'c',
        0o060_000 => 'b',
        0o010_000 => 'p',
        0o140_000 => 's',
        _ => '?',
    }
}

/// Lists every entry below `dir` on the host, in the same shape as [`kernel_list`], sorted
/// by path. Symbolic links are listed, not followed.
pub fn host_list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut entries = BTreeMap::new();
    walk(dir, dir, &mut entries)?;
    Ok(entries.into_values().collect())
}

fn walk(root: &Path, dir: &Path, entries: &mut BTreeMap<String, Entry>) -> anyhow::Result<()> {
    for child in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = child?.path();
        let relative = path.strip_prefix(root).context("walk stays below its root")?;
        let name = String::from_utf8(relative.as_os_str().as_bytes().to_vec())
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let kind = kind_of(meta.mode());
        let (size, link_target, sha256) = match kind {
            'f' => {
                let contents =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                (meta.len(), None, Some(hex::encode(Sha256::digest(&contents))))
            }
            'l' => {
                let target =
                    fs::read_link(&path).with_context(|| format!("readlink {}", path.display()))?;
                let target = String::from_utf8(target.as_os_str().as_bytes().to_vec())
                    .with_context(|| format!("target of {} is not UTF-8", path.display()))?;
                (meta.len(), Some(target), None)
            }
            _ => (0, None, None),
        };
        if kind == 'd' {
            walk(root, &path, entries)?;
        }
        let mode = meta.permissions().mode() & 0o7777;
        entries.insert(name.clone(), Entry { path: name, kind, mode, size, link_target, sha256 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(stat: &str, names: &[u8], sums: &[u8]) -> String {
        format!(
            "@@stat\n{stat}@@names\n{}\n@@sums\n{}\n@@done\n",
            hex::encode(names),
            hex::encode(sums)
        )
    }

    #[test]
    fn listing_output_is_parsed_with_binary_safe_names() {
        let hash = "ab".repeat(32);
        let names = [&b"./d\0\0"[..], b"./d/a\nb\0\0", b"./l x\0d/a\nb\0"].concat();
        let sums = format!("{hash}  ./d/a\nb\n");
        let output = listing("41ed 2048\n81a4 3\na1ff 5\n", &names, sums.as_bytes());
        let entries = parse_listing(&output).expect("parses");
        let entry = |path: &str, kind, mode, size, link: Option<&str>, sha: Option<&str>| Entry {
            path: path.into(),
            kind,
            mode,
            size,
            link_target: link.map(Into::into),
            sha256: sha.map(Into::into),
        };
        assert_eq!(
            entries,
            [
                entry("d", 'd', 0o755, 0, None, None),
                entry("d/a\nb", 'f', 0o644, 3, None, Some(&hash)),
                entry("l x", 'l', 0o777, 5, Some("d/a\nb"), None),
            ]
        );
    }

    #[test]
    fn mismatched_listing_is_an_error() {
        let hash = "cd".repeat(32);
        let one_file = b"./f\0\0";
        let good_sum = format!("{hash}  ./f\n");
        assert!(parse_listing(&listing("81a4 1\n", one_file, good_sum.as_bytes())).is_ok());
        // A stat line too many, a name too many, a missing or foreign hash, a hash too many.
        assert!(parse_listing(&listing("81a4 1\n41ed 0\n", one_file, good_sum.as_bytes())).is_err());
        assert!(parse_listing(&listing("", one_file, b"")).is_err());
        assert!(parse_listing(&listing("81a4 1\n", one_file, b"")).is_err());
        let other = format!("{hash}  ./g\n");
        assert!(parse_listing(&listing("81a4 1\n", one_file, other.as_bytes())).is_err());
        let twice = good_sum.repeat(2);
        assert!(parse_listing(&listing("81a4 1\n", one_file, twice.as_bytes())).is_err());
    }

    #[test]
    fn host_list_reports_kinds_modes_targets_and_hashes() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("sub/x"), b"abc").expect("write");
        fs::set_permissions(dir.path().join("sub/x"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        std::os::unix::fs::symlink("sub/x", dir.path().join("link")).expect("symlink");

        let entries = host_list(dir.path()).expect("listed");
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["link", "sub", "sub/x"]);
        assert_eq!(entries[0].link_target.as_deref(), Some("sub/x"));
        assert_eq!((entries[1].kind, entries[1].size), ('d', 0));
        assert_eq!((entries[2].mode, entries[2].size), (0o640, 3));
        assert_eq!(
            entries[2].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }
}
