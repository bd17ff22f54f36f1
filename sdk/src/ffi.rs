//! The C boundary between the host and a plugin library. Plugin authors do not use this module directly: the
//! [`export_plugins!`](crate::export_plugins) macro builds everything here from their trait implementations.
//!
//! The contract (see `docs/plugins.md` for the full story):
//!
//! - The library exports one symbol, [`ENTRY_SYMBOL`], an `extern "C" fn() -> *const PluginLibrary`. The host
//!   reads `abi_major` first and refuses any other major before it reads anything else.
//! - Within one major, [`PluginLibrary`], the vtables and [`FfiPolicyBatch`] only grow at the end; vtables and
//!   batches start with their size so either side can tell which fields the other knows.
//! - Every kind's vtable starts with the same [`PluginVTable`] (size, create, destroy, config, metrics), the
//!   functions of the parent trait [`Plugin`]; the shims behind it and the host code calling it exist once, generic
//!   over the kind ([`KindVTable`]). Nesting it changed no byte of the layout of ABI 1.0 (asserted below).
//! - Strings are UTF-8 [`FfiStr`] borrowed for the duration of a call. Strings going back are written into a
//!   [`StrSink`] the caller provides, so no allocation crosses the boundary and no side frees the other's memory.
//! - Configs, tasks, messages, outcomes and metrics travel as JSON text.
//! - Tensors travel as `at::Tensor*` handles ([`TensorPtr`]). Arguments are *borrowed* for the call: the callee
//!   makes its own shallow clone (one more reference to the same storage and autograd node). Results are *owned*:
//!   the callee gives up its handle and the caller frees it with libtorch's deleter (`tch`'s `Drop`), the one and
//!   only deallocator; both sides use the same libtorch, which the version check guarantees.
//! - Every function returns a status ([`status`]); errors and panic messages go into the `err` sink. Every shim
//!   catches panics; an instance that panicked is poisoned and refuses further calls.
//! - Libraries are never unloaded, so `&'static` data in them (names, vtables) stays valid.

use crate::{
    Algorithm, DeferredLoss, Environment, Error, LossOutput, LossSettings, Metric, Plugin, PolicyBatch, Result, Split,
    Task,
};
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};
use tch::Tensor;

/// The ABI major version. A host accepts only libraries with its own major.
pub const ABI_MAJOR: u32 = 1;
/// The ABI minor version: bumped when fields are appended. 1 appended [`FfiPolicyBatch::is_weights`]; the host
/// refuses importance weights for a library of minor 0, whose losses would silently ignore them. 2 appended
/// [`EnvironmentVTable::task_from_row`]. 3 appended [`AlgorithmVTable::loss_on_device`]. 4 appended
/// [`FfiPolicyBatch::step_token_divisor`].
pub const ABI_MINOR: u32 = 4;
/// The name of the exported entry function (without the trailing NUL).
pub const ENTRY_SYMBOL: &str = "grpo_plugin_library";

/// Status codes returned by every fallible vtable function.
pub mod status {
    /// Success; outputs are written.
    pub const OK: u32 = 0;
    /// The plugin returned an error; the message is in the `err` sink.
    pub const ERROR: u32 = 1;
    /// The plugin panicked; the message is in the `err` sink and the instance is now poisoned.
    pub const PANIC: u32 = 2;
    /// The instance panicked earlier and refuses calls.
    pub const POISONED: u32 = 3;
}

/// [`PluginEntry::kind`] of an [`Algorithm`].
pub const KIND_ALGORITHM: u32 = 1;
/// [`PluginEntry::kind`] of an [`Environment`].
pub const KIND_ENVIRONMENT: u32 = 2;

/// A borrowed UTF-8 string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiStr {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl FfiStr {
    /// Borrow `s` for a call.
    pub fn new(s: &str) -> Self {
        FfiStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// The string, checked to be UTF-8.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable for `'a`.
    pub unsafe fn to_str<'a>(self) -> std::result::Result<&'a str, std::str::Utf8Error> {
        if self.len == 0 {
            return Ok("");
        }
        std::str::from_utf8(std::slice::from_raw_parts(self.ptr, self.len))
    }
}

/// A borrowed slice.
#[repr(C)]
#[derive(Debug)]
pub struct FfiSlice<T> {
    /// First element; may be null when `len` is 0.
    pub ptr: *const T,
    /// Number of elements.
    pub len: usize,
}

// Copy whatever `T` is: the slice is a pointer and a length (a derive would require `T: Copy`).
impl<T> Clone for FfiSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for FfiSlice<T> {}

impl<T> FfiSlice<T> {
    /// Borrow `s` for a call.
    pub fn new(s: &[T]) -> Self {
        FfiSlice { ptr: s.as_ptr(), len: s.len() }
    }

    /// The slice.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid `T`s for `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [T] {
        if self.len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}

/// Where the callee writes a string for the caller: `write` may be called several times and appends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StrSink {
    /// The caller's buffer.
    pub ctx: *mut c_void,
    /// Appends `text` to the buffer.
    pub write: unsafe extern "C" fn(ctx: *mut c_void, text: FfiStr),
}

unsafe extern "C" fn append_to_string(ctx: *mut c_void, text: FfiStr) {
    // Never unwinds: a non-UTF-8 chunk (impossible from Rust callers) is replaced rather than rejected.
    let buf = &mut *(ctx as *mut String);
    let bytes = if text.len == 0 { &[][..] } else { std::slice::from_raw_parts(text.ptr, text.len) };
    buf.push_str(&String::from_utf8_lossy(bytes));
}

impl StrSink {
    /// A sink appending to `buf`, which must outlive every use of the sink.
    pub fn for_string(buf: &mut String) -> Self {
        StrSink { ctx: buf as *mut String as *mut c_void, write: append_to_string }
    }

    /// Write `text` into the sink.
    pub fn put(&self, text: &str) {
        // SAFETY: the caller built this sink for the duration of the call.
        unsafe { (self.write)(self.ctx, FfiStr::new(text)) }
    }
}

/// An `at::Tensor*` (tch's `C_tensor`), borrowed or owned as the function's documentation says.
pub type TensorPtr = *mut c_void;

