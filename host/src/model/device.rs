//! Where a model runs and in which precision, as typed choices: `auto`, `cpu`, `cuda`, `cuda:N` for the device;
//! `auto`, `f32`, `bf16`, `f16` for the dtype. Resolving `auto` needs the machine, so it happens at load time.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::user_error;

/// A requested device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// The libtorch device; a CUDA device that is not there is a user error naming what is.
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceSpec::Auto => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!(
                        "device auto: CUDA cannot be used ({}); running on the CPU (pass --device cpu to silence \
                         this line)",
                        cuda_unavailable_reason()
                    )
                });
                Ok(Device::Cpu)
            }
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !tch::Cuda::is_available() {
                    return Err(user_error!(
                        "device {self}: CUDA cannot be used: {}; fix that or pass --device cpu",
                        cuda_unavailable_reason()
                    ));
                }
                let count = tch::Cuda::device_count().max(0) as usize;
                if n >= count {
                    return Err(user_error!("device {self}: only {count} CUDA device(s) are available"));
                }
                Ok(Device::Cuda(n))
            }
        }
    }
}

/// Why libtorch sees no CUDA device, asked of the CUDA libraries themselves: the runtime libtorch was built with
/// (already loaded when libtorch has CUDA) and the driver's `libcuda.so.1`. The usual causes are no NVIDIA driver, a
/// driver older than the runtime (the torch wheel is a CUDA 13 build), and no visible device.
pub fn cuda_unavailable_reason() -> String {
    type GetVersion = unsafe extern "C" fn(*mut i32) -> i32;
    let version = |v: i32| format!("{}.{}", v / 1000, (v % 1000) / 10);
    // SAFETY: the two libraries are the CUDA runtime and driver, whose version queries take an int pointer and
    // return an error code; nothing is called when a symbol is missing.
    unsafe {
        let runtime = CUDA_RUNTIMES.iter().find_map(|name| libloading::Library::new(name).ok()).and_then(|lib| {
            let get: libloading::Symbol<GetVersion> = lib.get(b"cudaRuntimeGetVersion\0").ok()?;
            let mut v = 0;
            (get(&mut v) == 0).then_some(v)
        });
        let Some(runtime) = runtime else {
            return "this libtorch has no CUDA runtime (a CPU-only build)".to_string();
        };
        let Ok(driver_lib) = libloading::Library::new("libcuda.so.1") else {
            return format!(
                "no NVIDIA driver: libcuda.so.1 is not installed; this libtorch needs CUDA {}",
                version(runtime)
            );
        };
        let driver = driver_lib.get::<GetVersion>(b"cuDriverGetVersion\0").ok().and_then(|get| {
            let mut v = 0;
            (get(&mut v) == 0).then_some(v)
        });
        match driver {
            Some(d) if d < runtime => format!(
                "the NVIDIA driver supports CUDA up to {}, this libtorch needs {}; update the driver",
                version(d),
                version(runtime)
            ),
            Some(_) if std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.trim().is_empty() || v == "-1") => {
                "CUDA_VISIBLE_DEVICES hides every GPU".to_string()
            }
            Some(_) => "the NVIDIA driver sees no usable GPU".to_string(),
            None => "the NVIDIA driver does not answer (cuDriverGetVersion failed)".to_string(),
        }
    }
}

/// Free memory on CUDA device `index`, in bytes, as the CUDA runtime reports it (memory libtorch's caching
/// allocator holds counts as used); `None` when the runtime cannot be asked.
pub fn cuda_free_bytes(index: usize) -> Option<u64> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: the CUDA runtime's cudaSetDevice takes a device number and cudaMemGetInfo two size_t pointers; both
    // return an error code, and nothing is called when a symbol is missing.
    unsafe {
        let lib = CUDA_RUNTIMES.iter().find_map(|name| libloading::Library::new(name).ok())?;
        let set: libloading::Symbol<SetDevice> = lib.get(b"cudaSetDevice\0").ok()?;
        let info: libloading::Symbol<MemGetInfo> = lib.get(b"cudaMemGetInfo\0").ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        (set(index as i32) == 0 && info(&mut free, &mut total) == 0).then_some(free as u64)
    }
}

/// The CUDA runtime libraries libtorch may have been built with, newest first.
const CUDA_RUNTIMES: [&str; 3] = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = crate::choice::UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| crate::choice::UnknownChoice::new(other, &["auto", "cpu", "cuda", "cuda:N"])),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

crate::choice_enum! {
    /// A requested parameter dtype.
    #[derive(Default)]
    pub enum DtypeSpec {
        /// bf16 on CUDA, f32 on the CPU.
        #[default]
        Auto = "auto",
        /// 32-bit floats.
        F32 = "f32" | "float32",
        /// bfloat16.
        Bf16 = "bf16" | "bfloat16",
        /// IEEE half precision.
        F16 = "f16" | "float16" | "fp16",
    }
}

impl DtypeSpec {
    /// The libtorch kind on `device`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            DtypeSpec::Auto if device.is_cuda() => Kind::BFloat16,
            DtypeSpec::Auto | DtypeSpec::F32 => Kind::Float,
            DtypeSpec::Bf16 => Kind::BFloat16,
            DtypeSpec::F16 => Kind::Half,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap().to_string(), "cuda:3");
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().to_string().contains("auto, cpu, cuda or cuda:N"));
        assert_eq!("bfloat16".parse::<DtypeSpec>().unwrap(), DtypeSpec::Bf16);
        assert_eq!(DtypeSpec::Auto.resolve(Device::Cpu), Kind::Float);
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            // Without CUDA, auto runs on the CPU and an explicit cuda device is refused naming why.
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
            let err = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
            assert!(err.contains("CUDA cannot be used: ") && err.contains(&cuda_unavailable_reason()), "{err}");
        }
    }
}
