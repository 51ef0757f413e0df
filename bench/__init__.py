"""zapgate's benchmarks: ``just bench`` (or ``./dev bench``)."""
