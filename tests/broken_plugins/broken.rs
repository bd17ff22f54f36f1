//! Deliberately broken plugin libraries for the loader's tests (host/tests/plugin_loader.rs compiles this file with
//! plain `rustc`, once per `--cfg case="..."`). It does not use grpo-sdk: each case hand-writes the descriptor so
//! that it can be wrong in exactly one way. The layout below mirrors grpo_sdk::ffi for ABI major 1, written flat:
//! the SDK gathers the first five fields of every table into `PluginVTable`, which moves no byte (the SDK asserts
//! the offsets). If that layout changes, the loader tests fail and this file must follow.
#![allow(dead_code, clippy::missing_safety_doc)]

use std::ffi::c_void;

#[repr(C)]
pub struct FfiStr {
    ptr: *const u8,
    len: usize,
}

const fn s(text: &'static str) -> FfiStr {
    FfiStr {
        ptr: text.as_ptr(),
        len: text.len(),
    }
}

#[repr(C)]
pub struct FfiSlice<T> {
    ptr: *const T,
    len: usize,
}

#[repr(C)]
pub struct PluginLibrary {
    abi_major: u32,
    abi_minor: u32,
    sdk_version: FfiStr,
    libtorch_version: FfiStr,
    libtorch_cxx11_abi: u32,
    plugins: FfiSlice<PluginEntry>,
}

#[repr(C)]
pub struct PluginEntry {
    kind: u32,
    name: FfiStr,
    version: FfiStr,
    description: FfiStr,
    vtable: *const c_void,
}

#[repr(C)]
pub struct StrSink {
    ctx: *mut c_void,
    write: unsafe extern "C" fn(*mut c_void, FfiStr),
}

/// An algorithm table whose functions all fail: enough to pass validation, never meant to be called.
#[repr(C)]
pub struct AlgorithmVTable {
    size: usize,
    create: unsafe extern "C" fn(FfiStr, *mut *mut c_void, StrSink) -> u32,
    destroy: unsafe extern "C" fn(*mut c_void),
    config: unsafe extern "C" fn(*const c_void, StrSink, StrSink) -> u32,
    metrics: unsafe extern "C" fn(*const c_void, StrSink, StrSink) -> u32,
    advantages: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        FfiSlice<u64>,
        *mut *mut c_void,
        StrSink,
    ) -> u32,
    loss: unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *mut *mut c_void,
        StrSink,
        StrSink,
    ) -> u32,
}

unsafe extern "C" fn create(_: FfiStr, _: *mut *mut c_void, err: StrSink) -> u32 {
    (err.write)(err.ctx, s("this test plugin cannot be created"));
    1
}
unsafe extern "C" fn destroy(_: *mut c_void) {}
unsafe extern "C" fn text_call(_: *const c_void, _: StrSink, _: StrSink) -> u32 {
    1
}
unsafe extern "C" fn advantages(
    _: *const c_void,
    _: *mut c_void,
    _: FfiSlice<u64>,
    _: *mut *mut c_void,
    _: StrSink,
) -> u32 {
    1
}
unsafe extern "C" fn loss(
    _: *const c_void,
    _: *const c_void,
    _: *mut *mut c_void,
    _: StrSink,
    _: StrSink,
) -> u32 {
    1
}

static VTABLE: AlgorithmVTable = AlgorithmVTable {
    size: std::mem::size_of::<AlgorithmVTable>(),
    create,
    destroy,
    config: text_call,
    metrics: text_call,
    advantages,
    loss,
};

struct Sync<T>(T);
unsafe impl<T> std::marker::Sync for Sync<T> {}

fn entry(name: &'static str) -> PluginEntry {
    PluginEntry {
        kind: 1,
        name: s(name),
        version: s("0.0.1"),
        description: s("broken on purpose"),
        vtable: &VTABLE as *const AlgorithmVTable as *const c_void,
    }
}

fn library(
    abi_major: u32,
    libtorch: &'static str,
    names: &'static [&'static str],
) -> *const PluginLibrary {
    let entries: Vec<PluginEntry> = names.iter().map(|n| entry(n)).collect();
    let entries = Box::leak(entries.into_boxed_slice());
    Box::leak(Box::new(PluginLibrary {
        abi_major,
        abi_minor: 0,
        sdk_version: s("0.0.0-broken"),
        libtorch_version: s(libtorch),
        libtorch_cxx11_abi: 1,
        plugins: FfiSlice {
            ptr: entries.as_ptr(),
            len: entries.len(),
        },
    }))
}

/// The host's own libtorch version, passed in by the test at compile time.
const HOST_LIBTORCH: &str = env!("BROKEN_HOST_LIBTORCH");

#[cfg(case = "abi_major")]
#[no_mangle]
pub extern "C" fn grpo_plugin_library() -> *const PluginLibrary {
    library(99, HOST_LIBTORCH, &["future"])
}

#[cfg(case = "libtorch")]
#[no_mangle]
pub extern "C" fn grpo_plugin_library() -> *const PluginLibrary {
    library(1, "1.13.1", &["old_torch"])
}

#[cfg(case = "duplicate_in_library")]
#[no_mangle]
pub extern "C" fn grpo_plugin_library() -> *const PluginLibrary {
    library(1, HOST_LIBTORCH, &["twin", "twin"])
}

/// Valid on its own, but named like the shipped `grpo` algorithm.
#[cfg(case = "duplicate_of_grpo")]
#[no_mangle]
pub extern "C" fn grpo_plugin_library() -> *const PluginLibrary {
    library(1, HOST_LIBTORCH, &["grpo"])
}

/// Valid, with a constructor that always fails.
#[cfg(case = "constructor_fails")]
#[no_mangle]
pub extern "C" fn grpo_plugin_library() -> *const PluginLibrary {
    library(1, HOST_LIBTORCH, &["unbuildable"])
}

/// A shared library with some other symbol.
#[cfg(case = "no_entry")]
#[no_mangle]
pub extern "C" fn something_else() -> u32 {
    7
}
