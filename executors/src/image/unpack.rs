//! Unpacking one layer tar stream into its own directory, in the form overlayfs reads as a
//! lower layer: whiteouts become 0/0 character devices, opaque directories get the
//! `trusted.overlay.opaque` xattr.
//!
//! A layer is hostile until proven otherwise. Every entry is resolved with `openat2` under
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from the layer root, so nothing is ever written
//! through a symlink or outside the directory; `..` in a name, hard links to outside the layer
//! and relative symlinks that climb above the root are refused outright. The `tar` crate only
//! parses; it never touches the filesystem here.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Every syscall counts (they are slow in VMs): how many parent directories stay open.
const PARENT_CACHE: usize = 16;

/// overlayfs marks a directory whose lower contents are hidden with this xattr.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing hostile layer: entry {path:?} {reason}")]
    Unsafe { path: String, reason: String },
    #[error("layer entry {path:?}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("cannot read layer: {0}")]
    Read(#[source] io::Error),
    #[error("layer entry {path:?} has unsupported type {kind:?}")]
    Unsupported { path: String, kind: tar::EntryType },
}

/// What one unpack did, for progress and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpack the (already decompressed) tar stream `reader` into `dest`, an existing directory
/// that should be empty.
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Entry {
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        cache: Vec::with_capacity(PARENT_CACHE),
        dir_times: Vec::new(),
        chown: nix::unistd::geteuid().is_root(),
        me: (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
        umask: current_umask(),
        stats: UnpackStats::default(),
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let entry = entry.map_err(UnpackError::Read)?;
        u.entry(entry)?;
    }
    u.finish_dirs();
    Ok(u.stats)
}

struct Unpacker {
    root: OwnedFd,
    /// Recently used parent directories, most recent last: tar streams list a directory's
    /// entries together, so this saves almost every path walk.
    cache: Vec<(PathBuf, Rc<OwnedFd>)>,
    /// Directory mtimes, set at the end because creating children changes them.
    dir_times: Vec<(PathBuf, u64)>,
    chown: bool,
    /// Our own uid/gid: files we create already have them, no chown needed.
    me: (u32, u32),
    /// The process umask, to know when the mode given at creation is already exact.
    umask: u32,
    stats: UnpackStats,
    buf: Vec<u8>,
}

