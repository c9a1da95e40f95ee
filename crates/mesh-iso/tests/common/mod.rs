//! Shared helpers of the integration tests: running the independent readers, walking
//! trees into comparable listings, and parsing the readers' listings.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// Runs a reader and returns its stdout; panics naming the tool if it is missing or fails.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).env("LC_ALL", "C.UTF-8").output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}); install it (Debian: xorriso, genisoimage, util-linux, libarchive-tools)")
    });
    assert!(
        out.status.success(),
        "`{tool} {}` failed: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry as read back, with as many attributes as the reader provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Size of regular files.
    pub size: Option<u64>,
    pub target: Option<String>,
    pub sha256: Option<String>,
    /// Modification time of regular files.
    pub mtime: Option<i64>,
}

pub type Listing = BTreeMap<String, Entry>;

/// Walks `root` (not following links) into a listing keyed by relative path.
pub fn walk(root: &Path) -> Listing {
    let mut out = BTreeMap::new();
    walk_into(root, root, &mut out);
    out
}

fn walk_into(root: &Path, dir: &Path, out: &mut Listing) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    for path in names {
        let rel = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let ft = meta.file_type();
        let mut entry = Entry {
            kind: Kind::File,
            mode: meta.mode() & 0o7777,
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
            size: None,
            target: None,
            sha256: None,
            mtime: None,
        };
        if ft.is_dir() {
            entry.kind = Kind::Dir;
            walk_into(root, &path, out);
        } else if ft.is_symlink() {
            entry.kind = Kind::Symlink;
            entry.mode = 0o777;
            entry.target = Some(fs::read_link(&path).expect("readlink").to_string_lossy().into());
        } else {
            entry.size = Some(meta.len());
            entry.sha256 = Some(sha256_file(&path));
            entry.mtime = Some(meta.mtime());
        }
        out.insert(rel, entry);
    }
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).expect("open for hashing");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read for hashing");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Which attributes a comparison looks at (readers differ in what they report).
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub mode: bool,
    pub owner: bool,
    pub size: bool,
    pub target: bool,
    pub content: bool,
    pub mtime: bool,
}

impl Compare {
    pub const ALL: Compare =
        Compare { mode: true, owner: true, size: true, target: true, content: true, mtime: true };
}

/// Asserts `actual` has exactly the paths of `expected` with the same attributes (as far
/// as `what` looks), listing every difference.
pub fn assert_same(reader: &str, expected: &Listing, actual: &Listing, what: Compare) {
    let mut diffs = Vec::new();
    for (path, want) in expected {
        let Some(got) = actual.get(path) else {
            diffs.push(format!("missing: {path}"));
            continue;
        };
        let mut check = |name: &str, on: bool, w: String, g: String| {
            if on && w != g {
                diffs.push(format!("{path}: {name} expected {w}, got {g}"));
            }
        };
        check("type", true, format!("{:?}", want.kind), format!("{:?}", got.kind));
        if want.kind != Kind::Symlink {
            check("mode", what.mode, format!("{:o}", want.mode), format!("{:o}", got.mode));
        }
        check("uid", what.owner, format!("{:?}", want.uid), format!("{:?}", got.uid));
        check("gid", what.owner, format!("{:?}", want.gid), format!("{:?}", got.gid));
        check("size", what.size, format!("{:?}", want.size), format!("{:?}", got.size));
        check("target", what.target, format!("{:?}", want.target), format!("{:?}", got.target));
        check("sha256", what.content, format!("{:?}", want.sha256), format!("{:?}", got.sha256));
        check("mtime", what.mtime, format!("{:?}", want.mtime), format!("{:?}", got.mtime));
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            diffs.push(format!("unexpected: {path}"));
        }
    }
    assert!(diffs.is_empty(), "{reader} disagrees with the source tree:\n{}", diffs.join("\n"));
}

/// Parses `ls -l` style permissions (`drwxr-sr-x`) into a kind and permission bits.
pub fn parse_perms(perms: &str) -> (Kind, u32) {
    let b = perms.as_bytes();
    let kind = match b[0] {
        b'd' => Kind::Dir,
        b'l' => Kind::Symlink,
        b'-' => Kind::File,
        other => panic!("unexpected file type {:?} in {perms}", other as char),
    };
    let mut mode = 0;
    for (i, bit) in
        [0o400, 0o200, 0o100, 0o040, 0o020, 0o010, 0o004, 0o002, 0o001].iter().enumerate()
    {
        let c = b[1 + i];
        if c != b'-' && c != b'S' && c != b'T' {
            mode |= bit;
        }
    }
    if matches!(b[3], b's' | b'S') {
        mode |= 0o4000;
    }
    if matches!(b[6], b's' | b'S') {
        mode |= 0o2000;
    }
    if matches!(b[9], b't' | b'T') {
        mode |= 0o1000;
    }
    (kind, mode)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).unwrap_or(s).to_owned()
}

