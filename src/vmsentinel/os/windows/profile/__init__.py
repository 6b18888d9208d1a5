"""NT kernel profiles: types and symbols from a PE file's DWARF and COFF symbol table, in Volatility
3's ISF shape (what real Windows users have, made from Microsoft PDBs), so one type model serves
both."""
