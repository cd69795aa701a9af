//! The provided receive buffers of one ring: allocated once, registered
//! as a buffer ring, lent to the kernel and given back after each datagram.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::{BUF_GROUP, BUF_LEN};

/// The provided-buffer ring and the buffers it hands to the kernel.
pub(super) struct RecvBuffers {
    /// Page-aligned ring of `entries` descriptors shared with the kernel.
    pub(super) ring: *mut BufRingEntry,
    pub(super) ring_layout: Layout,
    pub(super) entries: u16,
    /// The next tail to publish; the kernel sees it at `publish`.
    pub(super) tail: u16,
    /// `entries` buffers of `BUF_LEN` bytes, 64-byte aligned.
    pub(super) data: *mut u8,
    pub(super) data_layout: Layout,
}

impl RecvBuffers {
    /// Allocates `entries` (a power of two) buffers, registers them with
    /// `ring` as group `BUF_GROUP` and hands them all to the kernel. The
    /// memory must outlive the ring: see [`Rx`].
    pub(super) fn new(ring: &IoUring, entries: u16) -> std::io::Result<RecvBuffers> {
        let ring_layout = Layout::from_size_align(
            usize::from(entries) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        let data_layout = Layout::from_size_align(usize::from(entries) * BUF_LEN, 64)
            .map_err(std::io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (entries > 0).
        let (ring_mem, data) = unsafe {
            (
                std::alloc::alloc_zeroed(ring_layout).cast::<BufRingEntry>(),
                std::alloc::alloc_zeroed(data_layout),
            )
        };
        let mut bufs = RecvBuffers {
            ring: ring_mem,
            ring_layout,
            entries,
            tail: 0,
            data,
            data_layout,
        };
        if ring_mem.is_null() || data.is_null() {
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: the ring memory is page aligned, sized for `entries`, and
        // freed only when `bufs` drops, after the ring (see `Rx`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                ring_mem as u64,
                entries,
                BUF_GROUP,
                0,
            )?;
        }
        for bid in 0..entries {
            bufs.recycle(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// The buffer with id `bid` (masked into range).
    pub(super) fn get(&self, bid: u16) -> &[u8] {
        let i = usize::from(bid % self.entries);
        // SAFETY: buffer `i` lies within the allocation; the kernel wrote it
        // before posting the completion that named it and does not touch it
        // again until it is recycled.
        unsafe { std::slice::from_raw_parts(self.data.add(i * BUF_LEN), BUF_LEN) }
    }

    /// Queues buffer `bid` for the kernel again (seen after `publish`).
    pub(super) fn recycle(&mut self, bid: u16) {
        let bid = bid % self.entries;
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < entries; the descriptor at the tail is not in the
        // kernel's hands until the tail is published. The tail field shares
        // descriptor 0's last two bytes, which these setters leave alone.
        unsafe {
            let e = &mut *self.ring.add(slot);
            e.set_addr(self.data.add(usize::from(bid) * BUF_LEN) as u64);
            e.set_len(BUF_LEN as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the recycled buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail is a naturally aligned u16 inside the ring memory,
        // which the kernel reads concurrently; the release store orders the
        // descriptor writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for RecvBuffers {
    /// Frees the memory; the ring that used it is already dropped (`Rx`).
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts (or null).
        unsafe {
            if !self.ring.is_null() {
                std::alloc::dealloc(self.ring.cast(), self.ring_layout);
            }
            if !self.data.is_null() {
                std::alloc::dealloc(self.data, self.data_layout);
            }
        }
    }
}
