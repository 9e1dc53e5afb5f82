//! The MP table (Intel MultiProcessor Specification 1.4), through which a guest without ACPI
//! finds its CPUs, its IOAPIC and how ISA interrupts are wired.
//!
//! Layout: the 16-byte floating pointer, then the configuration table header (§4.2), processor
//! entries (§4.3.1), one ISA bus (§4.3.2), the IOAPIC (§4.3.3), one I/O interrupt entry per
//! IOAPIC pin (§4.3.4) and the two local interrupt entries (§4.3.5).

use vm_memory::{Bytes, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_END, IOAPIC_START, IRQ_MAX, MPTABLE_START};

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const SPEC_REVISION_1_4: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Local APIC version of an integrated APIC (0x1X).
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6: CPUID signature for processor entries (informational for Linux).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present: the feature flags of processor entries.
const CPU_FEATURES: u32 = 0x201;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Destination "all local APICs".
const ALL_APICS: u8 = 0xff;

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too many vCPUs for the space below the EBDA end.
    #[error("an MP table for {vcpus} vCPUs does not fit in guest memory below 640 KiB")]
    TooManyCpus {
        /// Requested vCPUs.
        vcpus: u8,
    },
    /// Guest memory refused the write.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Builds the MP table bytes for `vcpus` CPUs, to be placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, Error> {
    let ioapic_id = vcpus;
    let pins = IRQ_MAX as usize + 1;
    let entry_count = usize::from(vcpus) + 1 + 1 + pins + 2;
    let table_len =
        HEADER_SIZE + usize::from(vcpus) * PROCESSOR_ENTRY_SIZE + (4 + pins) * SMALL_ENTRY_SIZE;
    if MPTABLE_START.0 as usize + FLOATING_POINTER_SIZE + table_len > EBDA_END as usize {
        return Err(Error::TooManyCpus { vcpus });
    }

    let mut entries = Vec::with_capacity(table_len - HEADER_SIZE);
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&IOAPIC_START.to_le_bytes());
    for pin in 0..pins as u8 {
        // ISA IRQ n is wired to IOAPIC pin n, matching KVM's default GSI routing.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
    }
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        0,
        0,
        ALL_APICS,
        0,
    ]);
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        0,
        0,
        ALL_APICS,
        1,
    ]);

    let table_addr = MPTABLE_START.0 as u32 + FLOATING_POINTER_SIZE as u32;
    let mut out = floating_pointer(table_addr);
    out.extend(header(table_len as u16, entry_count as u16, &entries));
    out.extend(entries);
    Ok(out)
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), Error> {
    let table = build(vcpus)?;
    mem.write_slice(&table, MPTABLE_START).map_err(Error::Write)
}

fn floating_pointer(table_addr: u32) -> Vec<u8> {
    let mut fp = Vec::with_capacity(FLOATING_POINTER_SIZE);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    // Length in 16-byte paragraphs, revision, checksum (filled below), then five feature
    // bytes: zero means "a configuration table follows" and virtual-wire interrupt mode.
    fp.extend_from_slice(&[1, SPEC_REVISION_1_4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp
}

fn header(table_len: u16, entry_count: u16, entries: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_SIZE);
    h.extend_from_slice(b"PCMP");
    h.extend_from_slice(&table_len.to_le_bytes());
    h.extend_from_slice(&[SPEC_REVISION_1_4, 0]);
    h.extend_from_slice(b"MOAT    ");
    h.extend_from_slice(b"MICROVM     ");
    h.extend_from_slice(&[0; 6]); // no OEM table
    h.extend_from_slice(&entry_count.to_le_bytes());
    h.extend_from_slice(&APIC_START.to_le_bytes());
    h.extend_from_slice(&[0; 4]); // no extended table
    let sum = checksum(&h).wrapping_add(checksum(entries));
    h[7] = sum;
    h
}

/// The byte that makes `bytes` (with it in place of a zero) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    #[test]
    fn both_checksums_hold() {
        let table = build(4).unwrap();
        assert_eq!(sum(&table[..FLOATING_POINTER_SIZE]), 0);
        assert_eq!(sum(&table[FLOATING_POINTER_SIZE..]), 0);
    }

    #[test]
    fn lengths_and_counts_match_the_entries() {
        let vcpus = 3;
        let table = build(vcpus).unwrap();
        let header = &table[FLOATING_POINTER_SIZE..];
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        assert_eq!(len, header.len());
        let count = u16::from_le_bytes([header[34], header[35]]);
        assert_eq!(count, u16::from(vcpus) + 2 + 24 + 2);
    }

    #[test]
    fn only_the_first_cpu_is_the_bootstrap_processor() {
        let table = build(2).unwrap();
        let first = FLOATING_POINTER_SIZE + HEADER_SIZE;
        assert_eq!(table[first + 3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(table[first + PROCESSOR_ENTRY_SIZE + 3], CPU_ENABLED);
    }

    #[test]
    fn the_largest_guest_still_fits() {
        assert!(build(crate::MAX_VCPUS).is_ok());
        assert!(matches!(build(u8::MAX), Err(Error::TooManyCpus { .. })));
    }
}
