//! The runner's config file (TOML). Every section is optional; a missing file means defaults.
//! Each part of the runner owns one section.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[registries]`: insecure registries, credentials, pull policy (see `executors::image::auth`).
    #[serde(default)]
    pub registries: executors::image::RegistryConfig,
    /// `[container]`: the container executor (isolation: container, the default).
    #[serde(default)]
    pub container: ContainerSection,
    /// `[vm]`: the VM executor (isolation: vm).
    #[serde(default)]
    pub vm: VmSection,
    /// `[agent]`: this host's registration with a coordinator (written by `runner register`).
    #[serde(default)]
    pub agent: Option<AgentConfig>,
}

/// `[container]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// Where a step's writes outside its workspace and `/tmp` go: `memory` (a tmpfs per
    /// sandbox, charged to the step's memory limit) or `disk` (under the data dir, for steps
    /// that install more than fits in memory) [default: memory].
    pub scratch: Option<String>,
}

impl ContainerSection {
    pub fn scratch(&self) -> anyhow::Result<executors::container::Scratch> {
        use executors::container::Scratch;
        Ok(match self.scratch.as_deref() {
            None | Some("memory") => Scratch::Memory,
            Some("disk") => Scratch::Disk,
            Some(other) => {
                anyhow::bail!("[container] scratch = {other:?}: expected \"memory\" or \"disk\"")
            }
        })
    }
}

/// `[vm]` section. Every key is optional; paths default to the runner's data dir.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    /// Unpacked guest kernel package [default: <data-dir>/vm/kernel].
    pub kernel_dir: Option<std::path::PathBuf>,
    /// Static guest agent binary [default: <data-dir>/vm/guest-agent].
    pub agent: Option<std::path::PathBuf>,
    /// QEMU binary [default: qemu-system-x86_64 from PATH].
    pub qemu: Option<std::path::PathBuf>,
    /// `auto` (KVM where it can boot Linux, else TCG), `kvm` or `tcg`.
    pub accel: Option<String>,
    /// Hypervisor: `auto` (the in-process microVM where KVM is hardware-backed, else QEMU),
    /// `qemu` or `microvm` (refused where KVM cannot boot Linux, e.g. PVM).
    pub backend: Option<String>,
    /// vCPUs of a VM whose step does not set `resources.cpus` [default: 1].
    pub cpus: Option<u32>,
    /// Memory in MiB of a VM whose step does not set `resources.memory` [default: 512].
    pub memory_mib: Option<u64>,
    /// Pre-booted VMs kept ready, each used for one step [default: 0].
    pub warm_pool: Option<usize>,
    /// Seconds a VM may take to boot to its agent [default: 60].
    pub boot_timeout: Option<u64>,
}

impl VmSection {
    /// The executor settings for a runner whose data dir is `data_dir`.
    pub fn to_vm_config(&self, data_dir: &Path) -> anyhow::Result<executors::vm::VmConfig> {
        let mut c = executors::vm::VmConfig::with_data_dir(data_dir);
        if let Some(p) = &self.kernel_dir {
            c.kernel_dir = p.clone();
        }
        if let Some(p) = &self.agent {
            c.agent = p.clone();
        }
        if let Some(p) = &self.qemu {
            c.qemu = p.clone();
        }
        c.accel = match self.accel.as_deref() {
            None | Some("auto") => None,
            Some("kvm") => Some(executors::vm::Accel::Kvm),
            Some("tcg") => Some(executors::vm::Accel::Tcg),
            Some(other) => {
                anyhow::bail!("[vm] accel = {other:?}: expected \"auto\", \"kvm\" or \"tcg\"")
            }
        };
        c.backend = match self.backend.as_deref() {
            None | Some("auto") => executors::vm::microvm::Backend::Auto,
            Some("qemu") => executors::vm::microvm::Backend::Qemu,
            Some("microvm") => executors::vm::microvm::Backend::Microvm,
            Some(other) => anyhow::bail!(
                "[vm] backend = {other:?}: expected \"auto\", \"qemu\" or \"microvm\""
            ),
        };
        c.cpus = self.cpus.unwrap_or(c.cpus).max(1);
        c.memory_mib = self.memory_mib.unwrap_or(c.memory_mib);
        c.warm_pool = self.warm_pool.unwrap_or(c.warm_pool);
        if let Some(s) = self.boot_timeout {
            c.boot_timeout = std::time::Duration::from_secs(s);
        }
        Ok(c)
    }
}

/// The `[agent]` section.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Coordinator base URL, e.g. `http://127.0.0.1:8420`.
    pub url: String,
    pub id: i64,
    /// Runner token (secret: the file is mode 0600).
    pub token: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub isolations: Vec<String>,
    #[serde(default = "default_concurrent")]
    pub concurrent: u32,
}

fn default_concurrent() -> u32 {
    1
}

impl Config {
    /// Read `path`; a file that does not exist gives the defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_section_parses_and_defaults() {
        let c: Config = toml::from_str(
            "[vm]\nkernel_dir = \"/k\"\naccel = \"tcg\"\nwarm_pool = 2\nmemory_mib = 256\n",
        )
        .unwrap();
        let v = c.vm.to_vm_config(Path::new("/data")).unwrap();
        assert_eq!(v.kernel_dir, Path::new("/k"));
        assert_eq!(v.agent, Path::new("/data/vm/guest-agent"));
        assert_eq!(v.accel, Some(executors::vm::Accel::Tcg));
        assert_eq!((v.warm_pool, v.memory_mib, v.cpus), (2, 256, 1));
        let d = Config::default().vm.to_vm_config(Path::new("/d")).unwrap();
        assert_eq!(d.kernel_dir, Path::new("/d/vm/kernel"));
        assert_eq!(d.accel, None);
        assert_eq!(d.backend, executors::vm::microvm::Backend::Auto);
        let c: Config = toml::from_str("[vm]\nbackend = \"microvm\"\n").unwrap();
        let v = c.vm.to_vm_config(Path::new("/d")).unwrap();
        assert_eq!(v.backend, executors::vm::microvm::Backend::Microvm);
    }

    #[test]
    fn container_scratch_parses_defaults_and_rejects() {
        use executors::container::Scratch;
        assert_eq!(
            Config::default().container.scratch().unwrap(),
            Scratch::Memory
        );
        let c: Config = toml::from_str("[container]\nscratch = \"disk\"\n").unwrap();
        assert_eq!(c.container.scratch().unwrap(), Scratch::Disk);
        let c: Config = toml::from_str("[container]\nscratch = \"ram\"\n").unwrap();
        let e = c.container.scratch().unwrap_err().to_string();
        assert!(e.contains("scratch") && e.contains("disk"), "{e}");
        assert!(toml::from_str::<Config>("[container]\nupper = 1\n").is_err());
    }

    #[test]
    fn vm_section_rejects_bad_values() {
        let c: Config = toml::from_str("[vm]\naccel = \"hvf\"\n").unwrap();
        let e = c.vm.to_vm_config(Path::new("/d")).unwrap_err().to_string();
        assert!(e.contains("accel"), "{e}");
        let c: Config = toml::from_str("[vm]\nbackend = \"firecracker\"\n").unwrap();
        let e = c.vm.to_vm_config(Path::new("/d")).unwrap_err().to_string();
        assert!(e.contains("backend") && e.contains("microvm"), "{e}");
        assert!(toml::from_str::<Config>("[vm]\nwarm = 1\n").is_err());
    }
}
