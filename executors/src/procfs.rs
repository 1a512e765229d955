//! Reading files under `/proc`.
//!
//! A proc file reports size 0 and is generated anew by every `read(2)`; `fs::read_to_string`
//! then starts with a 32-byte read and doubles, so `/proc/self/mountinfo` took 8 reads and
//! `/proc/<pid>/stat` 6, each 10-20 us here (the kernel walks the mount table or the task
//! again each time): ~0.2 ms of every step's start-up. One buffer big enough for the usual
//! size makes that two reads (the second sees the end).

use std::io::{self, Read};
use std::path::Path;

/// Enough for `/proc/self/mountinfo` of a host with ~100 mounts; larger files still read whole.
const USUAL_SIZE: usize = 16 * 1024;

/// The whole of the proc file `path` as text.
pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let mut text = String::with_capacity(USUAL_SIZE);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_read_to_string_reads() {
        for p in [
            "/proc/self/cgroup",
            "/proc/self/cmdline",
            "/proc/sys/kernel/cap_last_cap",
        ] {
            assert_eq!(read(p).unwrap(), std::fs::read_to_string(p).unwrap(), "{p}");
        }
    }

    #[test]
    fn a_file_larger_than_the_buffer_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let body: String = (0..USUAL_SIZE * 3)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(&p, &body).unwrap();
        assert_eq!(read(&p).unwrap(), body);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = read("/proc/self/no-such-file").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
