//! Make CUDA visible to the binaries: nothing in the Rust code references a libtorch_cuda symbol, so the linker's
//! default `--as-needed` would drop the library and `tch::Cuda::is_available()` would quietly report false.
fn main() {
    // torch-sys reports where it found libtorch (its `links = "tch"` metadata).
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::path::Path::new(&lib);
        if lib.join("libtorch_cuda.so").exists() {
            println!(
                "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state"
            );
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