/// What the entry symbol returns. Fields are only ever appended within one [`ABI_MAJOR`].
#[repr(C)]
pub struct PluginLibrary {
    /// Must equal the host's [`ABI_MAJOR`]; read before anything else.
    pub abi_major: u32,
    /// The library's [`ABI_MINOR`].
    pub abi_minor: u32,
    /// The `grpo-sdk` version the library was built with.
    pub sdk_version: FfiStr,
    /// The libtorch version it was compiled against ([`crate::LIBTORCH_VERSION`]).
    pub libtorch_version: FfiStr,
    /// 1 when its libtorch glue uses the C++11 ABI ([`crate::LIBTORCH_CXX11_ABI`]).
    pub libtorch_cxx11_abi: u32,
    /// The plugins it exports.
    pub plugins: FfiSlice<PluginEntry>,
}

/// One plugin in a library.
#[repr(C)]
pub struct PluginEntry {
    /// [`KIND_ALGORITHM`] or [`KIND_ENVIRONMENT`].
    pub kind: u32,
    /// The name users select it by.
    pub name: FfiStr,
    /// The plugin crate's version.
    pub version: FfiStr,
    /// One line describing it.
    pub description: FfiStr,
    /// `*const AlgorithmVTable` or `*const EnvironmentVTable`, by `kind`.
    pub vtable: *const c_void,
}

/// The functions every plugin kind has (those of [`Plugin`] and [`crate::MetricSource`]), at the start of each
/// kind's vtable. `this` is the instance made by `create`.
#[repr(C)]
pub struct PluginVTable {
    /// `size_of` the whole kind's vtable (not of this part) in the library; fields beyond it do not exist.
    pub size: usize,
    /// Build an instance from JSON config text; on success writes it to `out`.
    pub create: unsafe extern "C" fn(config: FfiStr, out: *mut *mut c_void, err: StrSink) -> u32,
    /// Drop an instance (panics are caught and swallowed).
    pub destroy: unsafe extern "C" fn(this: *mut c_void),
    /// The resolved config as JSON.
    pub config: unsafe extern "C" fn(this: *const c_void, out: StrSink, err: StrSink) -> u32,
    /// The instance's metrics as a JSON array of [`Metric`].
    pub metrics: unsafe extern "C" fn(this: *const c_void, out: StrSink, err: StrSink) -> u32,
}

/// A kind's vtable type: what lets the host's wrapper and the SDK's entry builder be written once for every kind.
pub trait KindVTable: Sync + 'static {
    /// The [`PluginEntry::kind`] whose `vtable` points at this type.
    const KIND: u32;

    /// The functions shared by every kind, at the start of the table.
    fn plugin(&self) -> &PluginVTable;
}

/// The functions of an algorithm plugin.
#[repr(C)]
pub struct AlgorithmVTable {
    /// Config, metrics and the instance's life; `plugin.size` is `size_of::<AlgorithmVTable>()`.
    pub plugin: PluginVTable,
    /// Advantages of borrowed `[N]` rewards for groups of the given sizes; writes an owned tensor to `out`.
    pub advantages: unsafe extern "C" fn(
        this: *const c_void,
        rewards: TensorPtr,
        groups: FfiSlice<u64>,
        out: *mut TensorPtr,
        err: StrSink,
    ) -> u32,
    /// The loss of a borrowed batch; writes an owned scalar to `out_loss` and a JSON metric array to `out_metrics`,
    /// with the device metrics read into numbers (what a host older than ABI 1.3 calls).
    pub loss: unsafe extern "C" fn(
        this: *const c_void,
        batch: *const FfiPolicyBatch,
        out_loss: *mut TensorPtr,
        out_metrics: StrSink,
        err: StrSink,
    ) -> u32,
    /// The same loss with its device metrics left on the device: an owned 1-D float64 tensor of their values to
    /// `out_values` (null when there are none) and their names, a JSON string array in the same order, to
    /// `out_names`. Appended in ABI 1.3: a library whose `plugin.size` is [`ALGORITHM_VTABLE_V1_2_SIZE`] has no such
    /// field.
    pub loss_on_device: unsafe extern "C" fn(
        this: *const c_void,
        batch: *const FfiPolicyBatch,
        out_loss: *mut TensorPtr,
        out_metrics: StrSink,
        out_values: *mut TensorPtr,
        out_names: StrSink,
        err: StrSink,
    ) -> u32,
}

/// The size of an algorithm table up to ABI 1.2, which ends after `loss`.
pub const ALGORITHM_VTABLE_V1_2_SIZE: usize = std::mem::offset_of!(AlgorithmVTable, loss_on_device);

/// [`PolicyBatch`] across the boundary; every tensor is borrowed for the call.
#[repr(C)]
pub struct FfiPolicyBatch {
    /// `size_of::<FfiPolicyBatch>()` on the host's side.
    pub size: usize,
    /// `[B, T]`, requires grad.
    pub log_probs: TensorPtr,
    /// `[B, T]`.
    pub old_log_probs: TensorPtr,
    /// `[B, T]`, or null when there is no reference model.
    pub ref_log_probs: TensorPtr,
    /// `[B]`.
    pub advantages: TensorPtr,
    /// `[B, T]` bool.
    pub action_mask: TensorPtr,
    /// Loss hyper-parameters.
    pub settings: LossSettings,
    /// `[B, T]` truncated importance weights, or null (ABI 1.1; a 1.0 host's batch ends before this field).
    pub is_weights: TensorPtr,
    /// [`PolicyBatch::step_token_divisor`], or 0 for `None` (ABI 1.4; an older host's batch ends before it).
    pub step_token_divisor: f64,
}

/// The size of an ABI 1.0 batch, which ends after `settings`: the first fields every host passes.
pub const FFI_POLICY_BATCH_V1_0_SIZE: usize = std::mem::offset_of!(FfiPolicyBatch, is_weights);

/// The size of a batch from ABI 1.1 to 1.3, which ends after `is_weights`.
pub const FFI_POLICY_BATCH_V1_1_SIZE: usize = std::mem::offset_of!(FfiPolicyBatch, step_token_divisor);

