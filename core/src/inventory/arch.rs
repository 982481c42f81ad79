//! What differs between the CPU architectures NVIDIA ships drivers for: the multiarch triplet
//! of library directories, the `ld.so.cache` flags glibc accepts, and the ELF machine of the
//! driver's libraries. x86_64 is the tested one; aarch64 (GH200/GB200 hosts) comes from the
//! same table.

use serde::{Deserialize, Serialize};

/// A CPU architecture the shim can inject drivers for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// x86-64 (`x86_64-linux-gnu`).
    #[default]
    X86_64,
    /// 64-bit ARM (`aarch64-linux-gnu`).
    Aarch64,
}

/// glibc's `FLAG_ELF_LIBC6`.
const FLAG_ELF_LIBC6: i32 = 0x0003;
/// glibc's `FLAG_X8664_LIB64`.
const FLAG_X8664_LIB64: i32 = 0x0300;
/// glibc's `FLAG_AARCH64_LIB64`.
const FLAG_AARCH64_LIB64: i32 = 0x0a00;

impl Arch {
    /// The architecture this binary runs on; `None` where NVIDIA ships no driver.
    pub fn host() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }

    /// The Debian multiarch triplet.
    pub fn triplet(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-linux-gnu",
            Self::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// The `ld.so.cache` entry flags of a 64-bit glibc library of this architecture.
    pub fn ldcache_flags(self) -> i32 {
        match self {
            Self::X86_64 => FLAG_ELF_LIBC6 | FLAG_X8664_LIB64,
            Self::Aarch64 => FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64,
        }
    }

    /// The ELF `e_machine` of this architecture's objects.
    pub fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => goblin::elf::header::EM_X86_64,
            Self::Aarch64 => goblin::elf::header::EM_AARCH64,
        }
    }

    /// Directories, relative to a driver root, searched for the driver's 64-bit libraries after
    /// the root's `ld.so.cache`, in order: the multiarch directories (with Debian's
    /// `nvidia/current`, where its packages keep the real files), the `lib64` layouts (RHEL,
    /// `/usr/local/nvidia`), then plain `lib`. The toolkit searches the same places.
    pub fn library_dirs(self) -> Vec<String> {
        let t = self.triplet();
        vec![
            format!("usr/lib/{t}"),
            format!("usr/lib/{t}/nvidia/current"),
            "usr/lib64".to_owned(),
            format!("lib/{t}"),
            format!("lib/{t}/nvidia/current"),
            "lib64".to_owned(),
            "usr/lib".to_owned(),
            "lib".to_owned(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_what_glibc_writes() {
        // `ldconfig -p` prints these as "libc6,x86-64" and "libc6,AArch64".
        assert_eq!(Arch::X86_64.ldcache_flags(), 0x0303);
        assert_eq!(Arch::Aarch64.ldcache_flags(), 0x0a03);
    }

    #[test]
    fn directories_follow_the_triplet() {
        let dirs = Arch::Aarch64.library_dirs();
        assert_eq!(dirs[0], "usr/lib/aarch64-linux-gnu");
        assert!(dirs.contains(&"usr/lib/aarch64-linux-gnu/nvidia/current".to_owned()));
        assert!(!dirs.iter().any(|d| d.contains("x86_64")));
    }

    #[test]
    fn this_host_has_an_arch() {
        assert!(Arch::host().is_some(), "tests run on x86_64 or aarch64");
    }
}
