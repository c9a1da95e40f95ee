//! `ImageStore::pull` against a loopback HTTP server laid out like cloud.debian.org: a good
//! download is cached (and checked with `sha512sum` and `qemu-img info`), while a wrong
//! checksum, a 404, a truncated body and a list without the file each fail with a clear
//! error and leave nothing in the store.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use mesh_core::image::{Arch, BootMode, ImageError, ImageFormat, ImageStore};

/// What the server does for one path.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Announces the full length, sends only the first half, then closes.
    Truncated(Vec<u8>),
}

type Routes = Arc<Mutex<HashMap<String, Reply>>>;

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, 404 for unknown paths.
fn serve() -> (String, Routes) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let routes: Routes = Arc::default();
    let served = routes.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let reply = served.lock().expect("routes").get(&path).cloned();
            let _ = match reply {
                Some(Reply::Body(body)) => stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&body)),
                Some(Reply::Truncated(body)) => stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&body[..body.len() / 2])),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
                ),
            };
        }
    });
    (base, routes)
}

/// A small but real qcow2 file, made by qemu-img.
fn fake_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("made.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("16M")
        .status()
        .expect("qemu-img is needed: apt-get install -y --no-install-recommends qemu-utils");
    assert!(status.success());
    std::fs::read(&path).expect("read the fake image")
}

fn sha512_hex(path: &Path) -> String {
    let out = Command::new("sha512sum").arg(path).output().expect("sha512sum (coreutils)");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("digest").to_owned()
}

const FILE: &str = "debian-12-genericcloud-amd64.qcow2";
const DIR: &str = "/images/bookworm/latest";

/// The entries of the store directory that are images or leftovers (the build lock and
/// `current-*` links aside, every entry is one).
fn store_entries(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.root())
        .expect("read store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn pull_caches_a_verified_image_and_refuses_bad_downloads() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = fake_image(work.path());
    let image_file = work.path().join(FILE);
    std::fs::write(&image_file, &image).expect("write");
    let good_sum = sha512_hex(&image_file);

    let (server, routes) = serve();
    let mirror = format!("{server}/images");
    let list = |digest: &str| format!("{digest}  {FILE}\n{}  other.qcow2\n", "0".repeat(128));
    let set = |path: &str, reply: Reply| {
        routes.lock().expect("routes").insert(format!("{DIR}/{path}"), reply);
    };
    let store = ImageStore::open(&work.path().join("store")).expect("open store");

    // No SHA512SUMS at all: a 404.
    let err = store.pull("debian-12", Arch::X86_64, &mirror).expect_err("404");
    assert!(
        matches!(&err, ImageError::Download { problem, .. } if problem.contains("404")),
        "{err}"
    );
    assert!(store_entries(&store).is_empty(), "{:?}", store_entries(&store));

    // The list names the image, but the image itself is missing.
    set("SHA512SUMS", Reply::Body(list(&good_sum).into_bytes()));
    let err = store.pull("debian-12", Arch::X86_64, &mirror).expect_err("image 404");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(err.to_string().contains(FILE), "{err}");
    assert!(store_entries(&store).is_empty(), "{:?}", store_entries(&store));

    // Truncated body.
    set(FILE, Reply::Truncated(image.clone()));
    let err = store.pull("debian-12", Arch::X86_64, &mirror).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(store_entries(&store).is_empty(), "{:?}", store_entries(&store));

    // Wrong checksum.
    set(FILE, Reply::Body(image.clone()));
    set("SHA512SUMS", Reply::Body(list(&"ab".repeat(64)).into_bytes()));
    let err = store.pull("debian-12", Arch::X86_64, &mirror).expect_err("mismatch");
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
    assert!(store_entries(&store).is_empty(), "{:?}", store_entries(&store));

    // The list does not name the file.
    set("SHA512SUMS", Reply::Body(format!("{good_sum}  something-else.qcow2\n").into_bytes()));
    let err = store.pull("debian-12", Arch::X86_64, &mirror).expect_err("not listed");
    assert!(matches!(err, ImageError::ChecksumMissing { .. }), "{err}");
    assert!(store_entries(&store).is_empty(), "{:?}", store_entries(&store));

    // A good download is cached, verified, and becomes current.
    set("SHA512SUMS", Reply::Body(list(&good_sum).into_bytes()));
    let pulled = store.pull("debian-12", Arch::X86_64, &mirror).expect("good pull");
    assert_eq!(pulled.manifest.boot, BootMode::Firmware);
    assert_eq!(pulled.manifest.disk_format, ImageFormat::Qcow2);
    assert_eq!(sha512_hex(&pulled.disk_path()), good_sum);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(pulled.disk_path())
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["format"], "qcow2");
    pulled.verify().expect("sha256 matches the manifest");
    assert_eq!(store.get(Arch::X86_64).expect("get"), Some(pulled.clone()));
    assert_eq!(store.list().expect("list").len(), 1);

    // Pulling again reuses the cached copy (the image route is gone, so a download would fail).
    routes.lock().expect("routes").remove(&format!("{DIR}/{FILE}"));
    let again = store.pull("bookworm", Arch::X86_64, &mirror).expect("cached pull");
    assert_eq!(again.manifest.id, pulled.manifest.id);

    let err = store.pull("debian-13", Arch::X86_64, &mirror).expect_err("unknown release");
    assert!(matches!(err, ImageError::UnknownRelease { .. }));
}
