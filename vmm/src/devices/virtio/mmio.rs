//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): the register window through which
//! a driver discovers a device, negotiates features, lays out queues and starts it.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{status, VirtioDevice, VirtioInterrupt, INTERRUPT_CONFIG, VIRTIO_F_VERSION_1};
use crate::devices::bus::{lock, BusDevice};

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
const MMIO_VERSION: u32 = 2;
/// "moat" in little endian: our vendor ID.
const VENDOR_ID: u32 = 0x7461_6f6d;

/// Register offsets (§4.2.2, table "MMIO Device Register Layout").
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of the QueueNotify register, where KVM ioeventfds are attached.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// One virtio device's MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// Accesses the transport ignored: wrong width, unknown register, writes out of order.
    pub invalid_accesses: u64,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem` and which interrupts through
    /// `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
    ) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            interrupt,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            invalid_accesses: 0,
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue layout may change only while the driver sets the device up (§4.2.3.2).
    fn queue_setup_allowed(&self) -> bool {
        !self.activated && self.status & status::FEATURES_OK != 0
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let device = lock(&self.device);
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => device.avail_features() as u32,
                1 => (device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => {
                drop(device);
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            reg::QUEUE_READY => {
                drop(device);
                self.selected_queue().map_or(0, |q| u32::from(q.ready()))
            }
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => {
                drop(device);
                self.invalid_accesses += 1;
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            _ => self.invalid_accesses += 1,
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 || self.driver_features_sel > 1 {
            self.invalid_accesses += 1;
            return;
        }
        let shift = 32 * self.driver_features_sel;
        let page_mask = 0xffff_ffffu64 << shift;
        let offered = lock(&self.device).avail_features();
        self.acked_features =
            (self.acked_features & !page_mask) | ((u64::from(value) << shift) & offered);
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            self.invalid_accesses += 1;
            return;
        }
        let Some(queue) = self.selected_queue() else {
            self.invalid_accesses += 1;
            return;
        };
        match offset {
            reg::QUEUE_NUM => queue.set_size(value as u16),
            reg::QUEUE_READY => queue.set_ready(value == 1),
            reg::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    /// A notification that KVM's ioeventfd did not catch (an unexpected queue index).
    fn notify(&mut self, queue_index: u32) {
        let device = lock(&self.device);
        match device.queue_evts().get(queue_index as usize) {
            Some(evt) if self.activated => {
                if let Err(e) = evt.write(1) {
                    log::warn!("cannot forward a queue notification: {e}");
                }
            }
            _ => {
                drop(device);
                self.invalid_accesses += 1;
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (§3.1.1); anything else is ignored.
        if value & self.status != self.status {
            self.invalid_accesses += 1;
            return;
        }
        let added = value & !self.status;
        self.status = value;
        if added & status::FEATURES_OK != 0 {
            self.accept_features();
        }
        if added & status::DRIVER_OK != 0 && self.status & status::FAILED == 0 {
            self.activate();
        }
    }

    /// Accepts the driver's features, or refuses FEATURES_OK to a legacy-only driver.
    fn accept_features(&mut self) {
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            self.status &= !status::FEATURES_OK;
            return;
        }
        lock(&self.device).set_acked_features(self.acked_features);
    }

    fn activate(&mut self) {
        if self.activated || self.status & status::FEATURES_OK == 0 {
            return;
        }
        let valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        // Queue is not Clone; its state is, and the transport keeps its own copy for reads of
        // QueueReady and QueueNumMax after activation.
        let ready: Vec<Queue> = self
            .queues
            .iter()
            .filter(|q| q.ready())
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        let result = if valid {
            lock(&self.device)
                .activate(self.mem.clone(), ready, self.interrupt.clone())
                .map_err(|e| e.to_string())
        } else {
            Err("a queue lies outside guest memory or is misaligned".to_string())
        };
        match result {
            Ok(()) => self.activated = true,
            Err(why) => {
                log::warn!(
                    "virtio device {} failed to start: {why}",
                    lock(&self.device).device_type()
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.trigger(INTERRUPT_CONFIG) {
                    log::warn!("cannot raise the config interrupt: {e}");
                }
            }
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        self.queues = fresh_queues(&*device);
        drop(device);
        self.interrupt.ack(u32::MAX);
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.activated = false;
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            Ok(_) | Err(_) => self.invalid_accesses += 1,
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            Ok(_) | Err(_) => self.invalid_accesses += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    /// A device that records what the transport told it.
    struct FakeDevice {
        acked: u64,
        activated_with: Option<usize>,
        resets: u32,
        evts: [EventFd; 1],
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn queue_evts(&self) -> &[EventFd] {
            &self.evts
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            _interrupt: VirtioInterrupt,
        ) -> Result<(), super::super::ActivateError> {
            self.activated_with = Some(queues.len());
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_with = None;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<FakeDevice>>) {
        let device = Arc::new(Mutex::new(FakeDevice {
            acked: 0,
            activated_with: None,
            resets: 0,
            evts: [EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        }));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let interrupt = VirtioInterrupt::new(IrqLine::new().unwrap());
        (MmioTransport::new(device.clone(), mem, interrupt), device)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Drives the driver side of initialization (§3.1.1) up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport, features: u64) {
        write(t, reg::STATUS, status::ACKNOWLEDGE);
        write(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for page in 0..2u32 {
            write(t, reg::DRIVER_FEATURES_SEL, page);
            write(t, reg::DRIVER_FEATURES, (features >> (32 * page)) as u32);
        }
        write(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn set_up_queue(t: &mut MmioTransport) {
        write(t, reg::QUEUE_SEL, 0);
        write(t, reg::QUEUE_NUM, 16);
        write(t, reg::QUEUE_DESC_LOW, 0x1000);
        write(t, reg::QUEUE_DRIVER_LOW, 0x2000);
        write(t, reg::QUEUE_DEVICE_LOW, 0x3000);
        write(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers_describe_a_modern_device() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(read(&mut t, reg::VERSION), 2);
        assert_eq!(read(&mut t, reg::DEVICE_ID), 2);
        write(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, reg::DEVICE_FEATURES), 1);
    }

    #[test]
    fn a_full_initialization_activates_the_device() {
        let (mut t, device) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        set_up_queue(&mut t);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        write(&mut t, reg::STATUS, all);
        assert_eq!(read(&mut t, reg::STATUS), all);
        let device = device.lock().unwrap();
        assert_eq!(device.acked, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(device.activated_with, Some(1));
    }

    #[test]
    fn features_the_device_never_offered_are_not_acked() {
        let (mut t, device) = transport();
        negotiate(&mut t, u64::MAX);
        assert_eq!(device.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
    }

    #[test]
    fn a_legacy_driver_is_refused_features_ok() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1);
        assert_eq!(read(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn a_queue_outside_guest_memory_needs_a_reset() {
        let (mut t, device) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        set_up_queue(&mut t);
        write(&mut t, reg::QUEUE_DESC_HIGH, 0xffff_ffff);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        write(&mut t, reg::STATUS, all);
        assert_ne!(read(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(device.lock().unwrap().activated_with, None);
    }

    #[test]
    fn writing_zero_status_resets_the_device() {
        let (mut t, device) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, reg::STATUS, 0);
        assert_eq!(read(&mut t, reg::STATUS), 0);
        assert_eq!(device.lock().unwrap().resets, 1);
    }

    #[test]
    fn queue_setup_before_features_ok_is_ignored() {
        let (mut t, _) = transport();
        set_up_queue(&mut t);
        assert_eq!(read(&mut t, reg::QUEUE_READY), 0);
        assert!(t.invalid_accesses > 0);
    }

    #[test]
    fn odd_widths_and_offsets_are_counted_not_obeyed() {
        let (mut t, _) = transport();
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        write(&mut t, 0x0f0, 0); // no register lives there
        let mut byte = [0u8; 1];
        t.read(reg::MAGIC_VALUE, &mut byte);
        assert_eq!(read(&mut t, reg::STATUS), 0);
        assert_eq!(t.invalid_accesses, 4);
    }

    #[test]
    fn config_space_goes_to_the_device_at_its_own_offset() {
        let (mut t, _) = transport();
        let mut data = [0u8; 2];
        t.read(reg::CONFIG + 3, &mut data);
        assert_eq!(data, [3, 3]);
    }

    #[test]
    fn a_selected_queue_beyond_the_device_reads_as_absent() {
        let (mut t, _) = transport();
        write(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(read(&mut t, reg::QUEUE_NUM_MAX), 0);
        write(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(read(&mut t, reg::QUEUE_NUM_MAX), 16);
    }
}
