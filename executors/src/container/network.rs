//! Step networking. `none`: an own network namespace with only loopback (brought up in the
//! child). `host`: the host's namespace. `bridge`: an own namespace joined by a veth pair to a
//! runner bridge, NAT to the outside through an iptables MASQUERADE rule, like Docker's default.
//!
//! Bridge plumbing runs the `ip` and `iptables` tools (iproute2/iptables, in `deploy/setup.sh`)
//! rather than hand-written netlink: a step with `network: bridge` pays a few milliseconds for
//! it, and the rules stay readable with the tools an operator already knows.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::ContainerError;

/// The runner's bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// IPv4 /24 network prefix, e.g. `10.88.7` (the bridge is `.1`, sandboxes `.2`-`.254`).
    pub subnet: String,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "runner0".into(),
            subnet: "10.88.0".into(),
        }
    }
}

/// Serialises bridge creation between steps of this process.
static BRIDGE_LOCK: Mutex<()> = Mutex::new(());

fn run(cmd: &mut Command, what: &str) -> Result<(), ContainerError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ContainerError::Network(format!("{what}: cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(ContainerError::Network(format!(
            "{what}: {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl BridgeConfig {
    fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Create the bridge, forwarding and the NAT rule if missing.
    pub fn ensure(&self) -> Result<(), ContainerError> {
        let _guard = BRIDGE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if !ok(Command::new("ip").args(["link", "show", &self.name])) {
            run(
                Command::new("ip").args(["link", "add", &self.name, "type", "bridge"]),
                "create the runner bridge",
            )?;
            run(
                Command::new("ip").args([
                    "addr",
                    "add",
                    &format!("{}/24", self.gateway()),
                    "dev",
                    &self.name,
                ]),
                "address the runner bridge",
            )?;
            run(
                Command::new("ip").args(["link", "set", &self.name, "up"]),
                "bring up the runner bridge",
            )?;
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| ContainerError::Network(format!("enable IPv4 forwarding: {e}")))?;
        let source = format!("{}.0/24", self.subnet);
        let rule = ["-s", &source, "!", "-o", &self.name, "-j", "MASQUERADE"];
        if !ok(Command::new("iptables")
            .args(["-t", "nat", "-C", "POSTROUTING"])
            .args(rule))
        {
            run(
                Command::new("iptables")
                    .args(["-t", "nat", "-A", "POSTROUTING"])
                    .args(rule),
                "add the NAT rule",
            )?;
        }
        Ok(())
    }

    /// Delete the bridge and its NAT rule (uninstall, tests). Sandboxes still attached lose
    /// their network.
    pub fn remove(&self) {
        let _guard = BRIDGE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ok(Command::new("ip").args(["link", "del", &self.name]));
        let source = format!("{}.0/24", self.subnet);
        let _ = ok(Command::new("iptables").args([
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-s",
            &source,
            "!",
            "-o",
            &self.name,
            "-j",
            "MASQUERADE",
        ]));
    }

    /// Take a free address for sandbox `owner`: a lease file created exclusively in `leases`,
    /// holding the owner's name.
    pub fn lease(&self, leases: &Path, owner: &str) -> Result<(String, PathBuf), ContainerError> {
        std::fs::create_dir_all(leases).map_err(ContainerError::io(leases))?;
        for host in 2..=254 {
            let ip = format!("{}.{host}", self.subnet);
            let path = leases.join(&ip);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .map_err(ContainerError::io(&path))?;
                    return Ok((ip, path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ContainerError::io(&path)(e)),
            }
        }
        Err(ContainerError::Network(format!(
            "no free address left on bridge {} ({}.0/24)",
            self.name, self.subnet
        )))
    }

    /// Plug the network namespace of `pid` into the bridge with address `ip` as `eth0`.
    pub fn attach(&self, veth: &str, pid: i32, ip: &str) -> Result<(), ContainerError> {
        run(
            Command::new("ip").args([
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pid.to_string(),
            ]),
            "create the veth pair",
        )?;
        run(
            Command::new("ip").args(["link", "set", veth, "master", &self.name, "up"]),
            "attach the veth to the bridge",
        )?;
        let ns_path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&ns_path).map_err(ContainerError::io(Path::new(&ns_path)))?;
        let ns_fd = ns.as_raw_fd();
        let script = format!(
            "addr add {ip}/24 dev eth0\nlink set eth0 up\nroute add default via {}\n",
            self.gateway()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and only calls setns, which is
        // async-signal-safe; `ns` stays open in the parent until the command has been spawned.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| ContainerError::Network(format!("run ip in the sandbox: {e}")))?;
        drop(ns);
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| ContainerError::Network(format!("run ip in the sandbox: {e}")))?;
        if !out.status.success() {
            return Err(ContainerError::Network(format!(
                "configure eth0 in the sandbox: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// Host-side name of a sandbox's veth (interface names are at most 15 bytes).
pub fn veth_name(sandbox: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sandbox.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("rv{:08x}", h as u32)
}

/// Whether a host interface of that name exists.
pub fn veth_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Delete a veth pair by its host end (the peer goes with it). Missing is fine.
pub fn delete_veth(name: &str) {
    let _ = ok(Command::new("ip").args(["link", "del", name]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = veth_name("rnr-1-2-3");
        assert!(a.len() <= 15);
        assert_ne!(a, veth_name("rnr-1-2-4"));
    }

    #[test]
    fn leases_are_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = BridgeConfig::default();
        let (a, _) = cfg.lease(tmp.path(), "rnr-x").unwrap();
        let (b, pb) = cfg.lease(tmp.path(), "rnr-x").unwrap();
        assert_ne!(a, b);
        std::fs::remove_file(pb).unwrap();
        assert_eq!(cfg.lease(tmp.path(), "rnr-x").unwrap().0, b);
    }
}
