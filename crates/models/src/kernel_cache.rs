//! CubeCL's compiled-kernel (PTX) cache for burn-cuda, kept under kedit's cache.
//!
//! CubeCL compiles every kernel it meets through NVRTC when a process first launches it, and
//! keeps the result on disk only if a `cubecl.toml` names a cache. Without one each kedit process
//! paid that again: on an H200, ROME's first 7B edit spent 22–41 s compiling, against 3.7 s with
//! the cache warm (benchmarks/README.md, "GPU"). So kedit names one, `<cache>/cubecl`, unless the
//! user's own `cubecl.toml` (looked up from the working directory, as CubeCL does) already does.

use std::path::Path;

use burn_cubecl::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};

/// Sets CubeCL's configuration before burn-cuda first reads it, with the compilation cache
/// under kedit's cache ([`crate::fetch::cache_dir`]); nothing when no cache directory can be had.
pub fn init() {
    if let Ok(home) = crate::fetch::cache_dir() {
        init_under(&home);
    }
}

/// [`init`] with the cache under `home`: the user's `cubecl.toml` and `CUBECL_*` variables as
/// CubeCL would load them, with the compilation cache at `home/cubecl` when they name none. Does
/// nothing once CubeCL's configuration is set or loaded.
pub fn init_under(home: &Path) {
    // `RuntimeConfig::set` panics once anything has read the configuration: check and write under
    // the one lock instead.
    let mut state = CubeClRuntimeConfig::storage().lock();
    if state.is_some() {
        return;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::File(home.join("cubecl")));
    }
    *state = Some(std::sync::Arc::new(config));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no `cubecl.toml` above the crate, the cache lands under the given home, and a second
    /// call changes nothing. Needs no GPU: only CubeCL's configuration is read.
    #[test]
    fn the_kernel_cache_goes_under_kedits_cache() {
        let home = std::env::temp_dir().join("kedit-kernel-cache-test");
        init_under(&home);
        init_under(Path::new("/elsewhere"));
        let config = CubeClRuntimeConfig::get();
        match &config.compilation.cache {
            Some(CacheConfig::File(p)) => assert_eq!(p, &home.join("cubecl")),
            other => panic!("CubeCL's compilation cache is {other:?}"),
        }
    }
}
