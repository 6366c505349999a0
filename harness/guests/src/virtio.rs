//! Virtio plumbing for the scenario programs: the DMA `Hal` over guest RAM,
//! finding devices from the command line's `virtio_mmio.device=` entries
//! and routing their interrupts. (Being written.)
