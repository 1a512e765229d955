//! The guest kernel (Debian's cloud kernel, unpacked by `deploy/setup-vm-kernel.sh`) and the
//! initramfs built from it: the guest agent as `/init` plus the driver modules it loads.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::VmError;

/// Drivers the agent loads at boot (dependencies are added from each module's `depends=`):
/// virtio-mmio transport (QEMU's microvm machine), the root disk, the host channel, overlayfs.
/// Debian's cloud kernel builds all of these as modules.
pub const BOOT_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_console", "overlay"];
/// Loaded only by steps that ask for a network (`/lib/modules/net/` in the initramfs).
pub const NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

/// An unpacked kernel package: `boot/vmlinuz-<release>` and `lib/modules/<release>/`.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    pub release: String,
    pub modules: PathBuf,
}

impl GuestKernel {
    pub fn find(dir: &Path) -> Result<GuestKernel, VmError> {
        let missing = || VmError::KernelMissing(dir.to_path_buf());
        let boot = fs::read_dir(dir.join("boot")).map_err(|_| missing())?;
        let mut found: Vec<(String, PathBuf)> = boot
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let release = name.strip_prefix("vmlinuz-")?.to_string();
                Some((release, e.path()))
            })
            .collect();
        found.sort();
        let (release, vmlinuz) = found.pop().ok_or_else(missing)?;
        let modules = dir.join("lib/modules").join(&release);
        if !modules.is_dir() {
            return Err(missing());
        }
        Ok(GuestKernel {
            vmlinuz,
            release,
            modules,
        })
    }

    /// Every module file of the kernel by name (`-` and `_` are the same to the kernel).
    fn module_index(&self) -> Result<BTreeMap<String, PathBuf>, VmError> {
        let mut index = BTreeMap::new();
        let mut stack = vec![self.modules.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).map_err(|e| VmError::io(&d, e))?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = n.strip_suffix(".ko") {
                        index.insert(stem.replace('-', "_"), p);
                    }
                }
            }
        }
        Ok(index)
    }
}

/// The `depends=` list from a module's `.modinfo` section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The trailer the kernel's `sign-file` appends to a signed module.
const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module without its appended signature. The guest kernel does not enforce signatures
/// (`CONFIG_MODULE_SIG_FORCE` is off in Debian's build, and the guest never boots in lockdown),
/// and checking one (SHA-256 over the whole module, then RSA) is slow under TCG. The modules'
/// integrity is the host's business: they come from the kernel package the set-up unpacked.
fn strip_signature(mut ko: Vec<u8>) -> Vec<u8> {
    let Some(body) = ko.len().checked_sub(SIG_MAGIC.len()) else {
        return ko;
    };
    if &ko[body..] != SIG_MAGIC || body < 12 {
        return ko;
    }
    // struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (BE).
    let info = &ko[body - 12..body];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let extra = sig_len + info[3] as usize + info[4] as usize;
    match (body - 12).checked_sub(extra) {
        Some(end) => {
            ko.truncate(end);
            ko
        }
        None => ko,
    }
}

/// `wanted` and their dependencies, dependencies first; modules already in `skip` (or built
/// in) are left out.
fn load_order(
    index: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    wanted: &[&str],
    skip: &HashSet<String>,
) -> Result<Vec<(String, PathBuf)>, VmError> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), VmError> {
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = index
            .get(name)
            .ok_or_else(|| VmError::Initramfs(format!("kernel module {name} not found")))?;
        let bytes = fs::read(path).map_err(|e| VmError::io(path, e))?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, builtin, seen, out)?;
        }
        out.push((name.to_string(), path.clone()));
        Ok(())
    }
    let mut seen = skip.clone();
    let mut out = Vec::new();
    for w in wanted {
        visit(w, index, builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

fn builtin_modules(k: &GuestKernel) -> HashSet<String> {
    fs::read_to_string(k.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Build (or reuse from `cache_dir`) the initramfs for `kernel` with `agent` as `/init`.
/// The file name carries a hash of its inputs, so a new agent or kernel gets a new file.
pub fn initramfs(kernel: &GuestKernel, agent: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let agent_bytes = fs::read(agent).map_err(|e| VmError::AgentMissing(agent.to_path_buf(), e))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    agent_bytes.hash(&mut h);
    kernel.release.hash(&mut h);
    BOOT_MODULES.hash(&mut h);
    "unsigned-modules".hash(&mut h);
    NET_MODULES.hash(&mut h);
    let path = cache_dir.join(format!("initramfs-{:016x}.cpio", h.finish()));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir).map_err(|e| VmError::io(cache_dir, e))?;
    let index = kernel.module_index()?;
    let builtin = builtin_modules(kernel);
    let boot = load_order(&index, &builtin, BOOT_MODULES, &HashSet::new())?;
    let loaded: HashSet<String> = boot.iter().map(|(n, _)| n.clone()).collect();
    let net = load_order(&index, &builtin, NET_MODULES, &loaded)?;

    let mut entries: Vec<Entry> = ["dev", "proc", "sys", "mnt", "newroot", "lib", "lib/modules"]
        .iter()
        .map(|d| Entry::dir(d))
        .collect();
    entries.push(Entry::dir("lib/modules/net"));
    entries.push(Entry::file("init", 0o755, agent_bytes));
    let mut order = String::new();
    for (name, p) in &boot {
        let data = strip_signature(fs::read(p).map_err(|e| VmError::io(p, e))?);
        entries.push(Entry::file(&format!("lib/modules/{name}.ko"), 0o644, data));
        order.push_str(&format!("{name}.ko\n"));
    }
    entries.push(Entry::file(
        "lib/modules/load.order",
        0o644,
        order.into_bytes(),
    ));
    for (name, p) in &net {
        let data = strip_signature(fs::read(p).map_err(|e| VmError::io(p, e))?);
        entries.push(Entry::file(
            &format!("lib/modules/net/{name}.ko"),
            0o644,
            data,
        ));
    }
    let tmp = cache_dir.join(format!(".initramfs-{}.tmp", std::process::id()));
    write_cpio(&tmp, entries)?;
    fs::rename(&tmp, &path).map_err(|e| VmError::io(&path, e))?;
    // Initramfs files of earlier agents or kernels are dead weight now.
    for e in fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("initramfs-") && name.ends_with(".cpio") && e.path() != path {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(path)
}

struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

impl Entry {
    fn dir(name: &str) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o040_755,
            data: Vec::new(),
        }
    }
    fn file(name: &str, perm: u32, data: Vec<u8>) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o100_000 | perm,
            data,
        }
    }
}

