//! The kernel's clock discipline state, read with adjtimex(2) in
//! read-only mode (`[time] source = "kernel"`).
#![allow(unsafe_code)]

use nts_proto::Leap;

/// What the kernel says about its clock.
#[derive(Debug)]
pub(crate) struct KernelState {
    pub(crate) leap: Leap,
    pub(crate) max_error_us: i64,
}

/// The kernel clock's sync state; `None` if adjtimex fails.
pub(crate) fn read() -> Option<KernelState> {
    // SAFETY: a zeroed timex with modes = 0 asks only to read; the kernel
    // writes into the struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    let leap = if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        Leap::Unsynchronized
    } else if tx.status & libc::STA_INS != 0 {
        Leap::InsertSecond
    } else if tx.status & libc::STA_DEL != 0 {
        Leap::DeleteSecond
    } else {
        Leap::NoWarning
    };
    Some(KernelState {
        leap,
        max_error_us: tx.maxerror,
    })
}
