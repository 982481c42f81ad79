//! Any bytes, as an image's compat `libcuda.so` (ELF headers, the dynamic section, the
//! `.note.cuda.fwd_compatibility` section and the note inside it), read to a result or an
//! error, never a panic or an unbounded allocation.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::compat;
use nvidia_shim_core_host::elf;

fuzz_target!(|data: &[u8]| {
    // The note parser alone, on the raw bytes.
    let _ = compat::parse_note(data);
    // The ELF reader, on the bytes as a file (in memory: no disk per input).
    let Ok(fd) = memfd() else { return };
    let mut file = std::fs::File::from(fd);
    if file.write_all(data).is_err() {
        return;
    }
    let _ = elf::read_info(&file);
    if let Ok(Some(section)) = elf::read_section(&file, ".note.cuda.fwd_compatibility") {
        assert!(section.len() <= 64 * 1024);
        let _ = compat::parse_note(&section);
    }
});

fn memfd() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid C string name and flags; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
