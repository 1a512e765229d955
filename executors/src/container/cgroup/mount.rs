//! Where the cgroup hierarchies are mounted and where the runner itself sits in each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{io_err, CgroupError};

/// The host's cgroup mounts and the runner's own cgroup in each.
#[derive(Debug, Clone, Default)]
pub struct Hierarchies {
    /// v1 controller name -> (mount point, runner's path in that hierarchy).
    pub v1: BTreeMap<String, (PathBuf, String)>,
    /// The v2 mount point and the runner's path in it.
    pub v2: Option<(PathBuf, String)>,
}

impl Hierarchies {
    pub fn read() -> Result<Self, CgroupError> {
        let mountinfo = crate::procfs::read("/proc/self/mountinfo")
            .map_err(io_err("/proc/self/mountinfo".as_ref()))?;
        let own = crate::procfs::read("/proc/self/cgroup")
            .map_err(io_err("/proc/self/cgroup".as_ref()))?;
        Ok(Self::parse(&mountinfo, &own))
    }

    /// Parse `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn parse(mountinfo: &str, own: &str) -> Self {
        // "2:cpu,cpuacct:/a/b" -> controller -> path; "0::/x" -> v2 path.
        let mut own_v1 = BTreeMap::new();
        let mut own_v2 = None;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                own_v2 = Some(path.to_string());
            }
            for c in ctrls.split(',') {
                own_v1.insert(c.to_string(), path.to_string());
            }
        }
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(mountpoint), Some(fstype), Some(opts)) =
                (left.get(4), right.first(), right.get(2))
            else {
                continue;
            };
            let mountpoint = PathBuf::from(mountpoint.replace("\\040", " "));
            match *fstype {
                "cgroup2" if h.v2.is_none() => {
                    h.v2 = Some((mountpoint, own_v2.clone().unwrap_or_else(|| "/".into())));
                }
                "cgroup" => {
                    for opt in opts.split(',') {
                        if let Some(path) = own_v1.get(opt) {
                            h.v1.entry(opt.to_string())
                                .or_insert_with(|| (mountpoint.clone(), path.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_hybrid_host() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";
        let own = "4:memory:/svc/x\n2:cpu,cpuacct:/\n0::/svc\n";
        let h = Hierarchies::parse(mountinfo, own);
        assert_eq!(
            h.v1["memory"],
            (PathBuf::from("/sys/fs/cgroup/memory"), "/svc/x".to_string())
        );
        assert_eq!(h.v1["cpu"].0, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            h.v2,
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/svc".to_string()))
        );
        assert!(!h.v1.contains_key("pids"));
    }
}
