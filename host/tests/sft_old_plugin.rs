//! An environment library built before `Environment::demonstration` existed (ABI 1.0, an 11-word table) still loads
//! and reports no demonstrations, and the host never reads past the end of its table.
//!
//! The old library is emulated in-process: a real environment's SDK shims copied into a table of ABI 1.0's layout,
//! followed by a trap in the word where the new field would be. A host that ignored the table's size would call the
//! trap and see its demonstration.

use grpo_host::plugins::Registry;
use grpo_sdk::ffi::{
    self, EnvironmentVTable, FfiSlice, FfiStr, PluginEntry, PluginLibrary, PluginVTable, StrSink,
    ENVIRONMENT_VTABLE_V1_0_SIZE,
};
use grpo_sdk::{Environment, Message, MetricSource, Plugin, Split, StepOutcome, Task};
use std::ffi::c_void;
use std::path::Path;
use std::sync::OnceLock;

/// An environment whose demonstration is "42", so the new library's answer is visible.
struct Answers;
impl MetricSource for Answers {}
impl Plugin for Answers {
    const NAME: &'static str = "answers";
    const DESCRIPTION: &'static str = "answers 42";
    fn new(_: serde_json::Value) -> grpo_sdk::Result<Self> {
        Ok(Answers)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
impl Environment for Answers {
    type State = ();
    fn task_count(&self, _: Split) -> Option<u64> {
        Some(1)
    }
    fn task(&self, _: Split, _: u64, _: u64) -> grpo_sdk::Result<Task> {
        Ok(Task::new("0", "What is 6 * 7?", "42"))
    }
    fn reset(&self, task: &Task) -> grpo_sdk::Result<((), Vec<Message>)> {
        Ok(((), vec![Message::user(&task.question)]))
    }
    fn step(&self, _: &mut (), _: &str) -> grpo_sdk::Result<StepOutcome> {
        Ok(StepOutcome::finished(vec![]))
    }
    fn demonstration(&self, _: &Task) -> grpo_sdk::Result<Option<Vec<String>>> {
        Ok(Some(vec!["42".to_string()]))
    }
}

grpo_sdk::export_plugins!(environment Answers);

/// ABI 1.0's environment table, as a library built then lays it out.
#[repr(C)]
struct OldEnvironmentVTable {
    plugin: PluginVTable,
    tools: unsafe extern "C" fn(*const c_void, StrSink, StrSink) -> u32,
    task_count: unsafe extern "C" fn(*const c_void, u32, *mut i64, StrSink) -> u32,
    task: unsafe extern "C" fn(*const c_void, u32, u64, u64, StrSink, StrSink) -> u32,
    reset: unsafe extern "C" fn(*const c_void, FfiStr, *mut *mut c_void, StrSink, StrSink) -> u32,
    step: unsafe extern "C" fn(*const c_void, *mut c_void, FfiStr, StrSink, StrSink) -> u32,
    drop_state: unsafe extern "C" fn(*const c_void, *mut c_void),
}

/// The old table and, right after it, whatever the library happens to have there: here a trap.
#[repr(C)]
struct OldTableThenTrap {
    table: OldEnvironmentVTable,
    trap: unsafe extern "C" fn(*const c_void, FfiStr, StrSink, StrSink) -> u32,
}

unsafe extern "C" fn trap(_: *const c_void, _: FfiStr, out: StrSink, _: StrSink) -> u32 {
    out.put(r#"["read past the end of an ABI 1.0 table"]"#);
    ffi::status::OK
}

struct Static<T>(T);
// SAFETY: immutable after construction; the pointers point at leaked or static data.
unsafe impl<T> Sync for Static<T> {}
unsafe impl<T> Send for Static<T> {}

/// The entry symbol of the emulated old library: the new library's shims in the old layout, minor 0.
unsafe extern "C" fn old_library() -> *const PluginLibrary {
    static LIBRARY: OnceLock<Static<PluginLibrary>> = OnceLock::new();
    let library = LIBRARY.get_or_init(|| {
        let new = &*grpo_plugin_library();
        let entry = &new.plugins.as_slice()[0];
        let vt = &*(entry.vtable as *const EnvironmentVTable);
        let table = Box::leak(Box::new(OldTableThenTrap {
            table: OldEnvironmentVTable {
                plugin: PluginVTable {
                    size: std::mem::size_of::<OldEnvironmentVTable>(),
                    create: vt.plugin.create,
                    destroy: vt.plugin.destroy,
                    config: vt.plugin.config,
                    metrics: vt.plugin.metrics,
                },
                tools: vt.tools,
                task_count: vt.task_count,
                task: vt.task,
                reset: vt.reset,
                step: vt.step,
                drop_state: vt.drop_state,
            },
            trap,
        }));
        let entries = Box::leak(Box::new([PluginEntry {
            kind: ffi::KIND_ENVIRONMENT,
            name: FfiStr::new("old_answers"),
            version: FfiStr::new("0.0.1"),
            description: FfiStr::new("built before demonstrations"),
            vtable: table as *const OldTableThenTrap as *const c_void,
        }]));
        Static(PluginLibrary {
            abi_major: ffi::ABI_MAJOR,
            abi_minor: 0,
            sdk_version: FfiStr::new("0.1.0-old"),
            libtorch_version: FfiStr::new(grpo_sdk::LIBTORCH_VERSION),
            libtorch_cxx11_abi: grpo_sdk::LIBTORCH_CXX11_ABI as u32,
            plugins: FfiSlice::new(&entries[..]),
        })
    });
    &library.0
}

#[test]
fn the_emulated_library_has_abi_1_0s_layout() {
    assert_eq!(std::mem::size_of::<OldEnvironmentVTable>(), ENVIRONMENT_VTABLE_V1_0_SIZE);
    assert!(ENVIRONMENT_VTABLE_V1_0_SIZE < std::mem::size_of::<EnvironmentVTable>());
}

#[test]
fn an_old_environment_loads_plays_and_has_no_demonstrations() {
    let mut registry = Registry::default();
    // SAFETY: both entry functions return valid descriptors (above, and generated by export_plugins!).
    unsafe {
        registry.add_in_process(old_library, Path::new("old-library")).unwrap();
        registry.add_in_process(grpo_plugin_library, Path::new("new-library")).unwrap();
    }
    let old = registry.environment("old_answers", &serde_json::Value::Null).unwrap();
    assert_eq!(old.info().abi_minor, 0);
    assert!(!old.has_demonstrations());
    let task = old.task(Split::Train, 0, 0).unwrap();
    assert_eq!(old.demonstration(&task).unwrap(), None);
    // Nor does it read dataset rows (ABI 1.2): one line saying to rebuild it, and the table is never read past.
    assert!(!old.reads_rows());
    let err = old.task_from_row(Split::Train, 0, &serde_json::json!({"question": "q"})).unwrap_err();
    assert_eq!(grpo_host::error::exit_code(&err), 2);
    assert!(err.to_string().contains("was built before dataset rows existed; rebuild it"), "{err}");
    // Everything ABI 1.0 had still works.
    let (mut episode, opening) = old.reset(&task).unwrap();
    assert_eq!(opening, vec![Message::user("What is 6 * 7?")]);
    assert!(episode.step("42").unwrap().done);

    // The same plugin built against this SDK has the call.
    let new = registry.environment("answers", &serde_json::Value::Null).unwrap();
    assert!(new.has_demonstrations());
    assert_eq!(new.demonstration(&task).unwrap(), Some(vec!["42".to_string()]));
    // It has the row call too; not implementing it is the SDK's one-line default.
    assert!(new.reads_rows());
    let err = new.task_from_row(Split::Train, 0, &serde_json::json!({})).unwrap_err().to_string();
    assert!(err.contains("does not read dataset rows"), "{err}");
}
