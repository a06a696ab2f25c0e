"""``python -m zephyr_lightning.aif``: the AIF command (`zephyr_lightning.cli.aif`)."""

from zephyr_lightning.cli.aif import CONF_DIR, STEPS, main, run, selected_steps  # noqa: F401 (the command's names)

if __name__ == "__main__":
    main()
