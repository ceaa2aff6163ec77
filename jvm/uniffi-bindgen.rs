//! uniffi's command line, built from this crate (`cargo run --features bindgen --bin
//! uniffi-bindgen -- generate --library <libmachnet_jvm.so> --language kotlin --out-dir <dir>`),
//! so the generated Kotlin always matches the uniffi version the library was built with.
fn main() {
    uniffi::uniffi_bindgen_main()
}
