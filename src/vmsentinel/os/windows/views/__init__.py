"""What an NT kernel's memory says: one module per view."""
