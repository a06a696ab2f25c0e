"""Applications built from the library, each with its own entry point (``python -m recipes.<name>`` from the
repository root). They use only what a user of zephyr-lightning has: its classes and its commands."""
