//! Discovery says why there is no GPU, typed and without a panic, and CPU work runs regardless.

use strata_tensor::{Device, Error, GpuOptions, Stream, Tensor, Unavailable, ops};

#[test]
fn discovery_reports_a_device_or_a_typed_reason() {
    match strata_tensor::open_gpu(0, &GpuOptions::default()) {
        Ok(gpu) => {
            let info = gpu.info();
            println!("found {info}");
            assert!(!info.name.is_empty());
            assert!(info.total_memory >= info.free_memory && info.total_memory > 0);
            assert!(info.multiprocessors > 0 && info.compute_capability.0 >= 5);
            assert_eq!(gpu.budget().cap(), info.free_memory, "the default budget is the free memory");
        }
        Err(Error::Unavailable(why)) => {
            println!("no GPU: {why}");
            if cfg!(feature = "cuda") {
                assert!(!matches!(why, Unavailable::NotBuilt), "a cuda build must not say it was built without cuda");
                if matches!(why, Unavailable::NoDriver) {
                    assert_eq!(why.to_string(), "no NVIDIA driver (libcuda.so could not be loaded)");
                }
            } else {
                assert_eq!(why, Unavailable::NotBuilt);
                assert!(why.to_string().contains("--features cuda"));
            }
        }
        Err(other) => panic!("discovery must return Unavailable, got {other}"),
    }
}

#[test]
fn discover_falls_back_to_the_cpu_with_a_reason() {
    let (device, gpu, why) = strata_tensor::discover(&GpuOptions::default());
    match device {
        Device::Cpu => {
            assert!(gpu.is_none());
            assert!(why.is_some(), "the CPU fallback says why");
        }
        Device::Cuda(0) => assert!(gpu.is_some() && why.is_none()),
        Device::Cuda(n) => panic!("discover picked GPU {n}"),
    }
    assert!(strata_tensor::open_gpu(1000, &GpuOptions::default()).is_err(), "GPU 1000 does not exist");
}

#[test]
fn cpu_work_runs_without_a_gpu() {
    let a = Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0]).unwrap();
    let b = Tensor::from_f32(&[3], vec![0.5, 0.5, 0.5]).unwrap();
    let mut out = Tensor::zeros(strata_tensor::DType::F32, &[3], &Stream::Host, "out").unwrap();
    ops::add(&a, &b, &mut out, &Stream::Host).unwrap();
    assert_eq!(out.as_f32().unwrap(), &[1.5, 2.5, 3.5]);
}
