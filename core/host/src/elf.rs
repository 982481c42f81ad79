//! Bounded reads of the few ELF facts the shim needs (machine, SONAME, one note section) with
//! positioned reads of the headers and tables that hold them: a 50 MB `libcuda` costs a handful
//! of small `pread`s, never a read or mapping of the whole file, and a hostile image's file can
//! make a read fail but not make it large. 64-bit little-endian objects only (every driver
//! architecture NVIDIA ships: x86_64, aarch64).

use std::fs::File;
use std::os::unix::fs::FileExt;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{DT_NULL, DT_SONAME, DT_STRTAB};
use goblin::elf::program_header::{PT_DYNAMIC, PT_LOAD};
use goblin::elf::{Header, ProgramHeader, SectionHeader};

/// The largest file opened as a shared object (a driver's largest library, and an image's
/// compat `libcuda`, are under 200 MB). Only headers, the dynamic section and one note are read
/// from it, with bounded positioned reads; the limit refuses what no library is.
pub const MAX_LIBRARY_SIZE: u64 = 1 << 30;

/// The most program or section headers read.
const MAX_HEADERS: usize = 1024;
/// The most dynamic-section bytes read (a driver library's is about 500 bytes).
const MAX_DYNAMIC: usize = 64 * 1024;
/// The longest SONAME read.
const MAX_NAME: usize = 1024;
/// The largest note section read.
const MAX_NOTE: usize = 64 * 1024;
/// The size of one 64-bit dynamic entry.
const DYN_SIZE: usize = 16;

/// Why an ELF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The read itself failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a 64-bit little-endian ELF, or a header points outside the file.
    #[error("{0}")]
    Malformed(String),
}

/// What the shim needs to know of a shared object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine` (`EM_X86_64`, `EM_AARCH64`, ...).
    pub machine: u16,
    /// `DT_SONAME`, when it has one.
    pub soname: Option<String>,
}

fn malformed(what: impl Into<String>) -> ElfError {
    ElfError::Malformed(what.into())
}

/// Reads exactly `len` bytes at `offset`; a file shorter than that is malformed.
fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            malformed(format!(
                "{len} bytes at offset {offset} are past the end of the file"
            ))
        } else {
            ElfError::Io(e)
        }
    })?;
    Ok(buf)
}

/// The ELF header, checked to be 64-bit little-endian.
fn header(file: &File) -> Result<(Header, Ctx), ElfError> {
    let bytes = read_at(file, 0, goblin::elf64::header::SIZEOF_EHDR)
        .map_err(|_| malformed("not an ELF file (shorter than an ELF header)"))?;
    if bytes.get(..4) != Some(&b"\x7fELF"[..]) {
        return Err(malformed("not an ELF file (no ELF magic)"));
    }
    let header = goblin::elf::Elf::parse_header(&bytes)
        .map_err(|e| malformed(format!("bad ELF header: {e}")))?;
    let (Ok(Container::Big), Ok(Endian::Little)) = (header.container(), header.endianness()) else {
        return Err(malformed("not a 64-bit little-endian ELF object"));
    };
    Ok((header, Ctx::new(Container::Big, Endian::Little)))
}

fn program_headers(file: &File, h: &Header, ctx: Ctx) -> Result<Vec<ProgramHeader>, ElfError> {
    let n = usize::from(h.e_phnum);
    if n > MAX_HEADERS || usize::from(h.e_phentsize) != goblin::elf64::program_header::SIZEOF_PHDR {
        return Err(malformed(format!(
            "{n} program headers of {} bytes",
            h.e_phentsize
        )));
    }
    let bytes = read_at(
        file,
        h.e_phoff,
        n * goblin::elf64::program_header::SIZEOF_PHDR,
    )?;
    ProgramHeader::parse(&bytes, 0, n, ctx).map_err(|e| malformed(e.to_string()))
}

fn u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The file offset of virtual address `vaddr`, through the `PT_LOAD` segment holding it.
fn file_offset(phdrs: &[ProgramHeader], vaddr: u64) -> Option<u64> {
    phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .find(|p| vaddr >= p.p_vaddr && vaddr - p.p_vaddr < p.p_filesz)
        .and_then(|p| p.p_offset.checked_add(vaddr - p.p_vaddr))
}

/// A NUL-terminated string of at most [`MAX_NAME`] bytes at `offset`.
fn string_at(file: &File, offset: u64) -> Result<String, ElfError> {
    let mut buf = vec![0u8; MAX_NAME];
    let n = file.read_at(&mut buf, offset)?;
    buf.truncate(n);
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("unterminated string in the dynamic string table"))?;
    buf.truncate(end);
    String::from_utf8(buf).map_err(|_| malformed("a dynamic string is not UTF-8"))
}

/// The machine and SONAME of the ELF object `file`.
pub fn read_info(file: &File) -> Result<ElfInfo, ElfError> {
    let (h, ctx) = header(file)?;
    let phdrs = program_headers(file, &h, ctx)?;
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(ElfInfo {
            machine: h.e_machine,
            soname: None,
        });
    };
    let len = usize::try_from(dynamic.p_filesz)
        .ok()
        .filter(|l| *l <= MAX_DYNAMIC)
        .ok_or_else(|| malformed(format!("dynamic section of {} bytes", dynamic.p_filesz)))?;
    let bytes = read_at(file, dynamic.p_offset, len - len % DYN_SIZE)?;
    let (mut strtab, mut soname) = (None, None);
    for entry in bytes.chunks_exact(DYN_SIZE) {
        match (u64_le(&entry[..8]), u64_le(&entry[8..])) {
            (DT_NULL, _) => break,
            (DT_STRTAB, v) => strtab = Some(v),
            (DT_SONAME, v) => soname = Some(v),
            _ => {}
        }
    }
    let soname = match (strtab, soname) {
        (Some(table), Some(name)) => {
            let table = file_offset(&phdrs, table)
                .ok_or_else(|| malformed("DT_STRTAB is outside every loaded segment"))?;
            Some(string_at(file, table.saturating_add(name))?)
        }
        _ => None,
    };
    Ok(ElfInfo {
        machine: h.e_machine,
        soname,
    })
}

