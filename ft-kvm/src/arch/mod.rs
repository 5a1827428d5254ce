//! Architecture support: how a guest is laid out in memory and put into its first mode.

pub mod x86_64;
