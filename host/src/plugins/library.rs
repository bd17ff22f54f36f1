//! Opening one plugin library and validating its descriptor before anything in it is called.

use super::{PluginInfo, PluginKind};
use crate::user_error;
use grpo_sdk::ffi::{self, FfiStr, KindVTable, PluginLibrary};
use std::ffi::c_void;
use std::path::Path;

/// The signature of the entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginLibrary;

/// One validated plugin of a loaded library.
#[derive(Clone)]
pub(crate) struct LoadedPlugin {
    pub info: PluginInfo,
    /// The function table of `info.kind`'s type, validated to hold at least ABI 1.0's fields; its `plugin.size` says
    /// which appended ones it has.
    vtable: *const c_void,
}

// SAFETY: the table is immutable `'static` data of a library that is never unloaded.
unsafe impl Send for LoadedPlugin {}
unsafe impl Sync for LoadedPlugin {}

impl LoadedPlugin {
    /// The function table as the type `V` of its kind; `None` when the plugin is of another kind.
    pub fn vtable<V: KindVTable>(&self) -> Option<&'static V> {
        // SAFETY: validation checked that a table of this kind is a `V` up to ABI 1.0's fields; fields appended since
        // are read only after checking `plugin.size` (as the SDK reads the host's batch).
        (self.info.kind.abi() == V::KIND).then(|| unsafe { &*(self.vtable as *const V) })
    }
}

/// Load `path` with the dynamic loader, find its entry symbol and validate what it describes. The library is
/// never unloaded (its code and `'static` data must outlive every handle into it).
pub(crate) fn open(path: &Path) -> anyhow::Result<Vec<LoadedPlugin>> {
    let shown = path.display();
    // SAFETY: loading runs the library's initialisers; that is the trust a user gives a plugin by installing it.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        let cause = e.to_string();
        let cause = cause.strip_prefix(&format!("{shown}: ")).unwrap_or(&cause).to_string();
        user_error!("plugin file {shown}: not a loadable shared library ({cause}); remove it from the plugin directory")
    })?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let symbol = format!("{}\0", ffi::ENTRY_SYMBOL);
    // SAFETY: the symbol's type is fixed by the ABI; a library exporting this name with another type is broken.
    let entry: EntryFn = unsafe { lib.get::<EntryFn>(symbol.as_bytes()) }.map(|s| *s).map_err(|_| {
        user_error!(
            "plugin file {shown}: no `{}` entry symbol, so it is not a grpo-rs plugin (plugins end with \
             `grpo_sdk::export_plugins!(...)`); remove it from the plugin directory",
            ffi::ENTRY_SYMBOL
        )
    })?;
    // SAFETY: as above.
    unsafe { validate(entry, path) }
}

/// Call `entry` and validate the descriptor it returns; `path` names the origin in messages.
///
/// # Safety
/// `entry` must be a plugin entry function (it is called, and the descriptor it returns is read up to the point
/// where the ABI major is known to match).
pub(crate) unsafe fn validate(entry: EntryFn, path: &Path) -> anyhow::Result<Vec<LoadedPlugin>> {
    let shown = path.display();
    let desc = entry();
    let Some(desc) = desc.as_ref() else {
        return Err(user_error!(
            "plugin file {shown}: its entry function failed (returned no descriptor); rebuild the plugin"
        ));
    };
    // Nothing but the major is read before it is known to match: other majors may lay out the rest differently.
    if desc.abi_major != ffi::ABI_MAJOR {
        return Err(user_error!(
            "plugin file {shown}: built for plugin ABI {} but this host speaks ABI {}; rebuild it against grpo-sdk {}",
            desc.abi_major,
            ffi::ABI_MAJOR,
            grpo_sdk::SDK_VERSION
        ));
    }
    let text = |s: FfiStr, what: &str| -> anyhow::Result<String> {
        s.to_str()
            .map(str::to_string)
            .map_err(|_| user_error!("plugin file {shown}: its {what} is not UTF-8; rebuild it"))
    };
    let torch = text(desc.libtorch_version, "libtorch version")?;
    let cxx11 = desc.libtorch_cxx11_abi != 0;
    if torch != grpo_sdk::LIBTORCH_VERSION || cxx11 != grpo_sdk::LIBTORCH_CXX11_ABI {
        return Err(user_error!(
            "plugin file {shown}: built against libtorch {torch} (C++11 ABI {cxx11}) but this host uses libtorch {} \
             (C++11 ABI {}); rebuild the plugin with the same libtorch (cargo xtask setup)",
            grpo_sdk::LIBTORCH_VERSION,
            grpo_sdk::LIBTORCH_CXX11_ABI
        ));
    }
    let sdk_version = text(desc.sdk_version, "SDK version")?;
    let mut plugins = Vec::new();
    for entry in desc.plugins.as_slice() {
        let name = text(entry.name, "plugin name")?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(user_error!(
                "plugin file {shown}: plugin name {name:?} is not usable on the command line (letters, digits, _ and -)"
            ));
        }
        if entry.vtable.is_null() {
            return Err(user_error!("plugin file {shown}: plugin `{name}` has no function table; rebuild it"));
        }
        let Some(kind) = PluginKind::from_abi(entry.kind) else {
            return Err(user_error!(
                "plugin file {shown}: plugin `{name}` has unknown kind {}; this host may be older than the plugin",
                entry.kind
            ));
        };
        // Every kind's table starts with its size (`PluginVTable::size`): read that word alone, since a shorter
        // table must not be viewed as this host's type.
        check_size(*(entry.vtable as *const usize), kind.vtable_size(), &name, path)?;
        if plugins.iter().any(|p: &LoadedPlugin| p.info.name == name) {
            return Err(user_error!(
                "plugin file {shown}: exports two plugins named `{name}`; plugin names must be unique"
            ));
        }
        plugins.push(LoadedPlugin {
            info: PluginInfo {
                name,
                kind,
                version: text(entry.version, "version")?,
                description: text(entry.description, "description")?,
                sdk_version: sdk_version.clone(),
                abi_minor: desc.abi_minor,
                file: path.to_path_buf(),
            },
            vtable: entry.vtable,
        });
    }
    Ok(plugins)
}

/// Version 1.0 of the ABI defines every field the host needs; a shorter table means a broken library.
fn check_size(size: usize, needed: usize, name: &str, path: &Path) -> anyhow::Result<()> {
    if size < needed {
        Err(user_error!(
            "plugin file {}: plugin `{name}` has a {size}-byte function table, this host needs {needed}; rebuild it",
            path.display()
        ))
    } else {
        Ok(())
    }
}