/// The functions of an environment plugin; `state` is an episode.
#[repr(C)]
pub struct EnvironmentVTable {
    /// Config, metrics and the instance's life; `plugin.size` is `size_of::<EnvironmentVTable>()`.
    pub plugin: PluginVTable,
    /// Tools as a JSON array of [`crate::ToolSpec`].
    pub tools: unsafe extern "C" fn(this: *const c_void, out: StrSink, err: StrSink) -> u32,
    /// Number of tasks in a split ([`Split`] as `u32`), or -1 for an unbounded generator.
    pub task_count: unsafe extern "C" fn(this: *const c_void, split: u32, out: *mut i64, err: StrSink) -> u32,
    /// One task as JSON.
    pub task:
        unsafe extern "C" fn(this: *const c_void, split: u32, seed: u64, index: u64, out: StrSink, err: StrSink) -> u32,
    /// Open an episode for a JSON task: writes the state to `out_state` and the opening messages (JSON) to `out`.
    pub reset: unsafe extern "C" fn(
        this: *const c_void,
        task: FfiStr,
        out_state: *mut *mut c_void,
        out: StrSink,
        err: StrSink,
    ) -> u32,
    /// One assistant turn; writes a JSON [`crate::StepOutcome`]. Different states may be stepped concurrently.
    pub step:
        unsafe extern "C" fn(this: *const c_void, state: *mut c_void, text: FfiStr, out: StrSink, err: StrSink) -> u32,
    /// Drop an episode's state.
    pub drop_state: unsafe extern "C" fn(this: *const c_void, state: *mut c_void),
    /// A demonstration for a JSON task: writes JSON `null` or an array of assistant turns (strings). Appended after
    /// ABI 1.0: a library whose `plugin.size` is [`ENVIRONMENT_VTABLE_V1_0_SIZE`] has no such field.
    pub demonstration: unsafe extern "C" fn(this: *const c_void, task: FfiStr, out: StrSink, err: StrSink) -> u32,
    /// One dataset row (a JSON object) of a split into a task: writes JSON `null` (the row is skipped) or a task.
    /// Appended after `demonstration` (ABI 1.2): a library whose `plugin.size` is [`ENVIRONMENT_VTABLE_V1_1_SIZE`]
    /// has no such field.
    pub task_from_row: unsafe extern "C" fn(
        this: *const c_void,
        split: u32,
        index: u64,
        row: FfiStr,
        out: StrSink,
        err: StrSink,
    ) -> u32,
}

/// The size of an ABI 1.0 environment table, which ends after `drop_state`: every field a host may rely on.
pub const ENVIRONMENT_VTABLE_V1_0_SIZE: usize = std::mem::offset_of!(EnvironmentVTable, demonstration);

/// The size of an environment table with `demonstration` but without `task_from_row` (ABI 1.1).
pub const ENVIRONMENT_VTABLE_V1_1_SIZE: usize = std::mem::offset_of!(EnvironmentVTable, task_from_row);

impl KindVTable for AlgorithmVTable {
    const KIND: u32 = KIND_ALGORITHM;
    fn plugin(&self) -> &PluginVTable {
        &self.plugin
    }
}

impl KindVTable for EnvironmentVTable {
    const KIND: u32 = KIND_ENVIRONMENT;
    fn plugin(&self) -> &PluginVTable {
        &self.plugin
    }
}

// ABI 1.0 laid the five common functions out flat at the start of each table; nesting them in `PluginVTable` must
// leave every offset as it was (libraries built before the nesting, and tests/broken_plugins, rely on it).
const _: () = {
    use std::mem::{offset_of, size_of};
    let word = size_of::<usize>();
    assert!(size_of::<PluginVTable>() == 5 * word);
    assert!(offset_of!(PluginVTable, metrics) == 4 * word);
    assert!(offset_of!(AlgorithmVTable, advantages) == 5 * word);
    assert!(ALGORITHM_VTABLE_V1_2_SIZE == 7 * word);
    // Appended in 1.3: the loss with device metrics.
    assert!(size_of::<AlgorithmVTable>() == 8 * word);
    // ABI 1.0's batch: six words, then the settings; 1.1 appended the importance weights.
    assert!(FFI_POLICY_BATCH_V1_0_SIZE == 6 * word + size_of::<LossSettings>());
    assert!(FFI_POLICY_BATCH_V1_1_SIZE == FFI_POLICY_BATCH_V1_0_SIZE + word);
    // Appended in 1.4: the step's token divisor.
    assert!(size_of::<FfiPolicyBatch>() == FFI_POLICY_BATCH_V1_1_SIZE + 8);
    assert!(offset_of!(EnvironmentVTable, tools) == 5 * word);
    assert!(offset_of!(EnvironmentVTable, drop_state) == 10 * word);
    assert!(ENVIRONMENT_VTABLE_V1_0_SIZE == 11 * word);
    // Appended after 1.0: the demonstration call.
    assert!(offset_of!(EnvironmentVTable, demonstration) == 11 * word);
    assert!(ENVIRONMENT_VTABLE_V1_1_SIZE == 12 * word);
    // Appended after 1.1: the dataset-row call.
    assert!(offset_of!(EnvironmentVTable, task_from_row) == 12 * word);
    assert!(size_of::<EnvironmentVTable>() == 13 * word);
};

// ---------------------------------------------------------------------------------------------------------------
// Plugin side: the descriptor and the shims generated for each exported type.

/// Owns a library's descriptor and its entries; built once by [`export_plugins!`](crate::export_plugins).
pub struct LibraryDescriptor {
    library: PluginLibrary,
    _entries: Vec<PluginEntry>,
}

// SAFETY: the raw pointers point at `'static` strings and vtables and at `_entries`, which is never mutated.
unsafe impl Send for LibraryDescriptor {}
unsafe impl Sync for LibraryDescriptor {}

impl LibraryDescriptor {
    /// A descriptor listing `entries`, stamped with this SDK's ABI and libtorch versions.
    pub fn new(entries: Vec<PluginEntry>) -> Self {
        install_panic_hook();
        LibraryDescriptor {
            library: PluginLibrary {
                abi_major: ABI_MAJOR,
                abi_minor: ABI_MINOR,
                sdk_version: FfiStr::new(crate::SDK_VERSION),
                libtorch_version: FfiStr::new(crate::LIBTORCH_VERSION),
                libtorch_cxx11_abi: crate::LIBTORCH_CXX11_ABI as u32,
                plugins: FfiSlice::new(&entries),
            },
            _entries: entries,
        }
    }

