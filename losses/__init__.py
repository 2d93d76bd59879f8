"""Learned loss functions as torch modules with exact SymPy export."""
