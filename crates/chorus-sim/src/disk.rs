//! A simulated disk for redb: writes land in a volatile image, `sync_data` makes
//! them durable, and a crash keeps only what was synced.
//!
//! This is the failure model redb is built for (an fsync is a barrier; everything
//! after the last one may be lost), so a crash here tests the real engine's recovery
//! and Chorus's rule that nothing is acknowledged before its commit is synced.

use chorus_store::StorageBackend;
use std::io;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Image {
    /// What reads see: every write so far.
    volatile: Vec<u8>,
    /// What survives a crash: the image as of the last sync.
    durable: Vec<u8>,
    /// Writes since the last sync, replayed onto `durable` by the next one (cheaper
    /// than copying the whole image at every fsync).
    unsynced: Vec<(usize, Vec<u8>)>,
}

/// A handle to one simulated disk; clones share it.
#[derive(Clone, Default)]
pub struct SimDisk(Arc<Mutex<Image>>);

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimDisk")
    }
}

impl SimDisk {
    /// The disk as it is after power loss: only what was synced, in a new handle
    /// (the old one may still be written by the dying process; that is lost).
    pub fn after_crash(&self) -> SimDisk {
        let durable = self.image().durable.clone();
        SimDisk(Arc::new(Mutex::new(Image {
            volatile: durable.clone(),
            durable,
            unsynced: Vec::new(),
        })))
    }

    fn image(&self) -> std::sync::MutexGuard<'_, Image> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.image().volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let image = self.image();
        let start = offset as usize;
        let bytes = image
            .volatile
            .get(start..start + out.len())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the disk",
                )
            })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.image().volatile.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let image = &mut *self.image();
        image.durable.resize(image.volatile.len(), 0);
        for (offset, data) in image.unsynced.drain(..) {
            // A later truncation may have cut this write short.
            let end = (offset + data.len()).min(image.durable.len());
            if offset < end {
                image.durable[offset..end].copy_from_slice(&data[..end - offset]);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut image = self.image();
        let end = offset as usize + data.len();
        if image.volatile.len() < end {
            image.volatile.resize(end, 0);
        }
        image.volatile[offset as usize..end].copy_from_slice(data);
        image.unsynced.push((offset as usize, data.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synced bytes survive a crash; unsynced ones do not.
    #[test]
    fn crash_keeps_only_synced_bytes() {
        let disk = SimDisk::default();
        disk.write(0, b"abc").unwrap();
        disk.sync_data().unwrap();
        disk.write(3, b"def").unwrap();
        disk.write(0, b"X").unwrap();
        let after = disk.after_crash();
        assert_eq!(after.len().unwrap(), 3);
        let mut out = [0u8; 3];
        after.read(0, &mut out).unwrap();
        assert_eq!(&out, b"abc");
    }
}
