//! Build script of strata-kernels.
//!
//! Without the `cuda` feature it does nothing: no nvcc, bindgen or libclang is needed.
//! With it, it
//! 1. finds nvcc (`NVCC`, then `CUDA_PATH/bin`, then the toolchain `scripts/setup-cuda.sh`
//!    installs in `.cuda/toolkit`, then `PATH`), or fails with how to get one;
//! 2. compiles every `kernels/*.cu` with the `cc` crate for the architectures in
//!    `STRATA_CUDA_ARCHS` (default `80,86,89,90`: machine code for each, plus PTX of the
//!    newest so later GPUs can JIT it), linking the CUDA runtime statically;
//! 3. runs bindgen on `kernels/strata.h` into `OUT_DIR` (allowlist `strata_.*`, layout tests).
//!
//! Under `cargo clippy` step 2 is left out: clippy only type-checks the Rust code, which needs
//! the bindings but never links the kernels, and nvcc for all four architectures took 14 of a
//! CI run's minutes on the 2-core VM (one file at a time; cc now runs one nvcc per core).
//! `cargo build`/`test` always compile them.
//!
//! Kernels are always built optimized (`-O3 -lineinfo`, never `-G`): a debug build of the Rust
//! code must not make the kernels two orders of magnitude slower.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::path::{Path, PathBuf};

    /// Architectures compiled by default, one `compute_XX` / `sm_XX` pair each:
    /// - 80: A100 (Ampere datacenter)
    /// - 86: RTX 30xx, A10, A40 (Ampere consumer/workstation)
    /// - 89: RTX 40xx, L4, L40 (Ada)
    /// - 90: H100, H200 (Hopper)
    ///
    /// PTX of the newest is embedded too, so a newer GPU can JIT-compile it.
    const DEFAULT_ARCHS: &str = "80,86,89,90";

    pub fn build() {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let kernels = root.join("kernels");
        for var in ["NVCC", "CUDA_PATH", "STRATA_CUDA_ARCHS"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        let sources = kernel_files(&kernels);
        let nvcc = find_nvcc(&root);
        let toolkit = nvcc.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let archs = archs();
        if !under_clippy() {
            compile_kernels(&nvcc, &toolkit, &kernels, &sources, &archs);
        }
        generate_bindings(&kernels.join("strata.h"));
    }

    /// Whether this build only type-checks for clippy: cargo then runs rustc through
    /// `clippy-driver` (its `RUSTC_WORKSPACE_WRAPPER`, which cargo passes to build scripts) and
    /// links nothing, so the kernel objects would go unused.
    fn under_clippy() -> bool {
        println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
        env::var_os("RUSTC_WORKSPACE_WRAPPER")
            .and_then(|w| Path::new(&w).file_stem().map(|s| s.to_string_lossy().starts_with("clippy-driver")))
            .unwrap_or(false)
    }

    /// Every .cu/.cuh/.h under kernels/, each with its rerun-if-changed line; returns the .cu.
    fn kernel_files(dir: &Path) -> Vec<PathBuf> {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let mut sources = Vec::new();
        for path in entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("cu") => {
                    println!("cargo:rerun-if-changed={}", path.display());
                    sources.push(path);
                }
                Some("cuh" | "h") => println!("cargo:rerun-if-changed={}", path.display()),
                _ => {}
            }
        }
        sources
    }

    fn find_nvcc(root: &Path) -> PathBuf {
        let candidates = [
            env::var_os("NVCC").map(PathBuf::from),
            env::var_os("CUDA_PATH").map(|p| PathBuf::from(p).join("bin/nvcc")),
            Some(root.join(".cuda/toolkit/bin/nvcc")),
        ];
        if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
            return found;
        }
        if let Some(path) = env::var_os("PATH")
            && let Some(found) = env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file())
        {
            return found;
        }
        panic!(
            "\n\nstrata-kernels: the `cuda` feature is on but no nvcc was found (looked at $NVCC, \
             $CUDA_PATH/bin/nvcc, {}/.cuda/toolkit/bin/nvcc and PATH).\n\
             Install the pinned CUDA 13.0 toolchain with `scripts/setup-cuda.sh`, or build without \
             `--features cuda` for a CPU-only strata.\n\n",
            root.display()
        );
    }

    fn archs() -> Vec<u32> {
        let spec = env::var("STRATA_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
        let mut archs: Vec<u32> = spec
            .split([',', ' ', ';'])
            .filter(|s| !s.is_empty())
            .map(|s| {
                let s = s.trim().trim_start_matches("sm_").trim_start_matches("compute_");
                s.parse().unwrap_or_else(|_| panic!("STRATA_CUDA_ARCHS: `{s}` is not an architecture like 90"))
            })
            .collect();
        archs.sort_unstable();
        archs.dedup();
        assert!(!archs.is_empty(), "STRATA_CUDA_ARCHS is empty; use e.g. `90` or `80,86,89,90`");
        archs
    }

    fn compile_kernels(nvcc: &Path, toolkit: &Path, kernels: &Path, sources: &[PathBuf], archs: &[u32]) {
        // cc finds nvcc through NVCC (it must not be passed to .compiler(): cc would then
        // treat it as gcc and add flags nvcc rejects).
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("NVCC", nvcc) };
        let mut build = cc::Build::new();
        build.cuda(true).cudart("static").debug(false).opt_level(3).include(kernels).warnings(false);
        build.flag("-std=c++17").flag("-lineinfo").flag("-Xcompiler=-fPIC");
        for a in archs {
            build.flag(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
        let newest = archs.last().expect("archs is not empty");
        build.flag(format!("-gencode=arch=compute_{newest},code=compute_{newest}"));
        for s in sources {
            build.file(s);
        }
        build.compile("strata_kernels_cuda");
        for lib in ["lib", "lib64", "lib/x64"] {
            let dir = toolkit.join(lib);
            if dir.is_dir() {
                println!("cargo:rustc-link-search=native={}", dir.display());
            }
        }
        // libcudart_static needs these from the system.
        for lib in ["dl", "rt", "pthread"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }

    fn generate_bindings(header: &Path) {
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("strata_bindings.rs");
        let bindings = bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_function("strata_.*")
            .allowlist_type("strata_.*")
            .allowlist_var("STRATA_.*")
            .prepend_enum_name(false)
            .layout_tests(true)
            .derive_default(true)
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "bindgen failed on {}: {e}\nbindgen needs libclang: `scripts/setup-cuda.sh` installs it \
                     (apt-get install libclang-dev)",
                    header.display()
                )
            });
        bindings.write_to_file(&out).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
}