    /// The pointer the entry symbol returns.
    pub fn as_ptr(&self) -> *const PluginLibrary {
        &self.library
    }
}

/// Run `build` (the body of the entry symbol) without letting a panic escape; a panic yields null.
pub fn entry_guard(build: impl FnOnce() -> *const PluginLibrary) -> *const PluginLibrary {
    catch_unwind(AssertUnwindSafe(build)).unwrap_or(std::ptr::null())
}

/// The common part of `T`'s vtable, for a kind's table of type `V`.
fn plugin_vtable<T: Plugin, V: KindVTable>() -> PluginVTable {
    PluginVTable {
        size: std::mem::size_of::<V>(),
        create: create::<T>,
        destroy: destroy::<T>,
        config: config::<T>,
        metrics: metrics::<T>,
    }
}

/// The entry for plugin `T` whose kind's functions are `vtable` (leaked: libraries are never unloaded).
fn entry<T: Plugin, V: KindVTable>(version: &'static str, vtable: V) -> PluginEntry {
    let vtable: &'static V = Box::leak(Box::new(vtable));
    PluginEntry {
        kind: V::KIND,
        name: FfiStr::new(T::NAME),
        version: FfiStr::new(version),
        description: FfiStr::new(T::DESCRIPTION),
        vtable: vtable as *const V as *const c_void,
    }
}

/// The entry for algorithm `T` of a library whose crate version is `version`.
pub fn algorithm_entry<T: Algorithm>(version: &'static str) -> PluginEntry {
    let vtable = AlgorithmVTable {
        plugin: plugin_vtable::<T, AlgorithmVTable>(),
        advantages: alg_advantages::<T>,
        loss: alg_loss::<T>,
        loss_on_device: alg_loss_on_device::<T>,
    };
    entry::<T, _>(version, vtable)
}

/// The entry for environment `T` of a library whose crate version is `version`.
pub fn environment_entry<T: Environment>(version: &'static str) -> PluginEntry {
    let vtable = EnvironmentVTable {
        plugin: plugin_vtable::<T, EnvironmentVTable>(),
        tools: env_tools::<T>,
        task_count: env_task_count::<T>,
        task: env_task::<T>,
        reset: env_reset::<T>,
        step: env_step::<T>,
        drop_state: env_drop_state::<T>,
        demonstration: env_demonstration::<T>,
        task_from_row: env_task_from_row::<T>,
    };
    entry::<T, _>(version, vtable)
}

/// A plugin instance and whether it has panicked (with the message, for later refusals).
struct Instance<T> {
    plugin: T,
    poisoned: Mutex<Option<String>>,
}

thread_local! {
    /// Set while a shim runs, so the panic hook records instead of printing.
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
    /// The last panic's message and location, recorded by the hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chain a panic hook that, inside a shim, records the message and location instead of printing a backtrace to the
/// user's terminal; elsewhere the previous hook runs unchanged.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_SHIM.with(|s| s.get()) {
                let message = panic_message(info.payload());
                let text = match info.location() {
                    Some(loc) => format!("{message} (at {}:{})", loc.file(), loc.line()),
                    None => message,
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info)
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Run `f`, turning a panic into its message.
fn catch<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    let outer = IN_SHIM.with(|s| s.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_SHIM.with(|s| s.set(outer));
    result.map_err(|payload| LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| panic_message(&*payload)))
}

/// The common body of every instance call: refuse when poisoned, catch panics, report errors.
unsafe fn call<T>(this: *const c_void, err: StrSink, f: impl FnOnce(&T) -> Result<()>) -> u32 {
    if this.is_null() {
        err.put("null plugin instance");
        return status::ERROR;
    }
    let inst = &*(this as *const Instance<T>);
    let earlier = inst.poisoned.lock().map(|p| p.clone()).unwrap_or_else(|e| e.into_inner().clone());
    if let Some(message) = earlier {
        err.put(&format!("refused: the plugin panicked earlier ({message})"));
        return status::POISONED;
    }
    match catch(|| f(&inst.plugin)) {
        Ok(Ok(())) => status::OK,
        Ok(Err(e)) => {
            err.put(e.message());
            status::ERROR
        }
        Err(message) => {
            err.put(&format!("panicked: {message}"));
            let mut slot = inst.poisoned.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(message);
            status::PANIC
        }
    }
}

/// Build an instance of `T` from JSON config text (empty text means `null`).
unsafe extern "C" fn create<T: Plugin>(config: FfiStr, out: *mut *mut c_void, err: StrSink) -> u32 {
    install_panic_hook();
    let result = catch(|| -> Result<*mut c_void> {
        let text = config.to_str().map_err(|e| Error::msg(format!("config is not UTF-8: {e}")))?;
        let value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(text).map_err(|e| Error::msg(format!("config is not valid JSON: {e}")))?
        };
        let plugin = T::new(value)?;
        let inst = Box::new(Instance { plugin, poisoned: Mutex::new(None) });
        Ok(Box::into_raw(inst) as *mut c_void)
    });
    match result {
        Ok(Ok(ptr)) => {
            *out = ptr;
            status::OK
        }
        Ok(Err(e)) => {
            err.put(e.message());
            status::ERROR
        }
        Err(message) => {
            err.put(&format!("panicked: {message}"));
            status::PANIC
        }
    }
}

unsafe extern "C" fn destroy<T>(this: *mut c_void) {
    if !this.is_null() {
        // A panicking destructor is swallowed: there is nobody left to report it to.
        let _ = catch(|| drop(Box::from_raw(this as *mut Instance<T>)));
    }
}

fn to_json<S: serde::Serialize>(value: &S) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::msg(format!("cannot encode as JSON: {e}")))
}

/// [`call`] for the many functions whose one output is JSON written to `out`.
unsafe fn call_json<T, R: serde::Serialize>(
    this: *const c_void,
    out: StrSink,
    err: StrSink,
    f: impl FnOnce(&T) -> Result<R>,
) -> u32 {
    call::<T>(this, err, |p| {
        out.put(&to_json(&f(p)?)?);
        Ok(())
    })
}

unsafe extern "C" fn config<T: Plugin>(this: *const c_void, out: StrSink, err: StrSink) -> u32 {
    call_json::<T, _>(this, out, err, |p| Ok(p.config()))
}

