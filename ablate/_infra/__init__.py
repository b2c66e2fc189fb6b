"""Services every layer uses: atomic files, user-facing errors, the device/rank service,
provenance."""
