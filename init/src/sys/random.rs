//! `getrandom(2)` with flags 0: bytes from the kernel's CRNG, blocking until it is
//! initialized (unlike a read of `/dev/urandom`, which on kernels without a fast cycle
//! counter may return bytes of an uninitialized CRNG). nix has no wrapper and libc's
//! `getrandom` is `unsafe fn` (it takes a raw pointer). Not here: when to call it
//! ([`crate::entropy`]).

use super::SysError;

/// Fills `buf` from the kernel CRNG, waiting for it to be initialized; retries on EINTR
/// and short reads.
pub fn getrandom(buf: &mut [u8]) -> Result<(), SysError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable, exclusively borrowed buffer of
        // `rest.len()` bytes for the duration of the call; flags 0 is the documented
        // blocking mode. The kernel writes at most `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SysError::new(
                format!("getrandom({} bytes, 0)", rest.len()),
                e,
            ));
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// Lowers the calling *thread's* scheduling priority to nice 19 (Linux keeps the nice
/// value per thread: `setpriority(PRIO_PROCESS, 0, ..)` applies to the caller only). The
/// entropy thread's jitter loop then runs in the time the boot thread leaves idle.
pub fn lowest_priority_for_this_thread() -> Result<(), SysError> {
    // SAFETY: plain integer arguments, no memory is passed; failure is reported by -1.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if r != 0 {
        return Err(SysError::new(
            "setpriority(PRIO_PROCESS, 0, 19)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_whole_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        super::getrandom(&mut a).unwrap();
        super::getrandom(&mut b).unwrap();
        assert_ne!(a, b, "two 512-bit draws are equal");
    }
}
