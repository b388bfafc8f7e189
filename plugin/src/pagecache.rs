//! Reads that never wait for the disk: `preadv2` with `RWF_NOWAIT` returns
//! only bytes already in the page cache, so the async threads can take them
//! on the spot and leave everything else to a blocking thread.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the file system takes `RWF_NOWAIT` reads: on until the first
/// refusal, then off for good (for the owner of this value).
#[derive(Debug)]
pub(crate) struct NoWait(AtomicBool);

impl NoWait {
    pub(crate) fn new(enabled: bool) -> Self {
        Self(AtomicBool::new(enabled))
    }

    /// Whether reads are still tried (the file system has not refused one).
    pub(crate) fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Reads into `buf` the bytes at `at` that are in the page cache,
    /// without waiting for the disk: how many, or `None` when none are, or on
    /// any error (a blocking read then answers, and reports the error).
    #[cfg(target_os = "linux")]
    pub(crate) fn read(&self, file: &std::fs::File, buf: &mut [u8], at: u64) -> Option<usize> {
        use rustix::io::{Errno, ReadWriteFlags, preadv2};
        if !self.enabled() {
            return None;
        }
        match preadv2(file, &mut [std::io::IoSliceMut::new(buf)], at, ReadWriteFlags::NOWAIT) {
            // Zero is the end of the file, or nothing cached: the blocking read tells which.
            Ok(0) => None,
            Ok(got) => Some(got),
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                self.0.store(false, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn read(&self, _: &std::fs::File, _: &mut [u8], _: u64) -> Option<usize> {
        None
    }
}

/// Fills `buf` from `at`, blocking on the disk if need be: how many bytes,
/// fewer only at the end of the file.
pub(crate) fn read_full_at(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
