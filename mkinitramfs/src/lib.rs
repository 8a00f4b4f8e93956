//! shelfboot mkinitramfs: reproducible newc initramfs and boot images.
