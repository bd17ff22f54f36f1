//! Record which libtorch this SDK (and so every plugin built with it) is compiled against, so that the host can
//! refuse a plugin whose `at::Tensor` layout or C++ ABI might differ from its own.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let version = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .ok()
        .and_then(|lib| detect_version(Path::new(&lib)))
        // torch-sys refuses to build against any version but the one it expects, unless its check is bypassed.
        .unwrap_or_else(|| "2.11.0".to_string());
    println!("cargo:rustc-env=GRPO_SDK_LIBTORCH_VERSION={version}");
    // torch-sys compiles its C++ glue with this flag, defaulting to the C++11 ABI (see its build script).
    let cxx11 = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    println!("cargo:rustc-env=GRPO_SDK_LIBTORCH_CXX11_ABI={cxx11}");
}

/// The version of the libtorch whose `lib/` directory is `lib`: a standalone libtorch has `build-version`, the
/// PyPI wheel has `version.py`. The local suffix (`+cpu`, `+cu130`) is dropped: the C++ API does not depend on it.
fn detect_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    // Only files that exist: cargo treats a missing rerun-if-changed file as always changed, which rebuilt the SDK
    // and everything above it on every build.
    for file in ["build-version", "version.py"] {
        if root.join(file).is_file() {
            println!("cargo:rerun-if-changed={}", root.join(file).display());
        }
    }
    let raw = if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        text.trim().to_string()
    } else {
        let text = std::fs::read_to_string(root.join("version.py")).ok()?;
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        line.split(['\'', '"']).nth(1)?.to_string()
    };
    Some(raw.split('+').next()?.to_string())
}
