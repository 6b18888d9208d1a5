"""The vendor's kernel image as a reference: what the guest's core kernel text and read-only data
should hold, so that a first look need not trust what it sees (issue: trust nothing on first sight)."""
