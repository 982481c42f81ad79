//! Releases the code pages a quiet shim no longer runs.
//!
//! A shim spends milliseconds creating a container and then, for the container's whole life,
//! sits in `epoll_wait`. The code it ran meanwhile (spec parsing, mounts, libcontainer's wire
//! types, GPU discovery) stays mapped: the kernel maps text in 64 KB fault-around windows and
//! never unmaps it from a process that lives on, so that code counts in the shim's resident set
//! (5.6 MB of the binary's 9.5 MB text, measured with one sleeping container) although the
//! shim will not run it again until the container exits.
//!
//! [`release_code_pages`] drops this process's page-table entries for the read-only segments
//! (text, rodata, and the relocated data the loader made read-only, RELRO) of every loaded
//! object, with `madvise(MADV_DONTNEED)`. Nothing is lost: the
//! pages stay in the page cache, shared with every other shim, and a page the shim runs later
//! faults back in from there (a minor fault, no I/O). What changes is that the idle shim maps
//! only what it uses, and page cache that nobody maps is what the kernel reclaims first.
//!
//! It never drops a page the process holds privately: a read-only segment can still hold one
//! (text relocations, a debugger's breakpoint, a uprobe), and `MADV_DONTNEED` would throw it
//! away. `/proc/self/pagemap` tells, page by page, which pages are private; those are kept.
//! Writable data (`.data`, `.bss`, the heap) is never touched.
//!
//! [`IdleTrim`] calls it, in the shim and in the zygote, once the task service has been quiet
//! for [`QUIET`]. In the shim, the same release first gives the heap's free pages back
//! (`malloc_trim`), after freeing what the runtime's thread and its own held in their
//! allocator caches ([`take_thread_cache`]), which no trim could otherwise give back.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::future::Future;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How long the service must see no request before it releases its code pages.
pub const QUIET: Duration = Duration::from_millis(300);

/// The longest a quiet spell's release waits for the other processes' (the zygotes').
pub const OTHERS_LIMIT: Duration = Duration::from_secs(1);

/// How long an idle blocking-pool thread may wait for work before it exits: less than
/// [`QUIET`], so that it has gone before the release (see [`IdleTrim::spawn`]).
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_millis(100);

/// A page-aligned address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    end: usize,
}

/// The whole pages inside `[start, start + len)`: rounded inwards, so that a page shared with a
/// neighbouring (possibly writable) segment is never included.
fn inner_pages(start: usize, len: usize, page: usize) -> Option<Range> {
    let first = start.checked_add(page - 1)? & !(page - 1);
    let last = start.checked_add(len)? & !(page - 1);
    (last > first).then_some(Range {
        start: first,
        end: last,
    })
}

struct Collect {
    vdso: usize,
    page: usize,
    ranges: Vec<Range>,
}

unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> c_int {
    // SAFETY: `data` is the `Collect` that `read_only_segments` passed to `dl_iterate_phdr`,
    // and `info` is valid for this call, as dl_iterate_phdr(3) promises.
    let (out, info) = unsafe { (&mut *data.cast::<Collect>(), &*info) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: dlpi_phdr points at dlpi_phnum program headers of a loaded object.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let loads_at = |h: &libc::Elf64_Phdr| base.wrapping_add(h.p_vaddr as usize);
    let loads = headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
    // The vDSO is the kernel's special mapping, not a file: leave it alone.
    if loads
        .clone()
        .any(|h| loads_at(h) & !(out.page - 1) == out.vdso)
    {
        return 0;
    }
    // Read-only loads, and the part of a writable load that the loader made read-only once it
    // had relocated it (RELRO): neither can be written any more.
    let read_only = headers.iter().filter(|h| {
        (h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) || h.p_type == libc::PT_GNU_RELRO
    });
    out.ranges
        .extend(read_only.filter_map(|h| inner_pages(loads_at(h), h.p_filesz as usize, out.page)));
    0
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The page ranges of every loaded object's read-only segments: read-only `PT_LOAD`s (text,
/// rodata) and `PT_GNU_RELRO`.
fn read_only_segments() -> Vec<Range> {
    // SAFETY: getauxval has no preconditions; 0 means "no vDSO".
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    let mut out = Collect {
        vdso,
        page: page_size(),
        ranges: Vec::new(),
    };
    // SAFETY: `collect` only reads what dl_iterate_phdr hands it and writes into `out`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(collect), (&raw mut out).cast()) };
    out.ranges
}

/// Whether a `/proc/<pid>/pagemap` entry is a page only this process holds: present or swapped,
/// and not a file page (see the kernel's `admin-guide/mm/pagemap`).
fn is_private(entry: u64) -> bool {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    entry & (PRESENT | SWAPPED) != 0 && entry & FILE_OR_SHARED == 0
}

/// Splits `range` into the runs of pages that may be dropped: every page but the private ones,
/// read from `pagemap`. `None` when the pagemap cannot be read: then nothing is dropped.
fn droppable_runs(pagemap: &File, range: Range, page: usize) -> Option<Vec<Range>> {
    let pages = (range.end - range.start) / page;
    let mut raw = vec![0u8; pages * 8];
    let offset = u64::try_from(range.start / page * 8).ok()?;
    pagemap.read_exact_at(&mut raw, offset).ok()?;
    let mut runs: Vec<Range> = Vec::new();
    for (i, entry) in raw.chunks_exact(8).enumerate() {
        let entry = u64::from_ne_bytes(entry.try_into().ok()?);
        if is_private(entry) {
            continue;
        }
        let at = range.start + i * page;
        match runs.last_mut() {
            Some(run) if run.end == at => run.end = at + page,
            _ => runs.push(Range {
                start: at,
                end: at + page,
            }),
        }
    }
    Some(runs)
}

/// The size of this process's read-only mappings that [`release_code_pages`] releases, in
/// bytes of address range.
pub fn read_only_bytes() -> usize {
    read_only_segments().iter().map(|r| r.end - r.start).sum()
}

/// Puts into `runs` (emptied first) the runs of pages that [`release_code_pages`] drops: the
/// read-only segments' pages this process does not hold privately. None when
/// `/proc/self/pagemap` cannot be read.
fn droppable_code_pages(runs: &mut Vec<Range>) {
    runs.clear();
    let pagemap = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            log::debug!("/proc/self/pagemap: {e}; keeping every page");
            return;
        }
    };
    let page = page_size();
    runs.extend(
        read_only_segments()
            .into_iter()
            .filter_map(|segment| droppable_runs(&pagemap, segment, page))
            .flatten(),
    );
}

/// Drops this process's page-table entries for `runs` (from [`droppable_code_pages`]); returns
/// how many bytes of address range were released. Allocates nothing.
fn drop_pages(runs: &[Range]) -> usize {
    runs.iter()
        .map(|run| {
            let len = run.end - run.start;
            // SAFETY: whole pages of a read-only segment that hold no private page; dropping
            // them only makes the next access fault them back in from the page cache.
            let rc = unsafe { libc::madvise(run.start as *mut c_void, len, libc::MADV_DONTNEED) };
            if rc == 0 {
                len
            } else {
                let e = std::io::Error::last_os_error();
                log::debug!("madvise({:#x}, {len}, MADV_DONTNEED): {e}", run.start);
                0
            }
        })
        .sum()
}

/// Drops this process's mappings of shared, read-only code and data pages (see the module doc);
/// returns how many bytes of address range were released.
pub fn release_code_pages() -> usize {
    let mut runs = Vec::new();
    droppable_code_pages(&mut runs);
    drop_pages(&runs)
}

