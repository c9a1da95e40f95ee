//! The arguments of `mesh seed`, read without clap when they take the plain form.
//!
//! `mesh seed` is a drop-in for `cloud-localds`, called once per VM by scripts, so its start-up
//! is part of its cost: building clap's command description for it takes longer than writing
//! the seed. This reader accepts only the unambiguous common form (one output path, the four
//! input options as `--opt VALUE` or `--opt=VALUE`, `--format iso|vfat`, `-v`); for anything
//! else (help, a typo, a repeated option, a value that starts with `-`) it declines, and the
//! whole command line goes through clap, which gives its usual help or message. A test checks
//! that both readers agree on every form this one accepts.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::{SeedArgs, SeedFormat};

/// `(verbosity, arguments)` when `args` (after `seed`) has the plain form, else `None`.
pub(crate) fn plain(args: &[OsString]) -> Option<(u8, SeedArgs)> {
    let mut verbose = 0u8;
    let mut out = None;
    let (mut user_data, mut meta_data, mut network_config, mut vendor_data, mut format) =
        (None, None, None, None, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if !bytes.starts_with(b"-") {
            if out.replace(path(arg)?).is_some() {
                return None;
            }
            continue;
        }
        if bytes.len() > 1 && bytes[1..].iter().all(|&b| b == b'v') {
            verbose = verbose.checked_add(u8::try_from(bytes.len() - 1).ok()?)?;
            continue;
        }
        let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(eq) => (&bytes[..eq], Some(OsStr::from_bytes(&bytes[eq + 1..]))),
            None => (bytes, None),
        };
        let slot = match name {
            b"--user-data" => &mut user_data,
            b"--meta-data" => &mut meta_data,
            b"--network-config" => &mut network_config,
            b"--vendor-data" => &mut vendor_data,
            b"--format" => &mut format,
            _ => return None,
        };
        let value = match inline {
            Some(v) => v,
            None => rest.next()?.as_os_str(),
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    let format = match format.map(OsStr::as_bytes) {
        None | Some(b"iso") => SeedFormat::Iso,
        Some(b"vfat") => SeedFormat::Vfat,
        Some(_) => return None,
    };
    Some((
        verbose,
        SeedArgs {
            out: out?,
            user_data: path(user_data?)?,
            meta_data: path(meta_data?)?,
            network_config: network_config.map(path).map_or(Some(None), |p| p.map(Some))?,
            vendor_data: vendor_data.map(path).map_or(Some(None), |p| p.map(Some))?,
            format,
        },
    ))
}

/// A path value as clap takes it: not empty and not looking like an option.
fn path(value: &OsStr) -> Option<PathBuf> {
    let b = value.as_bytes();
    (!b.is_empty() && !b.starts_with(b"-")).then(|| PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn clap_reading(args: &[&str]) -> Option<(u8, SeedArgs)> {
        let argv = ["mesh", "seed"].into_iter().chain(args.iter().copied());
        match crate::Cli::try_parse_from(argv).ok()? {
            crate::Cli { verbose, command: crate::Command::Seed(args) } => Some((verbose, args)),
            _ => None,
        }
    }

    fn plain_reading(args: &[&str]) -> Option<(u8, SeedArgs)> {
        plain(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_plain_forms_read_as_clap_reads_them() {
        let accepted: &[&[&str]] = &[
            &["o.iso", "--user-data", "u", "--meta-data", "m"],
            &["--user-data=u", "--meta-data=m", "o.iso"],
            &["--meta-data", "m", "o", "--user-data", "u", "--network-config", "n"],
            &["o", "--user-data", "u", "--meta-data", "m", "--vendor-data=v", "--format", "vfat"],
            &["-vv", "o", "--user-data", "u", "--meta-data", "m", "-v", "--format=iso"],
            &["o", "--user-data", "a=b", "--meta-data", "m=", "--network-config=x=y"],
        ];
        for args in accepted {
            let ours = plain_reading(args);
            assert!(ours.is_some(), "the plain reader declined {args:?}");
            assert_eq!(ours, clap_reading(args), "readers disagree on {args:?}");
        }
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        let declined: &[&[&str]] = &[
            &[],
            &["--help"],
            &["-h"],
            &["-V"],
            &["--version"],
            &["o"],
            &["o", "--user-data", "u"],
            &["o", "p", "--user-data", "u", "--meta-data", "m"],
            &["o", "--user-data", "u", "--user-data", "w", "--meta-data", "m"],
            &["o", "--user-data", "-u", "--meta-data", "m"],
            &["o", "--user-data=", "--meta-data", "m"],
            &["o", "--user-data", "u", "--meta-data"],
            &["o", "--user-data", "u", "--meta-data", "m", "--format", "qcow2"],
            &["o", "--user-data", "u", "--meta-data", "m", "--user_data", "x"],
            &["o", "--userdata", "u", "--meta-data", "m"],
            &["--", "o", "--user-data", "u", "--meta-data", "m"],
            &["-x", "o", "--user-data", "u", "--meta-data", "m"],
        ];
        for args in declined {
            assert_eq!(plain_reading(args), None, "the plain reader took {args:?}");
        }
    }
}
