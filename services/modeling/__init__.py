"""What the trainer and inference both need per task: rows as datasets,
tokenisation and collation, the prompt template, loading base + adapter."""
