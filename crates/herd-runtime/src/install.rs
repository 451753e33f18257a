//! Finding and installing the ONNX Runtime shared library.
//!
//! herd loads `libonnxruntime.so.1.31.1` at run time (ort's `load-dynamic`). It looks, in order,
//! at an explicit path (`--ort-lib`), `HERD_ORT_LIB`, `ORT_DYLIB_PATH`, herd's cache directory,
//! and the directory of the `herd` executable. `herd runtime install` fills the cache: it asks
//! `python3 -m pip download` for the pinned `onnxruntime` wheel (so the user's own pip
//! configuration, mirrors and proxies apply), checks the wheel's SHA-256, and extracts the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::RuntimeError;

/// The ONNX Runtime version herd is built against (`ort`'s `api-31`).
pub const ORT_VERSION: &str = "1.31.1";
/// The library's file name inside the wheel and in the cache.
pub const LIB_FILE: &str = "libonnxruntime.so.1.31.1";
/// The pinned wheel: CPython 3.11 ABI tag, manylinux 2.28, x86_64. Only the C library is used.
pub const WHEEL_FILE: &str = "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
/// SHA-256 of [`WHEEL_FILE`].
pub const WHEEL_SHA256: &str = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
const LIB_IN_WHEEL: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";

/// herd's cache directory: `HERD_HOME`, else `$XDG_CACHE_HOME/herd`, else `~/.cache/herd`.
pub fn cache_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("HERD_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("herd");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("herd");
    }
    PathBuf::from(".herd")
}

/// Where `herd runtime install` puts the library.
pub fn installed_path() -> PathBuf {
    cache_dir()
        .join("runtime")
        .join(format!("onnxruntime-{ORT_VERSION}"))
        .join(LIB_FILE)
}

/// The places searched, in order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    for var in ["HERD_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push(PathBuf::from(v));
        }
    }
    out.push(installed_path());
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(LIB_FILE));
    }
    out
}

/// Finds the library or says exactly what to run.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let searched = candidates(explicit);
    if let Some(found) = searched.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(RuntimeError::LibraryMissing { searched })
}

/// Where the wheel comes from.
pub enum WheelSource<'a> {
    /// `python3 -m pip download` of the pinned wheel.
    Pip,
    /// A wheel file the user already has (offline installs).
    File(&'a Path),
}

/// Installs the library into the cache (or returns it if already there and `force` is false).
/// `log` receives one line per step.
pub fn install(
    source: WheelSource<'_>,
    force: bool,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, RuntimeError> {
    let dest = installed_path();
    if dest.is_file() && !force {
        log(&format!(
            "ONNX Runtime {ORT_VERSION} already installed at {}",
            dest.display()
        ));
        return Ok(dest);
    }
    let dir = dest.parent().expect("installed path has a parent");
    std::fs::create_dir_all(dir)
        .map_err(|e| RuntimeError::Install(format!("cannot create {}: {e}", dir.display())))?;
    let scratch = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| RuntimeError::Install(format!("cannot create {}: {e}", scratch.display())))?;
    let result = (|| {
        let wheel = match source {
            WheelSource::File(p) => p.to_path_buf(),
            WheelSource::Pip => {
                log(&format!(
                    "downloading onnxruntime=={ORT_VERSION} with `python3 -m pip download` (your pip configuration applies)"
                ));
                pip_download(&scratch)?
            }
        };
        log(&format!("checking SHA-256 of {}", wheel.display()));
        let bytes = std::fs::read(&wheel)
            .map_err(|e| RuntimeError::Install(format!("cannot read {}: {e}", wheel.display())))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != WHEEL_SHA256 {
            return Err(RuntimeError::Install(format!(
                "{} has SHA-256 {digest}, expected {WHEEL_SHA256} ({WHEEL_FILE}); refusing to install it",
                wheel.display()
            )));
        }
        let lib = extract_library(&bytes)?;
        let tmp = scratch.join(LIB_FILE);
        std::fs::write(&tmp, &lib)
            .map_err(|e| RuntimeError::Install(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &dest)
            .map_err(|e| RuntimeError::Install(format!("cannot write {}: {e}", dest.display())))?;
        log(&format!("installed {}", dest.display()));
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn pip_download(into: &Path) -> Result<PathBuf, RuntimeError> {
    let python = std::env::var("HERD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            "3.11",
            "--abi",
            "cp311",
            "--platform",
            "manylinux_2_28_x86_64",
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(into)
        .status()
        .map_err(|e| {
            RuntimeError::Install(format!(
                "could not run `{python} -m pip` ({e}); install Python 3 with pip, or download {WHEEL_FILE} yourself and run `herd runtime install --wheel FILE`"
            ))
        })?;
    if !status.success() {
        return Err(RuntimeError::Install(format!(
            "`{python} -m pip download onnxruntime=={ORT_VERSION}` failed ({status}); check your package index settings, or run `herd runtime install --wheel FILE` with a downloaded {WHEEL_FILE}"
        )));
    }
    let wheel = into.join(WHEEL_FILE);
    if wheel.is_file() {
        Ok(wheel)
    } else {
        Err(RuntimeError::Install(format!(
            "pip did not produce {WHEEL_FILE} in {}",
            into.display()
        )))
    }
}

fn extract_library(wheel: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(wheel))
        .map_err(|e| RuntimeError::Install(format!("the wheel is not a valid zip file: {e}")))?;
    let mut entry = zip
        .by_name(LIB_IN_WHEEL)
        .map_err(|e| RuntimeError::Install(format!("{LIB_IN_WHEEL} not in the wheel: {e}")))?;
    let mut out = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut out)
        .map_err(|e| RuntimeError::Install(format!("cannot extract {LIB_IN_WHEEL}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_is_searched_first() {
        let c = candidates(Some(Path::new("/x/lib.so")));
        assert_eq!(c[0], PathBuf::from("/x/lib.so"));
        assert!(c.iter().any(|p| p.ends_with(LIB_FILE)));
    }

    #[test]
    fn missing_library_error_names_the_command() {
        let e = RuntimeError::LibraryMissing {
            searched: vec![PathBuf::from("/nope")],
        };
        let msg = e.to_string();
        assert!(msg.contains("herd runtime install"), "{msg}");
        assert!(msg.contains("/nope"), "{msg}");
    }

    #[test]
    fn wrong_wheel_is_refused() {
        let dir = std::env::temp_dir().join(format!("herd-wheel-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join(WHEEL_FILE);
        std::fs::write(&fake, b"not a wheel").unwrap();
        // Install into a private cache so the real one is untouched.
        let home = dir.join("home");
        let prev = std::env::var_os("HERD_HOME");
        std::env::set_var("HERD_HOME", &home);
        let r = install(WheelSource::File(&fake), true, &mut |_| {});
        match prev {
            Some(v) => std::env::set_var("HERD_HOME", v),
            None => std::env::remove_var("HERD_HOME"),
        }
        let err = r.unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
        assert!(!home
            .join("runtime")
            .join(format!("onnxruntime-{ORT_VERSION}"))
            .join(LIB_FILE)
            .exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
