//! x86_64 boot: the guest physical memory map, PVH boot structures, the MP table, CPUID and
//! the registers a vCPU starts with.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod pvh;
pub mod regs;
