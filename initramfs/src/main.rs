//! `lazarus-mkinitramfs`: not built yet (the rescue-boot issue fills it); says so and exits 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("lazarus-mkinitramfs: not built yet; the initramfs builder arrives with the rescue-boot work");
    ExitCode::from(2)
}
