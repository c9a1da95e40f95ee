//! Writes an image of a directory: `cargo run -p mesh-iso --example mkiso -- DIR OUT [LABEL]`.
//! Set `SOURCE_DATE_EPOCH` for reproducible bytes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: mkiso DIR OUT [LABEL]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let label =
        args.next().map_or_else(|| "CDROM".to_owned(), |l| l.to_string_lossy().into_owned());

    let tree = mesh_iso::IsoTree::from_dir(&dir)?;
    let mut opts = mesh_iso::IsoOptions::new(label);
    opts.timestamp = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse().ok());
    mesh_iso::write_iso_file(&tree, &opts, &out)?;
    Ok(())
}