/// Lists an image with `xorriso -indev IMG -find / -exec lsdl`.
pub fn xorriso_listing(image: &Path) -> Listing {
    let text = run(
        "xorriso",
        &[
            "-abort_on",
            "FAILURE",
            "-indev",
            &image.to_string_lossy(),
            "-find",
            "/",
            "-exec",
            "lsdl",
        ],
    );
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !line.contains('\'') {
            continue;
        }
        let (kind, mode) = parse_perms(fields[0]);
        // Everything after the 8 fields (perms, links, uid, gid, size, 3 date parts).
        let rest = &line[line.find('\'').expect("quoted path")..];
        let (path, target) = match rest.split_once("' -> '") {
            Some((p, t)) => (unquote(&format!("{p}'")), Some(unquote(&format!("'{t}")))),
            None => (unquote(rest), None),
        };
        if path == "/" {
            continue;
        }
        let entry = Entry {
            kind,
            mode: if kind == Kind::Symlink { 0o777 } else { mode },
            uid: Some(fields[2].parse().expect("uid")),
            gid: Some(fields[3].parse().expect("gid")),
            size: (kind == Kind::File).then(|| fields[4].parse().expect("size")),
            target,
            sha256: None,
            mtime: None,
        };
        out.insert(path.trim_start_matches('/').to_owned(), entry);
    }
    out
}

/// One entry of an `isoinfo -l` listing (with `-R`, `-J` or neither).
#[derive(Debug, Clone)]
pub struct IsoinfoEntry {
    pub dir: String,
    pub name: String,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub lba: u64,
    pub target: Option<String>,
}

/// Lists an image with `isoinfo -l -i IMG` plus `extra` (`-R`, `-J`, or nothing).
pub fn isoinfo_entries(image: &Path, extra: &[&str]) -> Vec<IsoinfoEntry> {
    let mut args = vec!["-l"];
    args.extend_from_slice(extra);
    let img = image.to_string_lossy();
    args.extend_from_slice(&["-i", &img]);
    let text = run("isoinfo", &args);
    let mut dir = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("Directory listing of ") {
            dir = d.trim_end().trim_end_matches('/').trim_start_matches('/').to_owned();
            continue;
        }
        // `PERMS LINKS UID GID SIZE MON DAY YEAR [ LBA FLAGS]  NAME `; for multi-extent
        // records isoinfo prints the flags as `FFFF` and loses the `]`.
        let Some(open) = line.find('[') else { continue };
        let fields: Vec<&str> = line[..open].split_whitespace().collect();
        if fields.len() != 8 {
            continue;
        }
        let after = line[open + 1..].trim_start();
        let Some((lba, after)) = after.split_once(' ') else { continue };
        let after = after.trim_start();
        let flags_end = after.find([']', ' ']).unwrap_or(after.len());
        let after = &after[flags_end..];
        let raw = after.strip_prefix("]  ").or_else(|| after.strip_prefix(' ')).unwrap_or(after);
        let raw = raw.strip_suffix(' ').unwrap_or(raw);
        let (name, target) = match raw.split_once(" -> ") {
            Some((n, t)) => (n.to_owned(), Some(t.to_owned())),
            None => (raw.to_owned(), None),
        };
        if name == "." || name == ".." || name == "\u{0}" || name == "\u{1}" {
            continue;
        }
        let (kind, mode) = if extra.contains(&"-R") {
            parse_perms(fields[0])
        } else if fields[0].starts_with('d') {
            (Kind::Dir, 0)
        } else {
            (Kind::File, 0)
        };
        out.push(IsoinfoEntry {
            dir: dir.clone(),
            name,
            kind,
            mode,
            size: fields[4].parse().expect("size"),
            lba: lba.parse().expect("lba"),
            target,
        });
    }
    out
}

/// Turns isoinfo entries into a listing (directory sizes dropped).
pub fn isoinfo_listing(entries: &[IsoinfoEntry]) -> Listing {
    let mut out = BTreeMap::new();
    for e in entries {
        let path = if e.dir.is_empty() { e.name.clone() } else { format!("{}/{}", e.dir, e.name) };
        let entry = Entry {
            kind: e.kind,
            mode: if e.kind == Kind::Symlink { 0o777 } else { e.mode },
            uid: None,
            gid: None,
            size: (e.kind == Kind::File).then_some(e.size),
            target: e.target.clone(),
            sha256: None,
            mtime: None,
        };
        let previous = out.insert(path.clone(), entry);
        assert!(previous.is_none(), "isoinfo lists {path} twice");
    }
    out
}

/// Extracts an image with `osirrox -indev IMG -extract / DIR`.
pub fn osirrox_extract(image: &Path, dir: &Path) {
    run(
        "osirrox",
        &[
            "-abort_on",
            "FAILURE",
            "-indev",
            &image.to_string_lossy(),
            "-extract",
            "/",
            &dir.to_string_lossy(),
        ],
    );
}

/// Extracts an image with `bsdtar -xpf IMG -C DIR` (libarchive's reader).
pub fn bsdtar_extract(image: &Path, dir: &Path) {
    fs::create_dir_all(dir).expect("create extraction dir");
    run("bsdtar", &["-xpf", &image.to_string_lossy(), "-C", &dir.to_string_lossy()]);
}

/// `blkid -p -o export IMG` as key/value pairs.
pub fn blkid(image: &Path) -> BTreeMap<String, String> {
    let text = run("blkid", &["-p", "-o", "export", &image.to_string_lossy()]);
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("\\ ", " ")))
        .collect()
}
