"""Paper figures, drawn only from tidy results tables (never from models)."""
