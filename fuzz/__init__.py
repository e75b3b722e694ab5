"""Coverage-guided fuzz harnesses (atheris) for the decoders and capture readers; see SECURITY.md "Fuzzing"."""
