"""``python -m zephyr_lightning.aif``: the AIF command, which lives in `zephyr_lightning.cli.aif` beside the
other commands (installed, the same command is ``zephyr-aif``)."""

from zephyr_lightning.cli.aif import CONF_DIR, main, run, selected_steps  # noqa: F401

if __name__ == "__main__":
    main()