unsafe extern "C" fn metrics<T: Plugin>(this: *const c_void, out: StrSink, err: StrSink) -> u32 {
    call_json::<T, _>(this, out, err, |p| Ok(p.metrics()))
}

/// Take a shallow clone of a borrowed tensor handle.
unsafe fn borrow_tensor(ptr: TensorPtr, what: &str) -> Result<Tensor> {
    if ptr.is_null() {
        return Err(Error::msg(format!("the host passed no tensor for {what}")));
    }
    Ok(Tensor::clone_from_ptr(ptr as *mut torch_sys::C_tensor))
}

/// Give up our handle so the receiver owns (and frees) it.
pub fn into_raw_tensor(mut t: Tensor) -> TensorPtr {
    let ptr = t.as_mut_ptr() as TensorPtr;
    std::mem::forget(t);
    ptr
}

/// Check a tensor a plugin returns: defined, so the host never receives an empty handle.
fn check_defined(t: &Tensor, what: &str) -> Result<()> {
    if t.defined() {
        Ok(())
    } else {
        Err(Error::msg(format!("{what} returned an undefined tensor")))
    }
}

unsafe extern "C" fn alg_advantages<T: Algorithm>(
    this: *const c_void,
    rewards: TensorPtr,
    groups: FfiSlice<u64>,
    out: *mut TensorPtr,
    err: StrSink,
) -> u32 {
    call::<T>(this, err, |p| {
        let rewards = borrow_tensor(rewards, "rewards")?;
        let groups: Vec<usize> = groups.as_slice().iter().map(|&g| g as usize).collect();
        let adv = p.advantages(&rewards, &groups)?;
        check_defined(&adv, "advantages")?;
        *out = into_raw_tensor(adv);
        Ok(())
    })
}

unsafe extern "C" fn alg_loss<T: Algorithm>(
    this: *const c_void,
    batch: *const FfiPolicyBatch,
    out_loss: *mut TensorPtr,
    out_metrics: StrSink,
    err: StrSink,
) -> u32 {
    call::<T>(this, err, |p| {
        let LossOutput { loss, metrics } = p.loss(&policy_batch(batch)?)?;
        check_defined(&loss, "loss")?;
        out_metrics.put(&to_json(&metrics)?);
        *out_loss = into_raw_tensor(loss);
        Ok(())
    })
}

unsafe extern "C" fn alg_loss_on_device<T: Algorithm>(
    this: *const c_void,
    batch: *const FfiPolicyBatch,
    out_loss: *mut TensorPtr,
    out_metrics: StrSink,
    out_values: *mut TensorPtr,
    out_names: StrSink,
    err: StrSink,
) -> u32 {
    call::<T>(this, err, |p| {
        let DeferredLoss { loss, metrics, device_metrics } = p.loss_deferred(&policy_batch(batch)?)?;
        check_defined(&loss, "loss")?;
        let mut names = Vec::with_capacity(device_metrics.len());
        let mut values = Vec::with_capacity(device_metrics.len());
        for (name, t) in device_metrics {
            crate::algorithm::check_device_metric(&name, &t)?;
            values.push(t.detach().to_kind(tch::Kind::Double).reshape([1]));
            names.push(name);
        }
        out_metrics.put(&to_json(&metrics)?);
        out_names.put(&to_json(&names)?);
        *out_values = if values.is_empty() { std::ptr::null_mut() } else { into_raw_tensor(Tensor::cat(&values, 0)) };
        *out_loss = into_raw_tensor(loss);
        Ok(())
    })
}

/// The host's batch as the plugin sees it, after checking its size.
///
/// # Safety
/// `batch` is null or points at a batch of at least the size it states, whose tensors outlive the call.
unsafe fn policy_batch(batch: *const FfiPolicyBatch) -> Result<PolicyBatch> {
    let b = batch.as_ref().ok_or_else(|| Error::msg("the host passed no batch"))?;
    if b.size < FFI_POLICY_BATCH_V1_0_SIZE {
        return Err(Error::msg("the host's batch is smaller than ABI 1.0's; the host is broken or not grpo-rs"));
    }
    let optional = |ptr: TensorPtr, what: &str| -> Result<Option<Tensor>> {
        if ptr.is_null() {
            Ok(None)
        } else {
            borrow_tensor(ptr, what).map(Some)
        }
    };
    let ref_log_probs = optional(b.ref_log_probs, "ref_log_probs")?;
    // An older host's batch ends before the fields appended since: reading one would read past its struct.
    let is_weights = if b.size >= FFI_POLICY_BATCH_V1_1_SIZE { optional(b.is_weights, "is_weights")? } else { None };
    let step_token_divisor = if b.size >= std::mem::size_of::<FfiPolicyBatch>() && b.step_token_divisor != 0.0 {
        Some(b.step_token_divisor)
    } else {
        None
    };
    Ok(PolicyBatch {
        log_probs: borrow_tensor(b.log_probs, "log_probs")?,
        old_log_probs: borrow_tensor(b.old_log_probs, "old_log_probs")?,
        ref_log_probs,
        advantages: borrow_tensor(b.advantages, "advantages")?,
        action_mask: borrow_tensor(b.action_mask, "action_mask")?,
        settings: b.settings,
        is_weights,
        step_token_divisor,
    })
}

unsafe extern "C" fn env_tools<T: Environment>(this: *const c_void, out: StrSink, err: StrSink) -> u32 {
    call_json::<T, _>(this, out, err, |p| Ok(p.tools()))
}

fn split_from(split: u32) -> Result<Split> {
    match split {
        0 => Ok(Split::Train),
        1 => Ok(Split::Eval),
        other => Err(Error::msg(format!("unknown split number {other}"))),
    }
}

unsafe extern "C" fn env_task_count<T: Environment>(
    this: *const c_void,
    split: u32,
    out: *mut i64,
    err: StrSink,
) -> u32 {
    call::<T>(this, err, |p| {
        *out = match p.task_count(split_from(split)?) {
            Some(n) => i64::try_from(n).map_err(|_| Error::msg("task count does not fit in i64"))?,
            None => -1,
        };
        Ok(())
    })
}