/// How many objects the dynamic loader has unloaded in this process so far (glibc's
/// `dlpi_subs`, the same for every object), `None` where the C library does not tell.
fn loader_unloads() -> Option<u64> {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        let known = std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + size_of::<u64>();
        if size >= known {
            // SAFETY: `data` is the `Option<u64>` that loader_unloads passed, and `info` is
            // valid for this call and `size` bytes long, which covers `dlpi_subs`.
            unsafe { *data.cast::<Option<u64>>() = Some((*info).dlpi_subs) };
        }
        1
    }
    let mut unloads: Option<u64> = None;
    // SAFETY: `first` only reads what dl_iterate_phdr hands it and writes into `unloads`, which
    // outlives the call; returning 1 stops after the first object.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut unloads).cast()) };
    unloads
}

/// Makes every thread allocate from one heap. glibc gives each new thread an arena of its
/// own (up to eight per core); a shim's threads come and go with every exec (the blocking
/// pool's, the stdio copiers) and each arena kept the high-water mark of what its threads
/// allocated: +1.5 MB in the first 300 execs of one container, measured. The shim's
/// allocations are few and short, so one shared heap costs no measurable contention. Call
/// before any thread starts.
pub fn one_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the heap's free memory at its top and in its free pages back to the kernel.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own heap under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The size classes of glibc's per-thread cache (`tcache`): 64 bins of chunks of 32 to 1,040
/// bytes, 16 apart; bin `n` serves requests of up to `24 + 16 * n` bytes.
#[cfg(target_env = "gnu")]
const THREAD_CACHE_BINS: usize = 64;

/// How many chunks glibc's per-thread cache keeps per size class (its `tcache_count` default).
#[cfg(target_env = "gnu")]
const THREAD_CACHE_COUNT: usize = 7;

/// Takes the calling thread's glibc cache of freed small chunks, so that, once
/// [`free_on_a_passing_thread`] has freed them, `malloc_trim` can give their pages back.
///
/// A chunk of up to 1,032 bytes that a thread frees goes into that thread's cache, not back
/// to the heap, up to seven per size class; `malloc_trim` cannot release a page a cached chunk
/// lies in. The runtime's thread lives as long as the shim and frees such chunks with every
/// request, so its cache ends up holding chunks strewn over the heap. Measured with one
/// sleeping container, after 50, 1,050 and 2,050 exec cycles: the heap's resident pages were
/// 292, 416 and 440 kB; with the cache turned off (`GLIBC_TUNABLES=glibc.malloc.tcache_count=0`,
/// which a forked daemon cannot set for itself) 144 kB each time; drained at each quiet spell,
/// 212, 228 and 252 kB. A thread's cache goes back to the heap when the thread exits; so the
/// thread to drain takes seven chunks of every size class (its cache's first, which it hands
/// out before anything else), and a thread that frees them (into its own cache) and exits
/// puts them back. Only allocations here: the thread to drain (the runtime's) neither makes
/// nor waits for the freeing thread.
fn take_thread_cache() -> Vec<usize> {
    #[cfg(target_env = "gnu")]
    {
        let mut chunks = Vec::with_capacity(THREAD_CACHE_BINS * THREAD_CACHE_COUNT);
        for bin in 0..THREAD_CACHE_BINS {
            for _ in 0..THREAD_CACHE_COUNT {
                // SAFETY: a plain allocation; free_on_a_passing_thread frees it.
                let chunk = unsafe { libc::malloc(24 + 16 * bin) };
                if !chunk.is_null() {
                    chunks.push(chunk as usize);
                }
            }
        }
        chunks
    }
    #[cfg(not(target_env = "gnu"))]
    Vec::new()
}

