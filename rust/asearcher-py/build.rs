//! Lets the installed extension find libtorch inside the torch wheel next to it
//! (`site-packages/asearcher/_core*.so` -> `site-packages/torch/lib`), even when `torch` was not
//! imported first.

fn main() {
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rerun-if-changed=build.rs");
}
