"""The serving core: every ranking of the toolkit (top-k, seeded sampling, FAISS) is made here."""