/// Frees `chunks` (from [`take_thread_cache`]) on a thread made for it, which then exits, so
/// that its cache, where they went, goes back to the heap; waits for it. Without a thread
/// (none could be made) they are freed here.
fn free_on_a_passing_thread(chunks: Vec<usize>) {
    let free_all = |chunks: Vec<usize>| {
        for chunk in chunks {
            // SAFETY: each address came from malloc in take_thread_cache and is freed once.
            unsafe { libc::free(chunk as *mut c_void) };
        }
    };
    if chunks.is_empty() {
        return;
    }
    let (give, take) = std::sync::mpsc::sync_channel::<Vec<usize>>(1);
    let freer = std::thread::Builder::new()
        .name("free-cache".into())
        .stack_size(64 * 1024)
        .spawn(move || free_all(take.recv().unwrap_or_default()));
    match freer {
        Ok(freer) => {
            if let Err(back) = give.send(chunks) {
                free_all(back.0);
            }
            let _ = freer.join();
        }
        Err(_) => free_all(chunks),
    }
}

/// How long the releasing thread waits after being asked, so that the thread that asked (the
/// runtime's, serving every container) is back in `epoll_wait` before the release.
const ASKER_PARKS: Duration = Duration::from_millis(20);

/// A thread that releases this process's code pages when asked. The release runs here and
/// not on the runtime's thread: what a thread runs after a release is mapped again (in 64 KB
/// fault-around windows), and for the runtime's thread that is its whole way back to
/// `epoll_wait` (1.3 MB of code, measured); this thread goes back to a futex wait. Before
/// `malloc_trim` it frees the chunks the asking thread took from its allocator cache, and its
/// own cache's. It finds the pages to drop before any of that and then drops them with nothing
/// but `madvise` in between: the code that finds them, run between two drops, was mapped
/// again (the shim's resident set at rest went from 1.5 to 0.7 MB with this order).
///
/// The pages are dropped only if the dynamic loader unloaded nothing since they were found: a
/// Create that discovers the driver loads and unloads NVML, and an anonymous mapping made
/// where an unloaded library was must not be dropped. The check and the drops are
/// microseconds apart, as the finding and the drops of each segment were before.
#[derive(Debug, Clone)]
struct Releaser {
    thread: std::thread::Thread,
    taken: Arc<Mutex<Vec<usize>>>,
}

impl Releaser {
    fn start() -> std::io::Result<Self> {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let chunks = Arc::clone(&taken);
        let thread = std::thread::Builder::new()
            .name("release-code".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Kept from one release to the next, so that no free runs after the drops.
                let mut pages = Vec::new();
                loop {
                    std::thread::park();
                    std::thread::sleep(ASKER_PARKS);
                    // What the release allocates is allocated (and freed) before the trim,
                    // and this thread's own cache goes back with the asker's: otherwise the
                    // chunks it freed after the last trim would stay cached, pinning their
                    // pages.
                    let unloads = loader_unloads();
                    droppable_code_pages(&mut pages);
                    let mut taken = std::mem::take(&mut *lock(&chunks));
                    taken.extend(take_thread_cache());
                    free_on_a_passing_thread(taken);
                    release_free_heap();
                    if unloads.is_some() && loader_unloads() == unloads {
                        drop_pages(&pages);
                    } else {
                        log::debug!("a library was unloaded during the release: code pages kept");
                    }
                }
            })?;
        Ok(Self {
            thread: thread.thread().clone(),
            taken,
        })
    }

    /// Asks for a release, handing over `chunks` from [`take_thread_cache`] to be freed first.
    fn ask(&self, chunks: Vec<usize>) {
        lock(&self.taken).extend(chunks);
        self.thread.unpark();
    }
}

/// The chunks handed to the release thread, poisoned or not (nothing panics under the lock;
/// were it, the addresses are still the ones to free).
fn lock(taken: &Mutex<Vec<usize>>) -> MutexGuard<'_, Vec<usize>> {
    taken.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Releases code pages once the service has been quiet for [`QUIET`]; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct IdleTrim {
    activity: Arc<Notify>,
}

