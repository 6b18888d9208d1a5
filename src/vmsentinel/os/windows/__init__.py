"""NT-family guests (ReactOS, Windows): profiles from debug information, and (to come) the kernel
found in memory and its views."""
