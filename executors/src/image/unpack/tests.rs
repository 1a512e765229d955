use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;
use crate::image::testing::LayerBuilder;

fn unpack_into(tar: Vec<u8>) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let res = unpack(&tar[..], dir.path());
    (dir, res)
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live; buf is a writable buffer of the
    // length passed.
    let rc =
        unsafe { nix::libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

#[test]
fn unpacks_every_kind_of_entry() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("etc", 0o755)
        .file_owned("etc/secret", 0o4750, 1000, 1001, b"s3cret")
        .file_with_xattrs(
            "etc/tagged",
            0o644,
            b"x",
            &[("user.tag", b"blue"), ("trusted.overlay.redirect", b"/etc")],
        )
        .hardlink("etc/secret-link", "etc/secret")
        .symlink("etc/abs", "/etc/secret")
        .symlink("etc/rel", "secret")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/fifo", tar::EntryType::Fifo, 0, 0)
        .file("deep/er/file", 0o600, b"implied parents")
        .whiteout("usr/gone")
        .dir("opaque", 0o755)
        .opaque("opaque");
    let (dir, res) = unpack_into(b.finish());
    let stats = res.unwrap();
    assert!(stats.entries >= 12, "{stats:?}");
    let root = dir.path();

    let secret = fs::metadata(root.join("etc/secret")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o7777, 0o4750);
    assert_eq!((secret.uid(), secret.gid()), (1000, 1001));
    assert_eq!(secret.mtime(), 1_700_000_000);
    let link = fs::metadata(root.join("etc/secret-link")).unwrap();
    assert_eq!(link.ino(), secret.ino(), "hard link shares the inode");
    assert_eq!(secret.nlink(), 2);

    assert_eq!(
        fs::read_link(root.join("etc/abs")).unwrap(),
        Path::new("/etc/secret")
    );
    assert_eq!(
        fs::read_link(root.join("etc/rel")).unwrap(),
        Path::new("secret")
    );

    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert!(fs::symlink_metadata(root.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::read(root.join("deep/er/file")).unwrap(),
        b"implied parents"
    );

    let wh = fs::symlink_metadata(root.join("usr/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is a 0/0 char device"
    );
    assert_eq!(wh.rdev(), 0);
    assert!(!root.join("usr/.wh.gone").exists());
    assert_eq!(
        get_xattr(&root.join("opaque"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!root.join("opaque/.wh..wh..opq").exists());

    assert_eq!(
        get_xattr(&root.join("etc/tagged"), "user.tag").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        get_xattr(&root.join("etc/tagged"), "trusted.overlay.redirect"),
        None
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut b = LayerBuilder::new();
    b.file("a", 0o644, b"one")
        .file("a", 0o600, b"two")
        .symlink("b", "a")
        .file("b", 0o644, b"file now");
    let (dir, res) = unpack_into(b.finish());
    res.unwrap();
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"two");
    assert!(fs::symlink_metadata(dir.path().join("b"))
        .unwrap()
        .is_file());
}

/// A sibling of the layer dir that a hostile entry tries to reach.
fn outside(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().parent().unwrap().join(format!(
        "{}-victim",
        dir.path().file_name().unwrap().to_string_lossy()
    ))
}

#[test]
fn refuses_dotdot_entries() {
    let mut b = LayerBuilder::new();
    b.raw("../escaped", tar::EntryType::Regular, None, b"pwned");
    let (dir, res) = unpack_into(b.finish());
    let err = res.unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    assert!(err.to_string().contains(".."), "{err}");
    assert!(!dir.path().parent().unwrap().join("escaped").exists());
}

#[test]
fn refuses_writing_through_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let victim = outside(&dir);
    fs::create_dir_all(&victim).unwrap();
    let mut b = LayerBuilder::new();
    b.symlink("evil", victim.to_str().unwrap()).raw(
        "evil/pwned",
        tar::EntryType::Regular,
        None,
        b"pwned",
    );
    let res = unpack(&b.finish()[..], dir.path());
    let err = res.unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        !victim.join("pwned").exists(),
        "nothing written outside the layer"
    );
    fs::remove_dir_all(&victim).unwrap();
}

#[test]
fn refuses_symlinks_climbing_out() {
    let mut b = LayerBuilder::new();
    b.raw(
        "etc/up",
        tar::EntryType::Symlink,
        Some("../../../../etc/shadow"),
        b"",
    );
    let (_dir, res) = unpack_into(b.finish());
    let err = res.unwrap_err();
    assert!(err.to_string().contains("climbs out"), "{err}");
}

#[test]
fn refuses_hard_links_out_of_the_layer() {
    // `..` in a link target: refused before anything is looked up.
    let mut b = LayerBuilder::new();
    b.raw("x", tar::EntryType::Link, Some("../../../etc/passwd"), b"");
    let (_dir, res) = unpack_into(b.finish());
    assert!(matches!(res.unwrap_err(), UnpackError::Unsafe { .. }));

    // An absolute target means the layer's own /etc/passwd, which this layer lacks: the
    // host's file is never linked.
    let mut b = LayerBuilder::new();
    b.raw("x", tar::EntryType::Link, Some("/etc/passwd"), b"");
    let (dir, res) = unpack_into(b.finish());
    assert!(res.is_err());
    assert!(!dir.path().join("x").exists());

    // A hard link through a symlink to outside is refused too.
    let dir = tempfile::tempdir().unwrap();
    let victim = outside(&dir);
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("target"), b"host").unwrap();
    let mut b = LayerBuilder::new();
    b.symlink("out", victim.to_str().unwrap()).raw(
        "x",
        tar::EntryType::Link,
        Some("out/target"),
        b"",
    );
    let err = unpack(&b.finish()[..], dir.path()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(fs::metadata(victim.join("target")).unwrap().nlink(), 1);
    fs::remove_dir_all(&victim).unwrap();
}
