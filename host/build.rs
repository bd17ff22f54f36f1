//! Make CUDA visible to the binaries: nothing in the Rust code references a libtorch_cuda symbol, so the linker's
//! default `--as-needed` would drop the library and `tch::Cuda::is_available()` would quietly report false.
//! Also compiles the small C++ shims libtorch's C API lacks: the CUDA caching allocator's memory statistics
//! (logging/cuda_memory.cpp), the deterministic-algorithms switch and the C++ log level (runtime.cpp), the token
//! log-probs autograd node that keeps no logits (model/token_log_probs.cpp), gradient checkpointing's recomputing
//! node (model/recompute.cpp), the fused AdamW update (train/fused_adamw.cpp) and the c10d process group
//! (distributed/c10d.cpp), which compiles against the wheel's c10d headers and the Gloo declarations beside it.
fn main() {
    // torch-sys reports where it found libtorch (its `links = "tch"` metadata).
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::path::Path::new(&lib);
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    build_cuda_memory_shim();
}

/// The shims need only c10's and ATen's headers, found beside libtorch's lib directory (or under $LIBTORCH).
fn build_cuda_memory_shim() {
    println!("cargo:rerun-if-changed=src/logging/cuda_memory.cpp");
    println!("cargo:rerun-if-changed=src/runtime.cpp");
    println!("cargo:rerun-if-changed=src/model/token_log_probs.cpp");
    println!("cargo:rerun-if-changed=src/model/recompute.cpp");
    println!("cargo:rerun-if-changed=src/train/fused_adamw.cpp");
    println!("cargo:rerun-if-changed=src/shim_error.h");
    println!("cargo:rerun-if-changed=src/distributed/c10d.cpp");
    println!("cargo:rerun-if-changed=src/distributed/c10d_nccl.cpp");
    println!("cargo:rerun-if-changed=src/distributed/gloo_decl");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let from_lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .ok()
        .and_then(|l| std::path::Path::new(&l).parent().map(|p| p.join("include")));
    let from_env = std::env::var("LIBTORCH").ok().map(|l| std::path::Path::new(&l).join("include"));
    let Some(include) = [from_lib, from_env].into_iter().flatten().find(|i| i.join("c10").is_dir()) else {
        panic!("libtorch headers not found (no c10/ under DEP_TCH_LIBTORCH_LIB/../include or $LIBTORCH/include)");
    };
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let mut build = cc::Build::new();
    if let Some(dirs) = nccl_includes(&include) {
        build.includes(dirs).define("GRPO_WITH_NCCL", None);
    } else {
        println!("cargo:warning=building without NCCL: the CUDA and NCCL headers of setup's wheels were not found");
    }
    build
        .cpp(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("src/distributed/gloo_decl")
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        .warnings(false)
        .file("src/logging/cuda_memory.cpp")
        .file("src/runtime.cpp")
        .file("src/model/token_log_probs.cpp")
        .file("src/model/recompute.cpp")
        .file("src/train/fused_adamw.cpp")
        .file("src/distributed/c10d.cpp")
        .file("src/distributed/c10d_nccl.cpp")
        .compile("grpo_cuda_memory");
}

/// The include directories c10d's ProcessGroupNCCL.hpp needs, when the torch wheel sits in a site-packages that also
/// holds the CUDA runtime, crt, cccl and NCCL header wheels (xtask/requirements.txt) and libtorch has CUDA.
fn nccl_includes(torch_include: &std::path::Path) -> Option<Vec<std::path::PathBuf>> {
    let torch = torch_include.parent()?;
    let site = torch.parent()?;
    let (cuda, nccl) = (site.join("nvidia/cu13/include"), site.join("nvidia/nccl/include"));
    println!("cargo:rerun-if-changed={}", cuda.display());
    let needed = [
        cuda.join("cuda_runtime_api.h"),
        cuda.join("crt/host_config.h"),
        cuda.join("nv/target"),
        nccl.join("nccl.h"),
        torch.join("lib/libtorch_cuda.so"),
    ];
    needed.iter().all(|p| p.exists()).then(|| vec![cuda, nccl])
}
