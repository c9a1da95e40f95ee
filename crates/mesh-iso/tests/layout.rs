//! The bytes of an image are part of what we promise (same input, same image, across
//! versions too): this pins an in-memory tree with every special case of the layout to the
//! image the writer made before directories were listed on demand while writing. A change
//! here must be deliberate, and its reason written in the commit.

use mesh_iso::{write_iso, IsoOptions, IsoTree};
use sha2::{Digest, Sha256};

/// Entries added out of order, 8.3 collisions, a directory of several sectors, a name long
/// enough for a continuation area, a symbolic link, an empty directory and two branches
/// deep enough to be relocated.
fn tree() -> IsoTree {
    let mut t = IsoTree::new();
    t.add_file_bytes("z/last.txt", b"z".to_vec(), 0o644).expect("add");
    t.add_file_bytes("a/first.txt", b"a".to_vec(), 0o600).expect("add");
    t.add_symlink("a/link", "../z/last.txt").expect("add");
    t.add_dir("m/empty", 0o700).expect("add");
    for i in (0..200).rev() {
        let name = format!("many/entry-{i:03}-long-name.data");
        t.add_file_bytes(&name, vec![i as u8; i], 0o644).expect("add");
    }
    t.add_file_bytes(&format!("{}.txt", "q".repeat(200)), b"q".to_vec(), 0o644).expect("add");
    t.add_file_bytes("d/d/d/d/d/d/d/d/d/d/d", b"deep".to_vec(), 0o644).expect("add");
    t.add_file_bytes("b/c/d/e/f/g/h/i/j/k", b"deep2".to_vec(), 0o644).expect("add");
    t
}

fn sha256(tree: &IsoTree, opts: &IsoOptions) -> (String, usize) {
    let mut image = Vec::new();
    write_iso(tree, opts, &mut image).expect("write");
    (hex::encode(Sha256::digest(&image)), image.len())
}

#[test]
fn in_memory_layout_is_byte_for_byte_what_it_was() {
    let mut opts = IsoOptions::new("cmp");
    opts.timestamp = Some(1_700_000_000);
    assert_eq!(
        sha256(&tree(), &opts),
        ("da1aededb803502ef0198098a834a080ba4f3cd9da3f195ce055102ffa4374dd".to_owned(), 618_496)
    );
    opts.joliet = false;
    assert_eq!(
        sha256(&tree(), &opts),
        ("9e360cec392a95e000a1f2815ccb7e799213d4e687f9cae2930dceaa89777054".to_owned(), 544_768)
    );
}
