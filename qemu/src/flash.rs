//! Flash for cards, as the module parameters and host files the lab needs.
//!
//! * [`Nandsim`]: RAM-backed NAND inside one boot, with fault injection. Only module
//!   parameters; the geometry is the lab's measured one (2 KiB pages, 128 KiB erase
//!   blocks, `id_bytes=0x20,0xf1,0x80,0x15`, shared/notes/qemu-lab.md §3). UBI images for
//!   it: `ubinize -m 2048 -s 512`.
//! * [`Block2mtd`]: MTD over the card's virtio disk, persisting across power cycles (the
//!   disk image is [`crate::card::create_erased_image`]). UBI images: `ubinize -m 1`.
//!
//! What it does not do: write UBI images (mtd-utils does), or emulate power cuts inside
//! a write (use UBI's debugfs `tst_emulate_power_cut` in the guest).

/// nandsim module parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nandsim {
    /// `overridesize`: the chip has 2^n erase blocks (7 = 128 blocks = 16 MiB); None for
    /// the full 128 MiB (needs `-m 256M`: nandsim keeps its data in guest RAM).
    pub overridesize: Option<u8>,
    /// Erase blocks that are bad from the start.
    pub badblocks: Vec<u32>,
    /// `(block, erases)`: the block fails after that many erases.
    pub weakblocks: Vec<(u32, u32)>,
    /// `(page, writes)`: the page fails after that many writes (avoid page 0 of a block).
    pub weakpages: Vec<(u32, u32)>,
    /// `(page, reads)`: the page becomes unreadable after that many reads.
    pub gravepages: Vec<(u32, u32)>,
    /// Random bit flips per this many reads (0 = off); ECC corrects single flips.
    pub bitflips: u32,
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

impl Nandsim {
    /// Erase-block size in bytes.
    pub const ERASE_BLOCK: u64 = 128 << 10;
    /// Page size in bytes.
    pub const PAGE: u64 = 2048;

    /// Size of the simulated chip in bytes.
    pub fn size(&self) -> u64 {
        match self.overridesize {
            Some(n) => Self::ERASE_BLOCK << n,
            None => 128 << 20,
        }
    }

    /// The parameter string for `--module nandsim:PARAMS` (load.list).
    pub fn params(&self) -> String {
        let mut p = vec!["id_bytes=0x20,0xf1,0x80,0x15".to_string()];
        if let Some(n) = self.overridesize {
            p.push(format!("overridesize={n}"));
        }
        if !self.badblocks.is_empty() {
            p.push(format!("badblocks={}", join(self.badblocks.iter())));
        }
        for (name, list) in [
            ("weakblocks", &self.weakblocks),
            ("weakpages", &self.weakpages),
            ("gravepages", &self.gravepages),
        ] {
            if !list.is_empty() {
                p.push(format!(
                    "{name}={}",
                    join(list.iter().map(|(a, b)| format!("{a}:{b}")))
                ));
            }
        }
        if self.bitflips > 0 {
            p.push(format!("bitflips={}", self.bitflips));
        }
        p.join(" ")
    }

    /// The parameters on the kernel command line, for a kernel with nandsim built in
    /// (`nandsim.id_bytes=...`).
    pub fn cmdline(&self) -> String {
        self.params()
            .split(' ')
            .map(|p| format!("nandsim.{p}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Guest RAM the card needs, MiB (NAND size + ~130 MiB, at least 256).
    pub fn memory_mib(&self) -> u32 {
        let need = self.size() / (1 << 20) + 130;
        u32::try_from(need.max(256)).unwrap_or(u32::MAX)
    }
}

/// block2mtd over the card's first virtio disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block2mtd {
    /// Guest block device.
    pub device: String,
    /// Erase-block size in KiB.
    pub erase_kib: u32,
}

impl Default for Block2mtd {
    fn default() -> Self {
        Self {
            device: "/dev/vda".into(),
            erase_kib: 128,
        }
    }
}

impl Block2mtd {
    /// MTD name of the card's flash on a kernel with block2mtd built in.
    pub const LABEL: &'static str = "flash";

    /// The parameter string for `--module block2mtd:PARAMS`.
    pub fn params(&self) -> String {
        format!("block2mtd={},{}KiB", self.device, self.erase_kib)
    }

    /// The kernel command line for a kernel with block2mtd built in: the device labelled
    /// [`Self::LABEL`] (built-in block2mtd registers late, after any built-in NAND, so
    /// its number is not fixed) and init told to use the MTD device of that name.
    pub fn cmdline(&self) -> String {
        format!(
            "block2mtd.block2mtd={},{}KiB,{} shelfboot.mtd={}",
            self.device,
            self.erase_kib,
            Self::LABEL,
            Self::LABEL
        )
    }

    /// Modules to want, with parameters, in any order (mkinitramfs orders block2mtd
    /// after virtio_blk and pulls in virtio_pci).
    pub fn modules(&self) -> Vec<(String, String)> {
        vec![
            ("virtio_blk".into(), String::new()),
            ("block2mtd".into(), self.params()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nandsim_params() {
        assert_eq!(Nandsim::default().params(), "id_bytes=0x20,0xf1,0x80,0x15");
        assert_eq!(Nandsim::default().size(), 128 << 20);
        assert_eq!(Nandsim::default().memory_mib(), 258);
        let n = Nandsim {
            overridesize: Some(7),
            badblocks: vec![5, 10, 600],
            weakblocks: vec![(20, 1), (21, 1)],
            gravepages: vec![(1300, 1)],
            bitflips: 1,
            ..Nandsim::default()
        };
        assert_eq!(
            n.params(),
            "id_bytes=0x20,0xf1,0x80,0x15 overridesize=7 badblocks=5,10,600 weakblocks=20:1,21:1 gravepages=1300:1 bitflips=1"
        );
        assert_eq!(n.size(), 16 << 20);
        assert_eq!(
            Nandsim::default().cmdline(),
            "nandsim.id_bytes=0x20,0xf1,0x80,0x15"
        );
        assert_eq!(n.memory_mib(), 256);
    }

    #[test]
    fn block2mtd_params() {
        let b = Block2mtd::default();
        assert_eq!(b.params(), "block2mtd=/dev/vda,128KiB");
        assert_eq!(
            b.cmdline(),
            "block2mtd.block2mtd=/dev/vda,128KiB,flash shelfboot.mtd=flash"
        );
        assert_eq!(
            b.modules()[1],
            ("block2mtd".into(), "block2mtd=/dev/vda,128KiB".into())
        );
    }
}
