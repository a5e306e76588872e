//! The allocator kedit's binaries run on, and the one setting they change in it.
//!
//! Burn allocates a fresh buffer for every tensor op and frees it soon after. glibc's allocator
//! handed each large freed buffer back to the kernel and faulted fresh, zeroed pages in for the
//! next one (about a quarter of a ROME step); mimalloc keeps them, but by default it still
//! returns ("purges") memory that stays free for a second, and a v* step takes longer than that,
//! so each step faulted its buffers in again: 8–10 % of the step's samples were the kernel clearing pages
//! (perf, 2026-12-05). [`retain_freed_memory`] turns the purge off. The cost: the process keeps
//! its peak working set until it exits (ROME on SmolLM2: peak RSS 1.46 GB against 1.39 GB).

/// The global allocator of `kedit` and of the timing harnesses (they time what `kedit` runs).
pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay`'s position in mimalloc's `mi_option_t` (the same in mimalloc 2 and 3).
/// libmimalloc-sys leaves the constant out on purpose (options may move between releases), so
/// [`tests::purge_delay_is_where_we_set_it`] checks the position against the option's default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory in the process for the next tensor instead of returning it to the kernel.
/// Call first thing in `main`. A `MIMALLOC_PURGE_DELAY` set in the environment (mimalloc's own
/// variable, read at process start) wins: then this does nothing.
pub fn retain_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set writes one entry of mimalloc's option table; any thread may call it at
    // any time, and a purge delay of -1 is a documented value ("no purging at all").
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// The purge delay the process runs with, as mimalloc reports it: "off" for -1 (what
/// [`retain_freed_memory`] sets), else milliseconds. Timing harnesses record it.
pub fn purge_delay() -> String {
    // SAFETY: reads one entry of mimalloc's option table.
    match unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) } {
        -1 => "off".into(),
        ms => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_where_we_set_it() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment chose the value; the default cannot be read
        }
        // SAFETY: reads one entry of mimalloc's option table.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // mimalloc 3's purge delay is 1000 ms (2's was 10). No other option near it defaults to
        // this, so a moved enum fails here rather than setting some other option to -1.
        assert_eq!(
            default, 1000,
            "mi_option_t position {PURGE_DELAY} is not purge_delay"
        );
        retain_freed_memory();
        let now = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(now, -1, "the purge is still on");
    }
}