unsafe extern "C" fn env_task<T: Environment>(
    this: *const c_void,
    split: u32,
    seed: u64,
    index: u64,
    out: StrSink,
    err: StrSink,
) -> u32 {
    call_json::<T, _>(this, out, err, |p| p.task(split_from(split)?, seed, index))
}

unsafe extern "C" fn env_reset<T: Environment>(
    this: *const c_void,
    task: FfiStr,
    out_state: *mut *mut c_void,
    out: StrSink,
    err: StrSink,
) -> u32 {
    call::<T>(this, err, |p| {
        let text = task.to_str().map_err(|e| Error::msg(format!("task is not UTF-8: {e}")))?;
        let task: Task = serde_json::from_str(text).map_err(|e| Error::msg(format!("task is not valid JSON: {e}")))?;
        let (state, messages) = p.reset(&task)?;
        out.put(&to_json(&messages)?);
        *out_state = Box::into_raw(Box::new(state)) as *mut c_void;
        Ok(())
    })
}

unsafe extern "C" fn env_step<T: Environment>(
    this: *const c_void,
    state: *mut c_void,
    text: FfiStr,
    out: StrSink,
    err: StrSink,
) -> u32 {
    call_json::<T, _>(this, out, err, |p| {
        let state = (state as *mut T::State).as_mut().ok_or_else(|| Error::msg("the host passed no episode state"))?;
        let text = text.to_str().map_err(|e| Error::msg(format!("assistant text is not UTF-8: {e}")))?;
        let outcome = p.step(state, text)?;
        if let Some(bad) = outcome.rewards.iter().find(|r| !r.value.is_finite()) {
            return Err(Error::msg(format!("reward `{}` is not finite ({})", bad.name, bad.value)));
        }
        Ok(outcome)
    })
}

unsafe extern "C" fn env_drop_state<T: Environment>(_this: *const c_void, state: *mut c_void) {
    if !state.is_null() {
        let _ = catch(|| drop(Box::from_raw(state as *mut T::State)));
    }
}

unsafe extern "C" fn env_demonstration<T: Environment>(
    this: *const c_void,
    task: FfiStr,
    out: StrSink,
    err: StrSink,
) -> u32 {
    call_json::<T, _>(this, out, err, |p| {
        let text = task.to_str().map_err(|e| Error::msg(format!("task is not UTF-8: {e}")))?;
        let task: Task = serde_json::from_str(text).map_err(|e| Error::msg(format!("task is not valid JSON: {e}")))?;
        p.demonstration(&task)
    })
}

unsafe extern "C" fn env_task_from_row<T: Environment>(
    this: *const c_void,
    split: u32,
    index: u64,
    row: FfiStr,
    out: StrSink,
    err: StrSink,
) -> u32 {
    call_json::<T, _>(this, out, err, |p| {
        let text = row.to_str().map_err(|e| Error::msg(format!("row is not UTF-8: {e}")))?;
        let row: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::msg(format!("row is not valid JSON: {e}")))?;
        p.task_from_row(split_from(split)?, index, &row)
    })
}

/// Decode a metric array written by a plugin (used by the host).
pub fn decode_metrics(json: &str) -> std::result::Result<Vec<Metric>, serde_json::Error> {
    serde_json::from_str(json)
}