impl IdleTrim {
    /// Starts the task that waits for quiet spells and then runs `others` (such as asking the
    /// zygote to release its pages) and then releases this process's pages.
    ///
    /// `others` talks to other processes, which could be slow to answer: it must do so off the
    /// async thread that serves every container (on the blocking pool), and is waited for at
    /// most [`OTHERS_LIMIT`]. This process's own release goes last, once the blocking thread
    /// that ran `others` has exited ([`BLOCKING_KEEP_ALIVE`]: a thread's exit runs code that
    /// would be mapped again), on a thread of its own that waits for the runtime's thread to be
    /// back in `epoll_wait` first.
    pub fn spawn<F, Fut>(others: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let trim = Self::default();
        let activity = Arc::clone(&trim.activity);
        let releaser = match Releaser::start() {
            Ok(r) => r,
            Err(e) => {
                log::debug!("no thread to release code pages: {e}; keeping them");
                return trim;
            }
        };
        tokio::spawn(async move {
            let quiet_for = |d| tokio::time::timeout(d, activity.notified());
            loop {
                activity.notified().await;
                loop {
                    while quiet_for(QUIET).await.is_ok() {}
                    let _ = tokio::time::timeout(OTHERS_LIMIT, others()).await;
                    // The blocking thread that ran `others` exits BLOCKING_KEEP_ALIVE later,
                    // and its exit runs code (the pool's, the thread library's) that a release
                    // now would see mapped again: release once it has gone, unless a request
                    // came meanwhile (then wait for quiet again).
                    if quiet_for(BLOCKING_KEEP_ALIVE * 2).await.is_err() {
                        break;
                    }
                }
                log::trace!("quiet: releasing code mappings");
                // This is the runtime's thread: its cache goes with the release.
                releaser.ask(take_thread_cache());
            }
        });
        trim
    }

    /// Records activity: the next release waits for another quiet spell.
    pub fn touch(&self) {
        self.activity.notify_one();
    }

    /// `inner`, in use: activity is recorded now and again when the returned guard drops, so a
    /// request's end starts a quiet spell of its own.
    pub fn active<'a, T>(&'a self, inner: &'a T) -> Active<'a, T> {
        self.touch();
        Active { inner, trim: self }
    }
}

/// A value in use; see [`IdleTrim::active`].
#[derive(Debug)]
pub struct Active<'a, T> {
    inner: &'a T,
    trim: &'a IdleTrim,
}

impl<T> Deref for Active<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.inner
    }
}

