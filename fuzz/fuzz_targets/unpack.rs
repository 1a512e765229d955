//! Layer unpacking on arbitrary tar streams: no panic, and nothing is written outside the
//! layer directory. Each input unpacks into `<case>/layer` beside a canary file and an empty
//! sibling directory; afterwards the case directory must hold exactly those three, untouched,
//! and no relative symlink in the layer may climb above it (absolute ones are resolved inside
//! the container's root later, which is the runtime's job).
//!
//! Run as root (deploy/fuzz.sh does), as the runner is: the ownership, device node and xattr
//! paths only run as root. The unpacker resolves every path with openat2(RESOLVE_BENEATH), so
//! an input cannot reach the host; this target is what checks that claim.
#![no_main]

// The module itself, compiled in (see Cargo.toml); a `use executors::image::unpack` would do
// the same at the cost of building all of executors.
#[allow(dead_code)]
#[path = "../../executors/src/image/unpack.rs"]
mod unpack;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"canary: nothing may change me\n";

fn check_symlinks(layer: &Path, dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            check_symlinks(layer, &path, depth + 1);
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            if target.is_absolute() {
                continue;
            }
            let mut level = depth as isize;
            for c in target.components() {
                match c {
                    Component::ParentDir => level -= 1,
                    Component::Normal(_) => level += 1,
                    _ => {}
                }
                assert!(
                    level >= 0,
                    "{} -> {} climbs out of the layer {}",
                    path.display(),
                    target.display(),
                    layer.display()
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let case = tempfile::Builder::new()
        .prefix("fuzz-unpack-")
        .tempdir()
        .unwrap();
    let layer = case.path().join("layer");
    let sibling = case.path().join("sibling");
    std::fs::create_dir(&layer).unwrap();
    std::fs::create_dir(&sibling).unwrap();
    std::fs::write(case.path().join("canary"), CANARY).unwrap();
    let canary_ino = std::fs::metadata(case.path().join("canary")).unwrap().ino();

    let _ = unpack::unpack(data, &layer);

    let mut names: Vec<String> = std::fs::read_dir(case.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "layer", "sibling"],
        "written beside the layer"
    );
    assert!(std::fs::symlink_metadata(&layer).unwrap().is_dir());
    assert_eq!(
        std::fs::read_dir(&sibling).unwrap().count(),
        0,
        "written into a sibling"
    );
    let canary = std::fs::symlink_metadata(case.path().join("canary")).unwrap();
    assert!(
        canary.is_file() && canary.ino() == canary_ino,
        "canary replaced"
    );
    assert_eq!(std::fs::read(case.path().join("canary")).unwrap(), CANARY);
    check_symlinks(&layer, &layer, 0);
    // Root removes the case whatever modes the layer set (`case` drops here).
});
