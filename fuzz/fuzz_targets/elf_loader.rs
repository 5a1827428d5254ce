//! Feed arbitrary bytes to the ELF loader: typed errors, never a panic.
#![no_main]

use ft_sim::loader::load_elf;
use ft_sim::memory::Ram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut ram = Ram::new(64 * 1024);
    let _ = load_elf(data, &mut ram);
});
