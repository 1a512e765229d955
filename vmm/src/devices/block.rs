//! A read-only virtio block device (virtio spec 1.x, section 5.2) over a raw disk image: the
//! step's image root, which the guest mounts and never writes (writes go to an overlay in the
//! guest). Read-only keeps the host file pristine for the next VM and the device simple.
//!
//! Requests: a 16-byte header (type, reserved, sector) the guest wrote, data buffers, and a
//! status byte the device writes. Reads are served; writes are refused with an I/O error, as
//! the spec asks of a device offering `VIRTIO_BLK_F_RO`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes};

use crate::memory::GuestMemory;

/// Sector size the virtio block protocol counts in.
const SECTOR: u64 = 512;
/// Length of the identifier a GET_ID request returns.
const ID_LEN: usize = 20;
/// Largest single data buffer we copy at once (Linux sends at most a few hundred KiB).
const MAX_BUFFER: u32 = 16 << 20;
/// Data segments per request we accept (`seg_max`): lets the driver send large reads as one
/// request instead of one request per page.
const SEG_MAX: u32 = 126;

/// Errors opening the disk.
#[derive(Debug, Error)]
pub enum Error {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The device model: the image and its identity.
#[derive(Debug)]
pub struct Block {
    file: File,
    sectors: u64,
    id: [u8; ID_LEN],
}

impl Block {
    /// Opens `path` read-only. A size that is not a whole number of sectors is rounded down.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let mut id = [0u8; ID_LEN];
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let n = name.len().min(ID_LEN);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Block {
            file,
            sectors: len / SECTOR,
            id,
        })
    }

    /// Feature bits offered: virtio 1.x, read-only, a segment limit.
    pub fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_RO) | (1 << VIRTIO_BLK_F_SEG_MAX)
    }

    /// The configuration space (`struct virtio_blk_config` up to `seg_max`): capacity in
    /// sectors, `size_max` (unused: not offered), `seg_max`.
    pub fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.sectors.to_le_bytes());
        c[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }

    /// Serves one request made of `descs`; returns how many bytes were written to the guest
    /// (for the used ring), or `None` if the chain is too malformed to answer at all.
    pub fn handle(&self, mem: &GuestMemory, descs: &[Descriptor]) -> Option<u32> {
        let (header, rest) = descs.split_first()?;
        let (status, data) = rest.split_last()?;
        if header.is_write_only()
            || header.len() < 16
            || !status.is_write_only()
            || data.len() > SEG_MAX as usize
        {
            return None;
        }
        let kind: u32 = mem.read_obj(header.addr()).ok()?;
        let sector: u64 = mem.read_obj(header.addr().checked_add(8)?).ok()?;
        let (code, written) = match kind {
            VIRTIO_BLK_T_IN => self.read(mem, sector, data),
            // Read-only device: the driver should not write; refuse if it does.
            VIRTIO_BLK_T_OUT => (VIRTIO_BLK_S_IOERR, 0),
            VIRTIO_BLK_T_FLUSH => (VIRTIO_BLK_S_OK, 0),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, data),
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        mem.write_obj(code as u8, status.addr()).ok()?;
        Some(written + 1)
    }

    /// Copies sectors from `sector` on into the guest's buffers.
    fn read(&self, mem: &GuestMemory, sector: u64, data: &[Descriptor]) -> (u32, u32) {
        let Some(mut offset) = sector.checked_mul(SECTOR) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let end = self.sectors * SECTOR;
        let mut written = 0u32;
        for d in data {
            if !d.is_write_only() || d.len() > MAX_BUFFER {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            let len = u64::from(d.len());
            if offset.checked_add(len).is_none_or(|e| e > end) {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            let mut buf = vec![0u8; d.len() as usize];
            if self.file.read_exact_at(&mut buf, offset).is_err()
                || mem.write_slice(&buf, d.addr()).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            offset += len;
            written += d.len();
        }
        (VIRTIO_BLK_S_OK, written)
    }

    /// Writes the device identifier (the image's file name, NUL padded).
    fn get_id(&self, mem: &GuestMemory, data: &[Descriptor]) -> (u32, u32) {
        match data.first() {
            Some(d) if d.is_write_only() => {
                let n = (d.len() as usize).min(ID_LEN);
                match mem.write_slice(&self.id[..n], d.addr()) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_IOERR, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    fn addr(a: u64) -> GuestAddress {
        GuestAddress(a)
    }

    fn disk(bytes: &[u8]) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let b = Block::open(f.path()).unwrap();
        (f, b)
    }

    fn request(mem: &GuestMemory, kind: u32, sector: u64, data_len: u32) -> Vec<Descriptor> {
        mem.write_obj(kind, addr(0x1000)).unwrap();
        mem.write_obj(sector, addr(0x1008)).unwrap();
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        vec![
            Descriptor::new(0x1000, 16, next, 1),
            Descriptor::new(0x2000, data_len, next | write, 2),
            Descriptor::new(0x9000, 1, write, 0),
        ]
    }

    #[test]
    fn reads_sectors_into_guest_buffers() {
        let image: Vec<u8> = (0..4 * 512).map(|i| (i / 512) as u8 + 1).collect();
        let (_f, blk) = disk(&image);
        assert_eq!(blk.config()[..8], 4u64.to_le_bytes());
        assert_eq!(blk.config()[12..], SEG_MAX.to_le_bytes());
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = crate::memory::allocate(2).unwrap();
        let descs = request(&mem, VIRTIO_BLK_T_IN, 2, 1024);
        assert_eq!(blk.handle(&mem, &descs), Some(1025));
        let mut buf = vec![0u8; 1024];
        mem.read_slice(&mut buf, addr(0x2000)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));
        assert_eq!(
            mem.read_obj::<u8>(addr(0x9000)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
    }

    #[test]
    fn reads_past_the_end_and_writes_fail_without_touching_the_image() {
        let (f, blk) = disk(&[7u8; 1024]);
        let mem = crate::memory::allocate(2).unwrap();
        let descs = request(&mem, VIRTIO_BLK_T_IN, 1, 1024);
        blk.handle(&mem, &descs).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(addr(0x9000)).unwrap(),
            VIRTIO_BLK_S_IOERR as u8
        );
        let descs = request(&mem, VIRTIO_BLK_T_OUT, 0, 512);
        blk.handle(&mem, &descs).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(addr(0x9000)).unwrap(),
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![7u8; 1024]);
    }

    #[test]
    fn get_id_unknown_requests_and_malformed_chains() {
        let (f, blk) = disk(&[0u8; 512]);
        let mem = crate::memory::allocate(2).unwrap();
        let descs = request(&mem, VIRTIO_BLK_T_GET_ID, 0, 20);
        blk.handle(&mem, &descs).unwrap();
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, addr(0x2000)).unwrap();
        let name = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(id.starts_with(&name.as_bytes()[..name.len().min(20)]));
        let descs = request(&mem, 99, 0, 512);
        blk.handle(&mem, &descs).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(addr(0x9000)).unwrap(),
            VIRTIO_BLK_S_UNSUPP as u8
        );
        // A header alone, or a read-only status descriptor, cannot be answered.
        assert_eq!(blk.handle(&mem, &descs[..1]), None);
        let bad = [descs[0], descs[1], Descriptor::new(0x9000, 1, 0, 0)];
        assert_eq!(blk.handle(&mem, &bad), None);
    }
}
