"""What the sentinel trusts: signatures, signed policy bundles, code allowlists, and the archive
codecs they (and the kernel images and the lab) are unpacked with.

``signing`` and ``bundle`` verify; ``allowlist`` is the allowlist model and ``allowlist_build``
builds one from ``archives`` (cpio, tar, .deb), ``elf_pages`` and ``kernel_modules``, reading
through ``streams`` and ``compression``. Nothing here imports the OS views, the pipeline or the lab.
"""