/// An uncompressed newc archive: the kernel unpacks it without a decompressor, which is
/// faster under TCG than saving a few MiB of copying.
fn write_cpio(path: &Path, entries: Vec<Entry>) -> Result<(), VmError> {
    let err = |e| VmError::io(path, e);
    let f = fs::File::create(path).map_err(err)?;
    let mut w = std::io::BufWriter::new(f);
    for (ino, e) in entries.into_iter().enumerate() {
        let size = u32::try_from(e.data.len())
            .map_err(|_| VmError::Initramfs(format!("{} is too large", e.name)))?;
        let mut fw = cpio::newc::Builder::new(&e.name)
            .ino(ino as u32 + 1)
            .mode(e.mode)
            .nlink(if e.mode & 0o040_000 != 0 { 2 } else { 1 })
            .write(&mut w, size);
        fw.write_all(&e.data).map_err(err)?;
        fw.finish().map_err(err)?;
    }
    cpio::newc::trailer(&mut w).map_err(err)?;
    w.flush().map_err(err)?;
    w.into_inner()
        .map_err(|e| VmError::io(path, e.into_error()))?
        .sync_all()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_an_appended_module_signature() {
        let mut ko = b"\x7fELF module body".to_vec();
        let body_len = ko.len();
        ko.extend_from_slice(b"SIGNERKEYIDsignature-bytes");
        // algo, hash, id_type, signer_len=6, key_id_len=5, pad, sig_len=15.
        ko.extend_from_slice(&[0, 0, 2, 6, 5, 0, 0, 0, 0, 0, 0, 15]);
        ko.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(ko).len(), body_len);
        let unsigned = b"\x7fELF plain".to_vec();
        assert_eq!(strip_signature(unsigned.clone()), unsigned);
        // A corrupt trailer leaves the module alone rather than cutting it apart.
        let mut bad = b"short".to_vec();
        bad.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0xff, 0, 0, 0]);
        bad.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(bad.clone()), bad);
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(module_depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtin() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, deps: &str| {
            let p = d.path().join(format!("{name}.ko"));
            fs::write(&p, format!("\0depends={deps}\0")).unwrap();
            (name.to_string(), p)
        };
        let index: BTreeMap<_, _> = [
            mk("virtio_blk", "virtio,virtio_ring"),
            mk("virtio", "virtio_ring"),
            mk("virtio_ring", ""),
            mk("overlay", ""),
        ]
        .into_iter()
        .collect();
        let builtin: HashSet<String> = ["overlay".to_string()].into();
        let order = load_order(
            &index,
            &builtin,
            &["virtio_blk", "overlay"],
            &HashSet::new(),
        )
        .unwrap();
        let names: Vec<_> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio_blk"]);
        assert!(load_order(&index, &builtin, &["nope"], &HashSet::new()).is_err());
    }

    #[test]
    fn writes_a_newc_archive_the_cpio_tool_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.cpio");
        write_cpio(
            &p,
            vec![
                Entry::dir("lib"),
                Entry::file("lib/x", 0o644, b"hello".to_vec()),
            ],
        )
        .unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(fs::File::open(&p).unwrap())
            .output()
            .expect("cpio is installed by deploy/setup.sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "lib\nlib/x\n");
    }
}