impl<T> Drop for Active<'_, T> {
    fn drop(&mut self) {
        self.trim.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child: frees seven chunks of `size` bytes into the thread's cache, then takes
    /// the cache and frees it on a passing thread; how many bytes the heap counted as used
    /// before that and no longer does.
    #[cfg(target_env = "gnu")]
    fn bytes_given_back(size: usize) -> usize {
        // SAFETY: mallinfo2 reads the heap's statistics.
        let in_use = || unsafe { libc::mallinfo2() }.uordblks;
        let chunks: Vec<_> = (0..THREAD_CACHE_COUNT)
            // SAFETY: a plain allocation, freed once below.
            .map(|_| unsafe { libc::malloc(size) })
            .collect();
        for chunk in chunks {
            // SAFETY: allocated just above, freed once.
            unsafe { libc::free(chunk) };
        }
        // The freed chunks wait in this thread's cache, which the heap counts as used.
        let cached = in_use();
        free_on_a_passing_thread(take_thread_cache());
        cached.saturating_sub(in_use())
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn a_threads_cached_chunks_go_back_to_the_heap() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        const SIZE: usize = 1000;
        // In a forked child, whose only thread this is, the heap's figures are this test's.
        // SAFETY: the child allocates, frees on a thread it makes and leaves with _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let given_back = std::panic::catch_unwind(|| bytes_given_back(SIZE));
                let ok = given_back.is_ok_and(|b| b >= THREAD_CACHE_COUNT * SIZE * 3 / 4);
                // SAFETY: leaves the child without running the harness's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None), Ok(WaitStatus::Exited(child, 0)));
            }
        }
    }

    #[test]
    fn an_unloaded_library_is_counted() {
        let before = loader_unloads().expect("glibc tells the loader's unloads");
        let name = c"libdl.so.2";
        // SAFETY: libdl is glibc's own (an empty compatibility object on glibc 2.34 and
        // later), loaded and closed here; nothing of it is used.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen libdl.so.2");
        // SAFETY: the handle dlopen just returned, closed once.
        assert_eq!(unsafe { libc::dlclose(handle) }, 0);
        let after = loader_unloads().expect("glibc tells the loader's unloads");
        assert!(after > before, "unloads {before} -> {after}");
    }

    #[test]
    fn inner_pages_rounds_inwards() {
        let range = |start, end| Some(Range { start, end });
        assert_eq!(inner_pages(0x1000, 0x3000, 0x1000), range(0x1000, 0x4000));
        assert_eq!(inner_pages(0x1010, 0x3000, 0x1000), range(0x2000, 0x4000));
        assert_eq!(inner_pages(0x1010, 0x800, 0x1000), None);
        assert_eq!(inner_pages(usize::MAX - 10, 0x2000, 0x1000), None);
    }

    #[test]
    fn pagemap_entries_classify_private_pages() {
        assert!(is_private(1 << 63), "present anonymous");
        assert!(is_private(1 << 62), "swapped anonymous");
        assert!(!is_private((1 << 63) | (1 << 61)), "present file page");
        assert!(!is_private(0), "not present");
    }

    #[test]
    fn finds_the_binarys_text_and_libcs() {
        let ranges = read_only_segments();
        let here = finds_the_binarys_text_and_libcs as *const () as usize;
        // Only whole pages inside a segment are listed: a function on a page a segment shares
        // with the next is a few pages from the nearest range.
        let slack = 4 * page_size();
        assert!(
            ranges
                .iter()
                .any(|r| r.start.saturating_sub(slack) <= here && here < r.end + slack),
            "this function's own code at {here:#x} is in a read-only segment: {ranges:x?}"
        );
        let libc_fn = libc::getpid as *const () as usize;
        assert!(ranges.iter().any(|r| (r.start..r.end).contains(&libc_fn)));
    }

    #[test]
    fn a_private_page_in_a_read_only_mapping_is_kept() {
        // A private file mapping with one page written (a copy-on-write page, as a breakpoint
        // or a text relocation makes) and then made read-only, like a segment.
        let page = page_size();
        let mut file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut file, &vec![b'f'; 3 * page]).expect("write");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a fresh private mapping of a file we own, unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let bytes = base.cast::<u8>();
        // SAFETY: all three pages are mapped; the middle one is written, the others read.
        unsafe {
            std::ptr::read_volatile(bytes);
            bytes.add(page).write(b'P');
            std::ptr::read_volatile(bytes.add(2 * page));
            assert_eq!(libc::mprotect(base, 3 * page, libc::PROT_READ), 0);
        }
        let range = Range {
            start: base as usize,
            end: base as usize + 3 * page,
        };
        let pagemap = File::open("/proc/self/pagemap").expect("pagemap");
        let runs = droppable_runs(&pagemap, range, page).expect("pagemap readable");
        let first = Range {
            start: range.start,
            end: range.start + page,
        };
        let last = Range {
            start: range.start + 2 * page,
            end: range.end,
        };
        assert_eq!(runs, vec![first, last], "the written page is kept");
        // SAFETY: the mapping is ours and nothing else refers to it.
        unsafe { libc::munmap(base, 3 * page) };
    }

    #[test]
    fn released_code_still_runs_and_data_survives() {
        // Data that relocation or the program wrote must be kept: a static with a pointer and
        // a heap value are checked after the release.
        static GREETING: &str = "still here";
        let heap = vec![7u8; 4096];
        let released = release_code_pages();
        assert!(released > 0);
        assert_eq!(GREETING, "still here");
        assert_eq!(
            heap.iter().map(|&b| usize::from(b)).sum::<usize>(),
            7 * 4096
        );
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
