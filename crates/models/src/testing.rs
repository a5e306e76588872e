//! One test body, every backend: [`test_device!`](crate::test_device) instantiates a generic
//! test function for burn-ndarray always and for burn-cuda when the *calling* crate's `cuda`
//! feature is on (a `macro_rules!` expansion reads the features of the crate it lands in, so each
//! crate with numeric tests forwards `cuda` to `kedit-models/cuda`).

/// Which backend a [`test_device!`](crate::test_device) body runs on, so that each check can
/// state its tolerance per backend next to the reason for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDevice {
    /// burn-ndarray, f32.
    Cpu,
    /// burn-cuda, f32 storage. Its matmuls read TF32; the model's products are 3xTF32 (f32
    /// precision, `layers::matmul`) unless `KEDIT_CUDA_MATMUL=tf32`, and the CUDA tolerances are
    /// sized for plain TF32 so that both settings pass.
    Cuda,
}

impl TestDevice {
    /// `cpu` on burn-ndarray, `cuda` on the GPU: for one tolerance per backend,
    /// `dev.pick(cpu, cuda)` with the reason beside it.
    pub fn pick<T>(self, cpu: T, cuda: T) -> T {
        match self {
            TestDevice::Cpu => cpu,
            TestDevice::Cuda => cuda,
        }
    }
}

/// `test_device!(name, body)` makes `mod name { #[test] fn ndarray(); #[test] fn cuda() }`, each
/// calling `body::<B>(&device, TestDevice::…)` where `body` is
/// `fn body<B: Backend>(device: &B::Device, dev: TestDevice)`. Extra attributes go before the
/// name: `test_device!(#[should_panic] name, body)`.
#[macro_export]
macro_rules! test_device {
    ($(#[$attr:meta])* $name:ident, $body:ident) => {
        mod $name {
            $(#[$attr])*
            #[test]
            fn ndarray() {
                super::$body::<$crate::Cpu>(&Default::default(), $crate::testing::TestDevice::Cpu)
            }
            #[cfg(feature = "cuda")]
            $(#[$attr])*
            #[test]
            fn cuda() {
                super::$body::<$crate::Gpu>(&Default::default(), $crate::testing::TestDevice::Cuda)
            }
        }
    };
}
