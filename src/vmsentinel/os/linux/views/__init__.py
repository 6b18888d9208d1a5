"""The OS views of a Linux guest, each read from memory more than one way."""