/// Metadata of one entry, read before its body.
struct Meta {
    mode: Mode,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let rel = clean(&raw).map_err(|reason| unsafe_entry(&shown, reason))?;
        let meta = read_meta(&mut entry).map_err(|e| entry_err(&shown, e))?;
        self.stats.entries += 1;

        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // `./` itself: the layer root's own ownership and mode.
            if kind == tar::EntryType::Directory {
                let fd = self.reopen_dir(&rel).map_err(|e| entry_err(&shown, e))?;
                self.apply_meta(fd.as_fd(), &meta, true)
                    .map_err(|e| entry_err(&shown, e))?;
                self.dir_times.push((rel, meta.mtime));
            }
            return Ok(());
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent_rc = self.open_parent(&parent_rel, &shown)?;
        let parent = parent_rc.as_fd();
        let name_str = name.to_string_lossy();

        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if name_str == OPAQUE_MARKER {
                let dir = openat(
                    parent,
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| entry_err(&shown, e.into()))?;
                set_xattr(dir.as_fd(), OPAQUE_XATTR, b"y").map_err(|e| entry_err(&shown, e))?;
            } else if !hidden.starts_with(".wh.") {
                // A plain whiteout: hide `hidden` of the lower layers.
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(unsafe_entry(&shown, "is a whiteout of nothing"));
                }
                self.remove_existing(parent, OsStr::new(hidden))
                    .map_err(|e| entry_err(&shown, e))?;
                mknodat(parent, hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| entry_err(&shown, e.into()))?;
            }
            // Other `.wh..wh.*` names are AUFS bookkeeping with no meaning here.
            return Ok(());
        }

        match kind {
            tar::EntryType::Directory => self.directory(&rel, &name, &meta, &shown),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular(&parent_rel, &name, &meta, &mut entry, &shown)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| unsafe_entry(&shown, "is a symlink without a target"))?
                    .into_owned();
                if symlink_escapes(parent_rel.components().count(), &target) {
                    return Err(unsafe_entry(
                        &shown,
                        format!("is a symlink to {target:?}, which climbs out of the layer"),
                    ));
                }
                let create = || symlinkat(&target, parent, name.as_os_str());
                match create() {
                    Err(Errno::EEXIST) => {
                        self.remove_existing(parent, &name)
                            .map_err(|e| entry_err(&shown, e))?;
                        create()
                    }
                    other => other,
                }
                .map_err(|e| entry_err(&shown, e.into()))?;
                self.lmeta(&parent_rel, &name, &meta, false, &shown)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| unsafe_entry(&shown, "is a hard link without a target"))?
                    .into_owned();
                let target_rel = clean(&target).map_err(|r| {
                    unsafe_entry(&shown, format!("is a hard link to {target:?}, which {r}"))
                })?;
                let (Some(tname), Some(tparent)) = (target_rel.file_name(), target_rel.parent())
                else {
                    return Err(unsafe_entry(&shown, "is a hard link to the layer root"));
                };
                let tdir = self
                    .resolve(tparent, false)
                    .map_err(|e| self.resolve_err(&shown, e))?;
                self.remove_existing(parent, &name)
                    .map_err(|e| entry_err(&shown, e))?;
                linkat(
                    tdir.as_fd(),
                    tname,
                    parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| {
                    entry_err(
                        &shown,
                        io::Error::other(format!(
                            "hard link to {target:?} (must be earlier in this layer): {e}"
                        )),
                    )
                })?;
                Ok(())
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let h = entry.header();
                let dev = makedev(
                    u64::from(h.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
                );
                let create = || mknodat(parent, name.as_os_str(), sflag, meta.mode, dev);
                match create() {
                    Err(Errno::EEXIST) => {
                        self.remove_existing(parent, &name)
                            .map_err(|e| entry_err(&shown, e))?;
                        create()
                    }
                    other => other,
                }
                .map_err(|e| entry_err(&shown, e.into()))?;
                self.lmeta(&parent_rel, &name, &meta, true, &shown)
            }
            other => Err(UnpackError::Unsupported {
                path: shown,
                kind: other,
            }),
        }
    }

    fn directory(
        &mut self,
        rel: &Path,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent_rc = self.open_parent(&parent_rel, shown)?;
        let parent = parent_rc.as_fd();
        let mode = Mode::from_bits_truncate(meta.mode.bits() & 0o777);
        let created = match mkdirat(parent, name, mode) {
            Ok(()) => true,
            Err(Errno::EEXIST) => {
                let is_dir = nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|st| {
                        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                    })
                    .unwrap_or(false);
                if !is_dir {
                    self.remove_existing(parent, name)
                        .map_err(|e| entry_err(shown, e))?;
                    mkdirat(parent, name, mode).map_err(|e| entry_err(shown, e.into()))?;
                }
                false
            }
            Err(e) => return Err(entry_err(shown, e.into())),
        };
        if !created || self.needs_chown(meta) || !self.mode_exact(meta) || !meta.xattrs.is_empty() {
            let fd = openat(
                parent,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| entry_err(shown, e.into()))?;
            // An existing directory may have been made with defaults: always set its mode.
            if !created {
                fchmod(fd.as_fd(), meta.mode).map_err(|e| entry_err(shown, e.into()))?;
            }
            self.apply_meta(fd.as_fd(), meta, true)
                .map_err(|e| entry_err(shown, e))?;
        }
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent_rel: &Path,
        name: &OsStr,
        meta: &Meta,
        body: &mut R,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let parent_rc = self.open_parent(parent_rel, shown)?;
        let parent = parent_rc.as_fd();
        let create = || {
            openat(
                parent,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(meta.mode.bits() & 0o777),
            )
        };
        // Create first; only a name already taken (later entries win) costs a removal.
        let fd = match create() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, name)
                    .map_err(|e| entry_err(shown, e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| entry_err(shown, e.into()))?;
        let mut file = std::fs::File::from(fd);
        loop {
            let n = match body.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Read(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| entry_err(shown, e))?;
            self.stats.bytes += n as u64;
        }
        self.apply_meta(file.as_fd(), meta, false)
            .map_err(|e| entry_err(shown, e))?;
        let t = TimeSpec::new(meta.mtime as i64, 0);
        futimens(file.as_fd(), &t, &t).map_err(|e| entry_err(shown, e.into()))?;
        Ok(())
    }

    /// Owner, mode, xattrs through an open descriptor. The mode goes after the owner because
    /// chown clears set-uid bits.
    fn apply_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, _dir: bool) -> io::Result<()> {
        let chowned = self.needs_chown(meta);
        if chowned {
            fchownat(
                fd,
                "",
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_EMPTY_PATH,
            )?;
        }
        if chowned || !self.mode_exact(meta) {
            fchmod(fd, meta.mode)?;
        }
        for (k, v) in &meta.xattrs {
            set_xattr(fd, k, v)?;
        }
        Ok(())
    }

    fn needs_chown(&self, meta: &Meta) -> bool {
        self.chown && (meta.uid, meta.gid) != self.me
    }

    /// Whether creating with `meta.mode` already gave exactly that mode: no special bits and
    /// nothing the umask strips.
    fn mode_exact(&self, meta: &Meta) -> bool {
        let m = meta.mode.bits();
        m & !0o777 == 0 && m & self.umask == 0
    }

    /// Owner (and mode, for device nodes) and mtime of something that cannot be opened:
    /// symlinks and devices, by name under their parent, never following.
    fn lmeta(
        &mut self,
        parent_rel: &Path,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let parent_rc = self.open_parent(parent_rel, shown)?;
        let parent = parent_rc.as_fd();
        let chowned = self.needs_chown(meta);
        if chowned {
            fchownat(
                parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| entry_err(shown, e.into()))?;
        }
        if chmod && (chowned || !self.mode_exact(meta)) {
            // Not a symlink (checked by the caller), so following is harmless.
            fchmodat(parent, name, meta.mode, FchmodatFlags::FollowSymlink)
                .map_err(|e| entry_err(shown, e.into()))?;
        }
        let t = TimeSpec::new(meta.mtime as i64, 0);
        utimensat(parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| entry_err(shown, e.into()))?;
        Ok(())
    }

    /// Remove whatever is at `name` so the entry can replace it (later entries win in a tar).
    fn remove_existing(&mut self, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                // A cached descriptor may point into what goes away.
                self.cache.clear();
                unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(|e| match e {
                    Errno::ENOTEMPTY => io::Error::other("would replace a non-empty directory"),
                    e => e.into(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn open_parent(&mut self, rel: &Path, shown: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some(i) = self.cache.iter().rposition(|(p, _)| p == rel) {
            let hit = self.cache.remove(i);
            let fd = hit.1.clone();
            self.cache.push(hit);
            return Ok(fd);
        }
        let fd = Rc::new(
            self.resolve(rel, true)
                .map_err(|e| self.resolve_err(shown, e))?,
        );
        if self.cache.len() == PARENT_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((rel.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    fn resolve_err(&self, shown: &str, e: Errno) -> UnpackError {
        match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => unsafe_entry(
                shown,
                "goes through a symlink or a non-directory (it could write outside the layer)",
            ),
            e => entry_err(shown, e.into()),
        }
    }

    /// Open directory `rel` beneath the root without following any symlink, creating missing
    /// directories (0755, as tar does for implied parents) when `create` is set.
    fn resolve(&self, rel: &Path, create: bool) -> Result<OwnedFd, Errno> {
        let how = || {
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
        };
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match openat2(self.root.as_fd(), path, how()) {
            Err(Errno::ENOENT) if create => {}
            other => return other,
        }
        let mut cur = openat2(self.root.as_fd(), ".", how())?;
        for comp in rel.components() {
            let next = match openat2(cur.as_fd(), comp.as_os_str(), how()) {
                Err(Errno::ENOENT) => {
                    match mkdirat(
                        cur.as_fd(),
                        comp.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat2(cur.as_fd(), comp.as_os_str(), how())?
                }
                other => other?,
            };
            cur = next;
        }
        Ok(cur)
    }

    /// A real (not O_PATH) descriptor of directory `rel`, for fchown/fchmod/fsetxattr.
    fn reopen_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let dir = self.resolve(rel, false)?;
        Ok(openat(
            dir.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
    }

    fn finish_dirs(&mut self) {
        // Deepest first is not needed: setting a directory's own mtime does not touch its
        // parent's. Failures only lose a timestamp, so they are ignored.
        let how = || {
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
        };
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let path: &Path = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &rel
            };
            if let Ok(fd) = openat2(self.root.as_fd(), path, how()) {
                let t = TimeSpec::new(mtime as i64, 0);
                let _ = futimens(fd.as_fd(), &t, &t);
            }
        }
    }
}

/// The umask, read without changing it (`umask(2)` can only set, and is process-wide).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        // Unknown: assume the worst, so every mode is set explicitly.
        .unwrap_or(0o777)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let meta = Meta {
        mode: Mode::from_bits_truncate(h.mode()? & 0o7777),
        uid: u32::try_from(h.uid()?).map_err(|_| io::Error::other("uid out of range"))?,
        gid: u32::try_from(h.gid()?).map_err(|_| io::Error::other("gid out of range"))?,
        mtime: h.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if xattr_allowed(name) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(Meta { xattrs, ..meta })
}

/// `trusted.*` xattrs (overlayfs's own `trusted.overlay.redirect`, `.metacopy`, `.opaque`)
/// would let a layer steer the overlay mount; only the whiteout markers may set them.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name.starts_with("security.")
}

/// The entry's path made relative to the layer root; `Err` says why it is refused.
fn clean(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::Prefix(_) => return Err("has a path prefix"),
            Component::Normal(s) => out.push(s),
        }
    }
    Ok(out)
}

/// Does relative symlink `target`, placed `depth` directories below the root, point above
/// the root? Absolute targets are fine: they are resolved inside the sandbox's own root, and
/// the unpacker never follows links.
fn symlink_escapes(depth: usize, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = depth as isize;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `fd` is an open descriptor borrowed for the call, `cname` is NUL-terminated and
    // outlives it, and the pointer/length pair describes the live slice `value`.
    let rc = unsafe {
        nix::libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "setting xattr {name}: {}",
            io::Error::last_os_error()
        )))
    }
}

fn unsafe_entry(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn entry_err(path: &str, source: io::Error) -> UnpackError {
    UnpackError::Entry {
        path: path.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