/// The contents of section `name` of the ELF object `file` (at most 64 KiB), when it has one.
pub fn read_section(file: &File, name: &str) -> Result<Option<Vec<u8>>, ElfError> {
    let (h, ctx) = header(file)?;
    let n = usize::from(h.e_shnum);
    let size = goblin::elf64::section_header::SIZEOF_SHDR;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_HEADERS || usize::from(h.e_shentsize) != size {
        return Err(malformed(format!(
            "{n} section headers of {} bytes",
            h.e_shentsize
        )));
    }
    let bytes = read_at(file, h.e_shoff, n * size)?;
    let sections =
        SectionHeader::parse_from(&bytes, 0, n, ctx).map_err(|e| malformed(e.to_string()))?;
    let names = sections
        .get(usize::from(h.e_shstrndx))
        .ok_or_else(|| malformed("e_shstrndx names no section"))?;
    for s in &sections {
        // Section names are short; read each at most `name.len() + 1` bytes.
        let mut got = vec![0u8; name.len() + 1];
        let at = names.sh_offset.saturating_add(s.sh_name as u64);
        let read = file.read_at(&mut got, at)?;
        if read != got.len() || &got[..name.len()] != name.as_bytes() || got[name.len()] != 0 {
            continue;
        }
        let len = usize::try_from(s.sh_size)
            .ok()
            .filter(|l| *l <= MAX_NOTE)
            .ok_or_else(|| malformed(format!("section {name} of {} bytes", s.sh_size)))?;
        return read_at(file, s.sh_offset, len).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn build(dir: &std::path::Path, soname: Option<&str>) -> File {
        let src = dir.join("x.c");
        std::fs::write(&src, "int x(void) { return 1; }\n").unwrap();
        let out = dir.join("libx.so");
        let mut cmd = Command::new("cc");
        cmd.args(["-shared", "-fPIC", "-o"]).arg(&out).arg(&src);
        if let Some(s) = soname {
            cmd.arg(format!("-Wl,-soname,{s}"));
        }
        assert!(cmd.status().unwrap().success());
        File::open(out).unwrap()
    }

    #[test]
    fn the_fuzzers_findings_are_errors_not_panics() {
        // Inputs cargo-fuzz found (kept as seeds of the `elf_note` target).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/elf_note");
        let found: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("seed-regression-")
            })
            .collect();
        assert!(!found.is_empty(), "{}", dir.display());
        for entry in found {
            let file = File::open(entry.path()).unwrap();
            let _ = read_info(&file);
            let _ = read_section(&file, ".note.cuda.fwd_compatibility");
        }
    }

    #[test]
    fn reads_the_soname_and_machine_of_a_shared_object() {
        let dir = tempfile::tempdir().unwrap();
        let info = read_info(&build(dir.path(), Some("libx.so.7"))).unwrap();
        assert_eq!(info.soname.as_deref(), Some("libx.so.7"));
        assert_eq!(
            Some(info.machine),
            nvidia_shim_core::inventory::Arch::host().map(|a| a.elf_machine())
        );
        let none = read_info(&build(dir.path(), None)).unwrap();
        assert_eq!(none.soname, None);
    }

    #[test]
    fn agrees_with_goblin_on_the_hosts_libc() {
        let path = "/lib/x86_64-linux-gnu/libc.so.6";
        let Ok(file) = File::open(path) else {
            eprintln!("SKIP agrees_with_goblin_on_the_hosts_libc: no {path}");
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        let whole = goblin::elf::Elf::parse(&bytes).unwrap();
        assert_eq!(read_info(&file).unwrap().soname.as_deref(), whole.soname);
        let section = read_section(&file, ".note.ABI-tag").unwrap().unwrap();
        let sh = whole
            .section_headers
            .iter()
            .find(|s| whole.shdr_strtab.get_at(s.sh_name) == Some(".note.ABI-tag"))
            .unwrap();
        assert_eq!(section, bytes[sh.file_range().unwrap()]);
        assert_eq!(read_section(&file, ".note.missing").unwrap(), None);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let lib = build(dir.path(), Some("libx.so.1"));
        let mut bytes = Vec::new();
        use std::io::Read;
        (&lib).read_to_end(&mut bytes).unwrap();
        for len in [0, 3, 20, 64, 200, bytes.len() / 2] {
            let f = dir.path().join(format!("cut{len}"));
            std::fs::write(&f, &bytes[..len]).unwrap();
            let file = File::open(&f).unwrap();
            // A cut object may still have its headers; it never panics and never reads past
            // its bounds.
            let _ = read_info(&file);
            let _ = read_section(&file, ".dynstr");
        }
        let f = dir.path().join("text");
        std::fs::write(&f, b"not an ELF at all, just text").unwrap();
        let err = read_info(&File::open(&f).unwrap()).unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
    }
}
