"""Instruction data: records, on-disk formats, the embedded scene world, the prompt template."""