/// Export the plugins of this library. Write it once, at the crate root of a `cdylib`, naming every exported type
/// with its kind (`algorithm` or `environment`), for example
/// `grpo_sdk::export_plugins!(environment Calculator, environment Search, algorithm MyLoss);`.
///
/// It defines the library's entry symbol; the version reported for each plugin is the crate's `Cargo.toml`
/// version.
///
/// ```
/// use grpo_sdk::tch::Tensor;
/// use grpo_sdk::{Algorithm, LossOutput, MetricSource, Plugin, PolicyBatch};
///
/// struct Zero;
/// impl MetricSource for Zero {}
/// impl Plugin for Zero {
///     const NAME: &'static str = "zero";
///     const DESCRIPTION: &'static str = "learns nothing";
///     fn new(_: serde_json::Value) -> grpo_sdk::Result<Self> { Ok(Zero) }
///     fn config(&self) -> serde_json::Value { serde_json::Value::Null }
/// }
/// impl Algorithm for Zero {
///     fn advantages(&self, r: &Tensor, _: &[usize]) -> grpo_sdk::Result<Tensor> { Ok(r.zeros_like()) }
///     fn loss(&self, b: &PolicyBatch) -> grpo_sdk::Result<LossOutput> {
///         Ok(LossOutput::new((&b.log_probs * 0.0).sum(None)))
///     }
/// }
///
/// grpo_sdk::export_plugins!(algorithm Zero);
///
/// // What the host sees when it looks the symbol up:
/// let library = unsafe { &*grpo_plugin_library() };
/// assert_eq!(library.abi_major, grpo_sdk::ffi::ABI_MAJOR);
/// let entry = unsafe { &library.plugins.as_slice()[0] };
/// assert_eq!(unsafe { entry.name.to_str() }.unwrap(), "zero");
/// assert_eq!(entry.kind, grpo_sdk::ffi::KIND_ALGORITHM);
/// ```
#[macro_export]
macro_rules! export_plugins {
    ($($kind:ident $ty:ty),+ $(,)?) => {
        /// The entry symbol the grpo-rs host looks up (generated by `grpo_sdk::export_plugins!`).
        #[no_mangle]
        pub extern "C" fn grpo_plugin_library() -> *const $crate::ffi::PluginLibrary {
            static LIBRARY: ::std::sync::OnceLock<$crate::ffi::LibraryDescriptor> = ::std::sync::OnceLock::new();
            $crate::ffi::entry_guard(|| {
                LIBRARY
                    .get_or_init(|| {
                        $crate::ffi::LibraryDescriptor::new(::std::vec![
                            $($crate::export_plugins!(@entry $kind $ty)),+
                        ])
                    })
                    .as_ptr()
            })
        }
    };
    (@entry algorithm $ty:ty) => {
        $crate::ffi::algorithm_entry::<$ty>(env!("CARGO_PKG_VERSION"))
    };
    (@entry environment $ty:ty) => {
        $crate::ffi::environment_entry::<$ty>(env!("CARGO_PKG_VERSION"))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricSource;

    /// Panics in `loss`, unless the batch has importance weights.
    struct Panicky;
    impl MetricSource for Panicky {}
    impl Plugin for Panicky {
        const NAME: &'static str = "panicky";
        const DESCRIPTION: &'static str = "panics in loss";
        fn new(config: serde_json::Value) -> Result<Self> {
            match config.get("fail") {
                Some(_) => Err(Error::msg("asked to fail")),
                None => Ok(Panicky),
            }
        }
        fn config(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }
    impl Algorithm for Panicky {
        fn advantages(&self, rewards: &Tensor, _: &[usize]) -> Result<Tensor> {
            Ok(rewards.zeros_like())
        }
        fn loss(&self, b: &PolicyBatch) -> Result<LossOutput> {
            self.loss_deferred(b)?.read()
        }
        /// The sum of the batch's importance weights when it has them (to see them cross), plus 100 times its step
        /// token divisor when it has one, else a panic; their count as a host metric and their largest as a device
        /// metric.
        fn loss_deferred(&self, b: &PolicyBatch) -> Result<DeferredLoss> {
            let divisor = b.step_token_divisor.map_or(0.0, |d| 100.0 * d);
            match &b.is_weights {
                Some(w) => Ok(DeferredLoss::new(w.sum(tch::Kind::Float) + divisor)
                    .with_metric(Metric::number("panicky/rows", w.size()[0] as f64))
                    .with_device_metric("panicky/max_weight", w.max())),
                None => panic!("boom"),
            }
        }
    }

    /// Counts its `config` calls, to see the common shims reach the right instance.
    struct Still(std::sync::atomic::AtomicU64);
    impl MetricSource for Still {
        fn metrics(&self) -> Vec<Metric> {
            vec![Metric::number("still/configs", self.0.load(std::sync::atomic::Ordering::Relaxed) as f64)]
        }
    }
    impl Plugin for Still {
        const NAME: &'static str = "still";
        const DESCRIPTION: &'static str = "one task, never done";
        fn new(config: serde_json::Value) -> Result<Self> {
            Ok(Still(std::sync::atomic::AtomicU64::new(config["start"].as_u64().unwrap_or(0))))
        }
        fn config(&self) -> serde_json::Value {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({ "start": n })
        }
    }
    impl Environment for Still {
        type State = ();
        fn task_count(&self, _: Split) -> Option<u64> {
            Some(1)
        }
        fn task(&self, _: Split, _: u64, _: u64) -> Result<Task> {
            Ok(Task::new("0", "?", "!"))
        }
        fn reset(&self, _: &Task) -> Result<((), Vec<crate::Message>)> {
            Ok(((), Vec::new()))
        }
        fn step(&self, _: &mut (), _: &str) -> Result<crate::StepOutcome> {
            Ok(crate::StepOutcome::finished(Vec::new()))
        }
    }

    /// Calls `config` then `metrics` through the common part of a kind's table and returns both JSON texts.
    fn common_calls(plugin: &PluginVTable, config: &str) -> (String, String) {
        let (mut err, mut out_config, mut out_metrics) = (String::new(), String::new(), String::new());
        let mut this: *mut c_void = std::ptr::null_mut();
        unsafe {
            assert_eq!((plugin.create)(FfiStr::new(config), &mut this, StrSink::for_string(&mut err)), status::OK);
            let code = (plugin.config)(this, StrSink::for_string(&mut out_config), StrSink::for_string(&mut err));
            assert_eq!(code, status::OK);
            let code = (plugin.metrics)(this, StrSink::for_string(&mut out_metrics), StrSink::for_string(&mut err));
            assert_eq!(code, status::OK);
            (plugin.destroy)(this);
        }
        assert_eq!(err, "");
        (out_config, out_metrics)
    }

    /// A batch whose every tensor is `x`, of `size` bytes (an older host's is shorter), with importance weights
    /// `weights` (null for none) and the step token divisor `divisor` (0 for none).
    fn ffi_batch(x: &Tensor, size: usize, weights: TensorPtr, divisor: f64) -> FfiPolicyBatch {
        FfiPolicyBatch {
            size,
            log_probs: x.as_ptr() as TensorPtr,
            old_log_probs: x.as_ptr() as TensorPtr,
            ref_log_probs: std::ptr::null_mut(),
            advantages: x.as_ptr() as TensorPtr,
            action_mask: x.as_ptr() as TensorPtr,
            settings: LossSettings::default(),
            is_weights: weights,
            step_token_divisor: divisor,
        }
    }

    #[test]
    fn every_kind_starts_with_the_common_table_of_its_own_size() {
        let entry = environment_entry::<Still>("1.2.3");
        assert_eq!(entry.kind, KIND_ENVIRONMENT);
        let vt = unsafe { &*(entry.vtable as *const EnvironmentVTable) };
        assert_eq!(vt.plugin().size, std::mem::size_of::<EnvironmentVTable>());
        let (config, metrics) = common_calls(vt.plugin(), r#"{"start": 7}"#);
        assert_eq!(config, r#"{"start":7}"#);
        assert_eq!(decode_metrics(&metrics).unwrap(), vec![Metric::number("still/configs", 8.0)]);

        let entry = algorithm_entry::<Panicky>("1.2.3");
        assert_eq!(entry.kind, KIND_ALGORITHM);
        let vt = unsafe { &*(entry.vtable as *const AlgorithmVTable) };
        assert_eq!(vt.plugin().size, std::mem::size_of::<AlgorithmVTable>());
        assert_eq!(common_calls(vt.plugin(), ""), ("null".to_string(), "[]".to_string()));
    }

    #[test]
    fn shims_report_errors_catch_panics_and_poison_the_instance() {
        let entry = algorithm_entry::<Panicky>("9.9.9");
        let vt = unsafe { &*(entry.vtable as *const AlgorithmVTable) };
        let mut err = String::new();
        let mut this: *mut c_void = std::ptr::null_mut();
        let code =
            unsafe { (vt.plugin.create)(FfiStr::new(r#"{"fail": 1}"#), &mut this, StrSink::for_string(&mut err)) };
        assert_eq!((code, err.as_str()), (status::ERROR, "asked to fail"));
        err.clear();
        let code = unsafe { (vt.plugin.create)(FfiStr::new(""), &mut this, StrSink::for_string(&mut err)) };
        assert_eq!(code, status::OK);

        let x = Tensor::zeros([1, 2], (tch::Kind::Float, tch::Device::Cpu));
        let batch = ffi_batch(&x, std::mem::size_of::<FfiPolicyBatch>(), std::ptr::null_mut(), 0.0);
        let mut out: TensorPtr = std::ptr::null_mut();
        let mut metrics = String::new();
        let code = unsafe {
            (vt.loss)(this, &batch, &mut out, StrSink::for_string(&mut metrics), StrSink::for_string(&mut err))
        };
        assert_eq!(code, status::PANIC);
        assert!(err.starts_with("panicked: boom (at "), "{err}");
        assert!(out.is_null());

        // Even a host that ignores the status cannot use the instance again.
        err.clear();
        let groups = [2u64];
        let code = unsafe {
            (vt.advantages)(
                this,
                x.as_ptr() as TensorPtr,
                FfiSlice::new(&groups),
                &mut out,
                StrSink::for_string(&mut err),
            )
        };
        assert_eq!(code, status::POISONED);
        assert!(err.contains("panicked earlier (boom"), "{err}");
        unsafe { (vt.plugin.destroy)(this) };
    }

    #[test]
    fn importance_weights_and_the_token_divisor_cross_and_an_older_hosts_batch_is_read_without_them() {
        let entry = algorithm_entry::<Panicky>("1.0.0");
        let vt = unsafe { &*(entry.vtable as *const AlgorithmVTable) };
        let x = Tensor::zeros([1, 2], (tch::Kind::Float, tch::Device::Cpu));
        let w = Tensor::from_slice(&[0.5f32, 2.0]).view([1, 2]);
        // (status, loss) of one call on a fresh instance (a panic poisons it).
        let loss_of = |size: usize, weights: TensorPtr, divisor: f64| -> (u32, Option<f64>) {
            let (mut this, mut err): (*mut c_void, String) = (std::ptr::null_mut(), String::new());
            assert_eq!(unsafe { (vt.plugin.create)(FfiStr::new(""), &mut this, StrSink::for_string(&mut err)) }, 0);
            let batch = ffi_batch(&x, size, weights, divisor);
            let (mut out, mut metrics): (TensorPtr, String) = (std::ptr::null_mut(), String::new());
            let code = unsafe {
                (vt.loss)(this, &batch, &mut out, StrSink::for_string(&mut metrics), StrSink::for_string(&mut err))
            };
            let loss = (code == status::OK)
                .then(|| unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) }.double_value(&[]));
            unsafe { (vt.plugin.destroy)(this) };
            (code, loss)
        };
        let full = std::mem::size_of::<FfiPolicyBatch>();
        let w_ptr = w.as_ptr() as TensorPtr;
        assert_eq!(loss_of(full, w_ptr, 0.0), (status::OK, Some(2.5)));
        assert_eq!(loss_of(full, w_ptr, 3.0), (status::OK, Some(302.5)));
        assert_eq!(loss_of(full, std::ptr::null_mut(), 0.0), (status::PANIC, None));
        // A 1.0 host's batch ends at `settings`, a 1.3 host's at the weights: whatever follows in memory is never
        // read.
        assert_eq!(loss_of(FFI_POLICY_BATCH_V1_0_SIZE, 0x1 as TensorPtr, 3.0), (status::PANIC, None));
        assert_eq!(loss_of(FFI_POLICY_BATCH_V1_1_SIZE, w_ptr, 3.0), (status::OK, Some(2.5)));
    }

    #[test]
    fn device_metrics_stay_tensors_for_a_1_3_host_and_become_numbers_for_an_older_one() {
        let entry = algorithm_entry::<Panicky>("1.3.0");
        let vt = unsafe { &*(entry.vtable as *const AlgorithmVTable) };
        assert_eq!(vt.plugin.size, ALGORITHM_VTABLE_V1_2_SIZE + std::mem::size_of::<usize>());
        let x = Tensor::zeros([1, 2], (tch::Kind::Float, tch::Device::Cpu));
        let w = Tensor::from_slice(&[0.5f32, 2.0]).view([1, 2]);
        let batch = ffi_batch(&x, std::mem::size_of::<FfiPolicyBatch>(), w.as_ptr() as TensorPtr, 0.0);
        let (mut this, mut err): (*mut c_void, String) = (std::ptr::null_mut(), String::new());
        assert_eq!(unsafe { (vt.plugin.create)(FfiStr::new(""), &mut this, StrSink::for_string(&mut err)) }, 0);
        let adopt = |p: TensorPtr| unsafe { Tensor::from_ptr(p as *mut torch_sys::C_tensor) };

        let (mut loss, mut values, mut metrics, mut names) =
            (std::ptr::null_mut(), std::ptr::null_mut(), String::new(), String::new());
        let code = unsafe {
            (vt.loss_on_device)(
                this,
                &batch,
                &mut loss,
                StrSink::for_string(&mut metrics),
                &mut values,
                StrSink::for_string(&mut names),
                StrSink::for_string(&mut err),
            )
        };
        assert_eq!((code, err.as_str()), (status::OK, ""));
        assert_eq!(adopt(loss).double_value(&[]), 2.5);
        let values = adopt(values);
        assert_eq!((values.kind(), Vec::<f64>::try_from(&values).unwrap()), (tch::Kind::Double, vec![2.0]));
        assert_eq!(names, r#"["panicky/max_weight"]"#);
        assert_eq!(decode_metrics(&metrics).unwrap(), vec![Metric::number("panicky/rows", 1.0)]);

        // An ABI 1.2 host calls `loss`: every metric arrives as a number.
        let (mut loss, mut metrics) = (std::ptr::null_mut(), String::new());
        let code = unsafe {
            (vt.loss)(this, &batch, &mut loss, StrSink::for_string(&mut metrics), StrSink::for_string(&mut err))
        };
        assert_eq!(code, status::OK);
        assert_eq!(adopt(loss).double_value(&[]), 2.5);
        assert_eq!(
            decode_metrics(&metrics).unwrap(),
            vec![Metric::number("panicky/rows", 1.0), Metric::number("panicky/max_weight", 2.0)]
        );
        unsafe { (vt.plugin.destroy)(this) };
    }
}
