"""Linux guests: finding the kernel and rebuilding the OS view from memory."""
