"""What the sentinel trusts: signatures, signed policy bundles, code allowlists, and the archive
codecs they (and the kernel images and the lab) are unpacked with."""
