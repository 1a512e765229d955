//! Platform glue of PID 1: mounts, kernel modules, the channel device, network interfaces and
//! power-off. Policy (what to mount where) lives in `main.rs`; this file only does syscalls.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: String,
        source: nix::Error,
    },
    #[error("load module {module}: {source}")]
    Module { module: String, source: nix::Error },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("network setup ({what}): {source}")]
    Net {
        what: &'static str,
        source: nix::Error,
    },
    #[error("no agent channel: {0}")]
    NoChannel(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Io { what, source }
}

/// Mount `fstype` from `src` on `target` (created if missing).
pub fn mount_fs(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SysError> {
    fs::create_dir_all(target).map_err(io(format!("create {}", target.display())))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|source| SysError::Mount {
        what: format!("{fstype} ({src})"),
        target: target.display().to_string(),
        source,
    })
}

/// Load the modules listed (one file name a line, dependencies first) in `order_file`, from
/// the same directory. Modules the kernel already has are skipped.
pub fn load_modules(order_file: &Path) -> Result<(), SysError> {
    let Ok(list) = fs::read_to_string(order_file) else {
        return Ok(()); // No list: every driver is built in.
    };
    let dir = order_file.parent().unwrap_or(Path::new("/"));
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        load_module(&dir.join(name))?;
    }
    Ok(())
}

/// Load one module file now (for drivers only some steps need, e.g. the NIC's).
pub fn load_module(path: &Path) -> Result<(), SysError> {
    let module = path.display().to_string();
    let f = File::open(path).map_err(io(format!("open {module}")))?;
    match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(source) => Err(SysError::Module { module, source }),
    }
}

/// Find the host channel: `runner.chan=` on the kernel command line, else the virtio-serial
/// port named `runner`. Waits up to `wait` for the device to appear.
pub fn find_channel(cmdline: &str, wait: Duration) -> Result<PathBuf, SysError> {
    let explicit = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("runner.chan="))
        .map(PathBuf::from);
    let start = Instant::now();
    loop {
        let found = match &explicit {
            Some(p) => p.exists().then(|| p.clone()),
            None => named_virtio_port("runner"),
        };
        if let Some(p) = found {
            return Ok(p);
        }
        if start.elapsed() > wait {
            return Err(SysError::NoChannel(match explicit {
                Some(p) => format!("{} does not exist", p.display()),
                None => "no virtio-serial port named `runner`".into(),
            }));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn named_virtio_port(name: &str) -> Option<PathBuf> {
    for e in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let port_name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            let dev = Path::new("/dev").join(e.file_name());
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// Open the channel for reading and writing; a tty (serial port) is put in raw mode so the
/// line discipline neither echoes nor translates bytes.
pub fn open_channel(path: &Path) -> Result<File, SysError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("open channel {}", path.display())))?;
    if nix::unistd::isatty(&f).unwrap_or(false) {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        if let Ok(mut t) = tcgetattr(&f) {
            cfmakeraw(&mut t);
            let _ = tcsetattr(&f, SetArg::TCSANOW, &t);
        }
    }
    Ok(f)
}

/// Bring an interface up and, if given, set its IPv4 address and netmask.
pub fn configure_interface(name: &str, addr: Option<([u8; 4], [u8; 4])>) -> Result<(), SysError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| SysError::Net {
        what: "socket",
        source,
    })?;
    let fd = sock.as_raw_fd();
    if let Some((ip, mask)) = addr {
        ifreq_addr(fd, name, libc_consts::SIOCSIFADDR, ip).map_err(|source| SysError::Net {
            what: "set address",
            source,
        })?;
        ifreq_addr(fd, name, libc_consts::SIOCSIFNETMASK, mask).map_err(|source| {
            SysError::Net {
                what: "set netmask",
                source,
            }
        })?;
    }
    let mut req = ifreq(name);
    // SAFETY: `req` is a valid ifreq naming the interface; SIOCGIFFLAGS fills ifru_flags.
    let r = unsafe { nix::libc::ioctl(fd, libc_consts::SIOCGIFFLAGS, &mut req) };
    nix::errno::Errno::result(r).map_err(|source| SysError::Net {
        what: "get flags",
        source,
    })?;
    // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (nix::libc::IFF_UP | nix::libc::IFF_RUNNING) as i16 };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    let r = unsafe { nix::libc::ioctl(fd, libc_consts::SIOCSIFFLAGS, &req) };
    nix::errno::Errno::result(r).map_err(|source| SysError::Net {
        what: "set flags",
        source,
    })?;
    Ok(())
}

/// Add a default IPv4 route through `gw`.
pub fn add_default_route(gw: [u8; 4]) -> Result<(), SysError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| SysError::Net {
        what: "socket",
        source,
    })?;
    // SAFETY: rtentry is plain old data; all-zero is a valid (empty) value.
    let mut rt: nix::libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in([0, 0, 0, 0]);
    rt.rt_genmask = sockaddr_in([0, 0, 0, 0]);
    rt.rt_gateway = sockaddr_in(gw);
    rt.rt_flags = nix::libc::RTF_UP | nix::libc::RTF_GATEWAY;
    // SAFETY: `rt` is a fully initialised rtentry that outlives the call.
    let r = unsafe { nix::libc::ioctl(sock.as_raw_fd(), libc_consts::SIOCADDRT, &rt) };
    nix::errno::Errno::result(r)
        .map(drop)
        .map_err(|source| SysError::Net {
            what: "default route",
            source,
        })
}

/// Request codes as the musl and glibc `ioctl` prototypes want them.
mod libc_consts {
    #[cfg(target_env = "musl")]
    pub type Req = nix::libc::c_int;
    #[cfg(not(target_env = "musl"))]
    pub type Req = nix::libc::c_ulong;
    pub const SIOCGIFFLAGS: Req = nix::libc::SIOCGIFFLAGS as Req;
    pub const SIOCSIFFLAGS: Req = nix::libc::SIOCSIFFLAGS as Req;
    pub const SIOCSIFADDR: Req = nix::libc::SIOCSIFADDR as Req;
    pub const SIOCSIFNETMASK: Req = nix::libc::SIOCSIFNETMASK as Req;
    pub const SIOCADDRT: Req = nix::libc::SIOCADDRT as Req;
}

fn ifreq(name: &str) -> nix::libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as nix::libc::c_char;
    }
    req
}

fn sockaddr_in(ip: [u8; 4]) -> nix::libc::sockaddr {
    let sin = nix::libc::sockaddr_in {
        sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
        sin_port: 0,
        sin_addr: nix::libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in
    // because of sin_family.
    unsafe { std::mem::transmute::<nix::libc::sockaddr_in, nix::libc::sockaddr>(sin) }
}

fn ifreq_addr(
    fd: i32,
    name: &str,
    request: libc_consts::Req,
    ip: [u8; 4],
) -> Result<(), nix::Error> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(ip);
    // SAFETY: `req` is a valid ifreq with the address member set, alive for the call.
    let r = unsafe { nix::libc::ioctl(fd, request, &req) };
    nix::errno::Errno::result(r).map(drop)
}

/// Flush file systems and power the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Power-off failed (no ACPI?): returning from PID 1 panics the kernel, and `panic=-1`
    // with QEMU's `-no-reboot` ends the VM as well.
    std::process::exit(1)
}

/// Write a line to the kernel log (the VM console): the last resort when the channel is gone.
pub fn kmsg(line: &str) {
    if let Ok(c) = CString::new(format!("runner-agent: {line}\n")) {
        let _ = fs::write("/dev/kmsg", c.as_bytes());
    }
}
