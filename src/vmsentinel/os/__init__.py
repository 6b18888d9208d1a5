"""Guest operating systems: each subpackage turns an address space into that OS's view of itself."""
